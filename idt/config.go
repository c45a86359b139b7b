package idt

import "strings"

// Boot-time choice of entry stubs, gate types and IST slots, from the kernel command line:
//
//	idt=native|pvshim|xenpv   which entry stubs the PV vectors use (see Mode)
//	idt.gate=V:trap,V:intr    gate type per vector (decimal V), e.g. idt.gate=3:trap
//	idt.ist=V:N,...           IST slot per vector, 0 for no stack switch, e.g. idt.ist=3:0
//
// The parser runs before the Go runtime (kernel/cmdline.go): it never allocates, and reports
// errors as a ParseError code the kernel prints in one line.

// Mode selects the entry stubs of the PV vectors.
type Mode uint8

const (
	// Native: every gate points at a native stub.
	Native Mode = iota
	// PVShim: the PV vectors' gates point at shims that build the Xen PV exception frame
	// (RCX and R11 pushed above the hardware frame, both then clobbered) and jump to the Xen PV
	// stubs, so the PV path runs for real on a native CPU.
	PVShim
	// XenPV: the PV vectors' gates point straight at the Xen PV stubs, which expect the frame
	// Xen builds for a PV guest. Only meaningful under Xen; the kernel refuses it elsewhere.
	XenPV
)

func (m Mode) String() string {
	switch m {
	case PVShim:
		return "pvshim"
	case XenPV:
		return "xenpv"
	}
	return "native"
}

// PVVectors are the vectors with Xen PV stub variants.
var PVVectors = [...]int{Debug, NMI, Breakpoint, GeneralProtection, PageFault}

// IsPV reports whether vector v has a Xen PV stub.
func IsPV(v int) bool {
	for _, p := range PVVectors {
		if p == v {
			return true
		}
	}
	return false
}

// IST slots (TSS.IST index, 1-based as in the gate; 0 is "no stack switch").
const (
	ISTNone  = 0
	ISTIRQ   = 1 // external interrupts and IPIs
	ISTFault = 2 // exceptions without a slot of their own
	ISTNMI   = 3
	ISTDF    = 4
	ISTMC    = 5
	ISTDB    = 6
	ISTBP    = 7
	NumIST   = 7
)

// Config is the gate type and IST slot of every vector, and the stub mode.
type Config struct {
	Mode Mode
	Type [256]uint8
	IST  [256]uint8
}

// DefaultConfig is interrupt gates everywhere (a trap handler starts with IF clear), with
// NMI, #DF, #MC, #DB and #BP on IST stacks of their own, other exceptions on ISTFault and
// interrupts on ISTIRQ.
func DefaultConfig() Config {
	var c Config
	for v := 0; v < 256; v++ {
		c.Type[v] = TypeInterrupt
		c.IST[v] = ISTIRQ
		if v < 32 {
			c.IST[v] = ISTFault
		}
	}
	c.IST[NMI] = ISTNMI
	c.IST[DoubleFault] = ISTDF
	c.IST[MachineCheck] = ISTMC
	c.IST[Debug] = ISTDB
	c.IST[Breakpoint] = ISTBP
	return c
}

// ParseError says what is wrong with an idt parameter.
type ParseError uint8

const (
	ParseOK ParseError = iota
	ErrMode
	ErrVector
	ErrGateType
	ErrIST
	ErrSyntax
	ErrGateIRQ
	ErrGateAnywhere
	ErrISTAnywhere
	ErrISTTrapShared
)

func (e ParseError) Error() string {
	switch e {
	case ErrMode:
		return "idt= must be native, pvshim or xenpv"
	case ErrVector:
		return "idt.gate/idt.ist: the vector must be a decimal number from 0 to 255"
	case ErrGateType:
		return "idt.gate: the type must be trap or intr"
	case ErrIST:
		return "idt.ist: the IST slot must be a number from 0 to 7"
	case ErrSyntax:
		return "idt.gate/idt.ist: want a comma-separated list of VECTOR:VALUE"
	case ErrGateIRQ:
		return "idt.gate: vectors 32-255 must stay interrupt gates: their handlers hold klock, which an interrupt nesting on the same CPU would spin on for good"
	case ErrGateAnywhere:
		return "idt.gate: NMI, #DF and #MC must stay interrupt gates: an interrupt nesting before their entry leaves the IST stack would reopen NMIs with its IRET"
	case ErrISTAnywhere:
		return "idt.ist: NMI, #DF and #MC need an IST slot no other vector uses: they arrive at any instruction, also while another entry is still on its IST stack"
	case ErrISTTrapShared:
		return "idt.ist: a trap gate's IST slot must be its own: an interrupt arriving before its entry leaves the IST stack may raise a vector on the same slot, which would overwrite it"
	}
	return "ok"
}

