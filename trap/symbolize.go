package trap

import (
	"encoding/binary"
	"unsafe"
)

// Symbolizing PCs in the kernel itself, from the pclntab the Go linker puts in every binary
// (runtime/symtab.go: pcHeader, functab, _func; pcvalue tables of zig-zag varint pairs). The
// runtime's own FuncForPC allocates for inlined frames and needs an m, which trap context does
// not have; this reader only slices the table, so a fatal trap can name its frames on a
// console no host symbolizer reads (a Xen or KVM log).

// Table is a Go pclntab, format of Go 1.20 and later.
type Table struct {
	text                                   uintptr // runtime.text: function entries are offsets from it
	nfunc                                  int
	funcnames, cutab, filetab, pctab, pcln []byte
}

const (
	pclnMagic  = 0xfffffff1 // abi.Go120PCLnTabMagic
	headerSize = 8 + 8*8
	// _func field offsets (runtime2.go).
	funcEntryOff = 0
	funcNameOff  = 4
	funcPCSP     = 16
	funcPCFile   = 20
	funcPCLn     = 24
	funcCUOffset = 32
	funcSize     = 44
)

// NewTable reads the header of the pclntab in data, whose functions start at text. false
// when it is not a Go 1.20+ table for 64-bit pointers or its offsets do not fit.
//
// Trap context allowed.
func NewTable(data []byte, text uintptr) (Table, bool) {
	if len(data) < headerSize || binary.LittleEndian.Uint32(data) != pclnMagic || data[7] != 8 {
		return Table{}, false
	}
	le := binary.LittleEndian
	t := Table{text: text, nfunc: int(le.Uint64(data[8:]))}
	var offs [5]uint64
	for i := range offs {
		offs[i] = le.Uint64(data[32+8*i:])
		if offs[i] > uint64(len(data)) {
			return Table{}, false
		}
	}
	t.funcnames = data[offs[0]:]
	t.cutab = data[offs[1]:]
	t.filetab = data[offs[2]:]
	t.pctab = data[offs[3]:]
	t.pcln = data[offs[4]:]
	if t.nfunc <= 0 || uint64(len(t.pcln)) < uint64(t.nfunc+1)*8 {
		return Table{}, false
	}
	return t, true
}

// Lookup names the function holding pc and the file and line of pc. The strings are views of
// the table (no allocation). Trap context allowed.
func (t *Table) Lookup(pc uintptr) (fn, file string, line int, ok bool) {
	f, fnEntry, found := t.funcAt(pc)
	if !found {
		return "", "", 0, false
	}
	off := uint64(pc - t.text)
	le := binary.LittleEndian
	fn = cstring(t.funcnames, uint64(le.Uint32(f[funcNameOff:])))
	fileno, ok1 := t.pcvalue(uint64(le.Uint32(f[funcPCFile:])), fnEntry, off)
	ln, ok2 := t.pcvalue(uint64(le.Uint32(f[funcPCLn:])), fnEntry, off)
	if !ok1 || !ok2 {
		return fn, "?", 0, true
	}
	cu := (uint64(le.Uint32(f[funcCUOffset:])) + uint64(fileno)) * 4
	file = "?"
	if cu+4 <= uint64(len(t.cutab)) {
		if fo := le.Uint32(t.cutab[cu:]); fo != ^uint32(0) {
			file = cstring(t.filetab, uint64(fo))
		}
	}
	return fn, file, int(ln), true
}

// SPDelta is how many bytes the function holding pc has pushed or allocated below its return
// address when pc is about to run: 0 at its entry and throughout a leaf without a frame (so
// the return address is at RSP), the frame size in its body. false when pc is in no function
// the table describes.
//
// Trap context allowed.
func (t *Table) SPDelta(pc uintptr) (int32, bool) {
	f, fnEntry, ok := t.funcAt(pc)
	if !ok {
		return 0, false
	}
	return t.pcvalue(uint64(binary.LittleEndian.Uint32(f[funcPCSP:])), fnEntry, uint64(pc-t.text))
}

