// Package idt holds the interrupt descriptor table as Go types: the 16-byte gate encoding
// (SDM Vol. 3A, 6.14.1) and the exception vector names (SDM Vol. 3A, Table 6-1).
package idt

// Exception vectors.
const (
	DivideError       = 0
	Debug             = 1
	NMI               = 2
	Breakpoint        = 3
	Overflow          = 4
	BoundRange        = 5
	InvalidOpcode     = 6
	DeviceNotAvail    = 7
	DoubleFault       = 8
	InvalidTSS        = 10
	SegmentNotPresent = 11
	StackFault        = 12
	GeneralProtection = 13
	PageFault         = 14
	X87Fault          = 16
	AlignmentCheck    = 17
	MachineCheck      = 18
	SIMDFault         = 19
	Virtualization    = 20
	ControlProtection = 21
)

var names = [...]string{
	"#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow",
	"#BR bound range", "#UD invalid opcode", "#NM device not available", "#DF double fault",
	"coprocessor segment overrun", "#TS invalid TSS", "#NP segment not present",
	"#SS stack fault", "#GP general protection", "#PF page fault", "reserved",
	"#MF x87 fault", "#AC alignment check", "#MC machine check", "#XM SIMD fault",
	"#VE virtualization", "#CP control protection",
}

// Name returns the name of an exception vector, or "" for other vectors.
//
// Trap context allowed.
func Name(v uint64) string {
	if v < uint64(len(names)) {
		return names[v]
	}
	return ""
}

// HasErrorCode reports whether the CPU pushes an error code for vector v.
func HasErrorCode(v int) bool {
	switch v {
	case DoubleFault, InvalidTSS, SegmentNotPresent, StackFault, GeneralProtection,
		PageFault, AlignmentCheck, ControlProtection, 29, 30:
		return true
	}
	return false
}

// Gate types.
const (
	TypeInterrupt = 0xe // clears IF on entry
	TypeTrap      = 0xf // leaves IF as it was
)

// Gate is one 64-bit IDT entry.
type Gate struct{ Lo, Hi uint64 }

// Set encodes a present gate to handler through code selector sel, on IST slot ist (0: no
// stack switch), of type typ, callable from privilege dpl.
func (g *Gate) Set(handler uint64, sel uint16, ist uint8, typ uint8, dpl uint8) {
	g.Lo = handler&0xffff |
		uint64(sel)<<16 |
		uint64(ist&7)<<32 |
		uint64(typ&0xf)<<40 |
		uint64(dpl&3)<<45 |
		1<<47 |
		(handler>>16&0xffff)<<48
	g.Hi = handler >> 32
}

// Handler, IST, Type and Present decode the gate.
func (g *Gate) Handler() uint64 { return g.Lo&0xffff | (g.Lo>>48)<<16 | g.Hi<<32 }
func (g *Gate) IST() uint8      { return uint8(g.Lo>>32) & 7 }
func (g *Gate) Type() uint8     { return uint8(g.Lo>>40) & 0xf }
func (g *Gate) Present() bool   { return g.Lo>>47&1 == 1 }

// Table is a full 256-vector IDT.
type Table [256]Gate

// Limit is the IDTR limit for a Table.
const Limit = 256*16 - 1
