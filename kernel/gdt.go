package kernel

import (
	"encoding/binary"
	"unsafe"

	"tracebed/amd64"
)

// Segment selectors; assembly uses the same values (frame_amd64.h).
const (
	selCode = 0x08
	selData = 0x10
	selTSS  = 0x18
)

const gdtEntries = 5 // null, code, data, TSS (two slots)

// Descriptor encodings (SDM Vol. 3A, 3.4.5 and 7.2.3).
const (
	descCode64 = 0x00af9a000000ffff // present, DPL 0, execute/read, L=1
	descData   = 0x00cf92000000ffff // present, DPL 0, read/write
	tssType    = 0x89               // present, 64-bit TSS (available)
	tssBytes   = 104
)

// tssDescriptor encodes the 16-byte system descriptor of a 64-bit TSS.
func tssDescriptor(base uint64, limit uint32) (lo, hi uint64) {
	lo = uint64(limit&0xffff) |
		(base&0xffffff)<<16 |
		uint64(tssType)<<40 |
		uint64((limit>>16)&0xf)<<48 |
		((base>>24)&0xff)<<56
	hi = base >> 32
	return
}

// tss is the 64-bit task-state segment (SDM Vol. 3A, Figure 8-11); only RSP0 and the IST
// pointers are used. Its fields are unaligned, hence the byte image.
type tss struct{ b [tssBytes]byte }

func (t *tss) setRSP0(v uintptr) { binary.LittleEndian.PutUint64(t.b[4:], uint64(v)) }

func (t *tss) setIST(i int, v uintptr) {
	binary.LittleEndian.PutUint64(t.b[36+8*(i-1):], uint64(v))
}

func (t *tss) ist(i int) uint64 { return binary.LittleEndian.Uint64(t.b[36+8*(i-1):]) }

// pseudoDescriptor fills the 10-byte operand of LGDT/LIDT.
func pseudoDescriptor(d *[10]byte, base uintptr, limit uint16) uintptr {
	binary.LittleEndian.PutUint16(d[0:], limit)
	binary.LittleEndian.PutUint64(d[2:], uint64(base))
	return uintptr(unsafe.Pointer(&d[0]))
}

// loadCPU makes c the running CPU's block: GDT with its TSS, segments and GS base. The FS
// base follows at the next kernel entry (commonEntry loads CPU.ktls).
func loadCPU(c *CPU) {
	binary.LittleEndian.PutUint16(c.tss.b[102:], tssBytes) // no I/O bitmap
	c.gdt[1] = descCode64
	c.gdt[2] = descData
	c.gdt[3], c.gdt[4] = tssDescriptor(uint64(uintptr(unsafe.Pointer(&c.tss))), tssBytes-1)
	amd64.LGDT(pseudoDescriptor(&c.desc, uintptr(unsafe.Pointer(&c.gdt[0])), gdtEntries*8-1))
	amd64.ReloadSegments(selCode, selData)
	amd64.LTR(selTSS)
	amd64.WRMSR(amd64.MSR_GS_BASE, uint64(c.self))
}