// funcAt is the _func record of the function holding pc, and its entry as a text offset.
//
// Trap context allowed.
func (t *Table) funcAt(pc uintptr) (f []byte, fnEntry uint64, ok bool) {
	if pc < t.text || t.nfunc == 0 {
		return nil, 0, false
	}
	off := uint64(pc - t.text)
	le := binary.LittleEndian
	entry := func(i int) uint64 { return uint64(le.Uint32(t.pcln[8*i:])) }
	if off >= entry(t.nfunc) {
		return nil, 0, false
	}
	lo, hi := 0, t.nfunc // find the last function whose entry is <= off
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if entry(mid) <= off {
			lo = mid
		} else {
			hi = mid
		}
	}
	if entry(lo) > off {
		return nil, 0, false
	}
	funcoff := uint64(le.Uint32(t.pcln[8*lo+4:]))
	if funcoff+funcSize > uint64(len(t.pcln)) {
		return nil, 0, false
	}
	f = t.pcln[funcoff:]
	return f, uint64(le.Uint32(f[funcEntryOff:])), true
}

// pcvalue runs the value table at off for the function entered at entry (text offsets) to
// the value in effect at target.
//
// Trap context allowed.
func (t *Table) pcvalue(off, entry, target uint64) (int32, bool) {
	if off == 0 || off >= uint64(len(t.pctab)) {
		return 0, false
	}
	p := t.pctab[off:]
	pc, val := entry, int32(-1)
	for first := true; ; first = false {
		uv, n := uvarint(p)
		if n == 0 || uv == 0 && !first {
			return 0, false
		}
		val += int32(-(uv & 1) ^ (uv >> 1))
		p = p[n:]
		pcd, n := uvarint(p)
		if n == 0 {
			return 0, false
		}
		p = p[n:]
		pc += uint64(pcd) // PCQuantum is 1 on amd64
		if target < pc {
			return val, true
		}
	}
}

// Trap context allowed.
func uvarint(p []byte) (uint32, int) {
	var v uint32
	for i := 0; i < len(p) && i < 5; i++ {
		v |= uint32(p[i]&0x7f) << (7 * i)
		if p[i]&0x80 == 0 {
			return v, i + 1
		}
	}
	return 0, 0
}

// cstring is the NUL-terminated string at b[off:], as a view of b.
//
// Trap context allowed.
func cstring(b []byte, off uint64) string {
	if off >= uint64(len(b)) {
		return "?"
	}
	s := b[off:]
	n := 0
	for n < len(s) && s[n] != 0 {
		n++
	}
	if n == 0 {
		return ""
	}
	return unsafe.String(&s[0], n)
}

// FuncFlagAsm marks a function written in assembly (abi.FuncFlagAsm).
const FuncFlagAsm = 1 << 2

// funcFlagOff is the offset of the _func's flag byte (runtime2.go: funcID, then flag).
const funcFlagOff = 41

// NumFuncs is how many functions the table describes.
func (t *Table) NumFuncs() int { return t.nfunc }

// Func describes the table's function i (0 <= i < NumFuncs, in address order): its name, its
// [entry, end) in the text (end is the next function's entry, or the text's end), and its
// flag byte (FuncFlagAsm and the others of abi.FuncFlag). ok is false for an entry the table
// does not describe consistently.
//
// Trap context allowed.
func (t *Table) Func(i int) (name string, entry, end uintptr, flag uint8, ok bool) {
	if i < 0 || i >= t.nfunc {
		return "", 0, 0, 0, false
	}
	le := binary.LittleEndian
	e, next := le.Uint32(t.pcln[8*i:]), le.Uint32(t.pcln[8*(i+1):])
	funcoff := uint64(le.Uint32(t.pcln[8*i+4:]))
	if funcoff+funcSize > uint64(len(t.pcln)) || next < e {
		return "", 0, 0, 0, false
	}
	f := t.pcln[funcoff:]
	name = cstring(t.funcnames, uint64(le.Uint32(f[funcNameOff:])))
	return name, t.text + uintptr(e), t.text + uintptr(next), f[funcFlagOff], true
}