// Check reports the first setting the kernel's locking or its IST move cannot survive, and the
// vector it concerns. The rules (the entry moves every frame off its IST stack first thing, but
// something can arrive before it has):
//   - vectors 32-255 are interrupt gates: the timer and IPI handlers hold klock, and an
//     interrupt nesting inside one would spin on the lock its own CPU holds;
//   - NMI, #DF and #MC are interrupt gates, each with an IST slot of its own: they arrive at
//     any instruction, so also inside another vector's entry still on a shared IST stack, and an
//     interrupt nesting in an NMI's entry would reopen NMIs with its IRET;
//   - a trap gate (IF stays set) with an IST slot shares it with no other vector: an interrupt
//     can arrive before its entry has left the IST stack, and whatever that interrupt's
//     handler raises (a #PF, a #BP of a probe) restarts at the top of its IST slot; if that
//     slot is the trap gate's, the entry words not yet moved are overwritten.
func (c *Config) Check() (ParseError, int) {
	for v := 32; v < 256; v++ {
		if c.Type[v] != TypeInterrupt {
			return ErrGateIRQ, v
		}
	}
	for _, v := range [...]int{NMI, DoubleFault, MachineCheck} {
		if c.Type[v] != TypeInterrupt {
			return ErrGateAnywhere, v
		}
		if c.IST[v] == ISTNone {
			return ErrISTAnywhere, v
		}
		for w := 0; w < 256; w++ {
			if w != v && c.IST[w] == c.IST[v] {
				return ErrISTAnywhere, v
			}
		}
	}
	for v := 0; v < 32; v++ {
		if c.Type[v] != TypeTrap || c.IST[v] == ISTNone {
			continue
		}
		for w := 0; w < 256; w++ {
			if w != v && c.IST[w] == c.IST[v] {
				return ErrISTTrapShared, v
			}
		}
	}
	return ParseOK, 0
}

// ParseMode parses the value of idt=.
func ParseMode(s string) (Mode, ParseError) {
	switch s {
	case "native":
		return Native, ParseOK
	case "pvshim":
		return PVShim, ParseOK
	case "xenpv":
		return XenPV, ParseOK
	}
	return Native, ErrMode
}

// ParseGates applies the value of idt.gate= to c.
func (c *Config) ParseGates(s string) ParseError {
	return eachPair(s, func(v int, val string) ParseError {
		switch val {
		case "trap":
			c.Type[v] = TypeTrap
		case "intr":
			c.Type[v] = TypeInterrupt
		default:
			return ErrGateType
		}
		return ParseOK
	})
}

// ParseISTs applies the value of idt.ist= to c.
func (c *Config) ParseISTs(s string) ParseError {
	return eachPair(s, func(v int, val string) ParseError {
		n, ok := decimal(val)
		if !ok || n > NumIST {
			return ErrIST
		}
		c.IST[v] = uint8(n)
		return ParseOK
	})
}

// eachPair calls fn for each VECTOR:VALUE of a comma-separated list, stopping at an error.
// strings.Cut only slices: safe before the runtime starts.
func eachPair(s string, fn func(v int, val string) ParseError) ParseError {
	for {
		item, rest, more := strings.Cut(s, ",")
		vs, val, ok := strings.Cut(item, ":")
		if !ok {
			return ErrSyntax
		}
		v, ok := decimal(vs)
		if !ok || v > 255 {
			return ErrVector
		}
		if e := fn(v, val); e != ParseOK {
			return e
		}
		if !more {
			return ParseOK
		}
		if rest == "" {
			return ErrSyntax
		}
		s = rest
	}
}

// decimal parses a short unsigned decimal number.
func decimal(s string) (int, bool) {
	if s == "" || len(s) > 3 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}
