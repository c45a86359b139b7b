package kernel

import (
	"tracebed/amd64"
	"tracebed/kernel/ktest"
)

// W^X: no kernel page is both writable and executable. The boot tables map the low 4 GiB
// read-write-execute with 2 MiB pages; protectKernel narrows that to what each part needs, with
// 4 KiB pages where a 2 MiB page straddles a boundary:
//
//	[0, 1 MiB)               real-mode area, firmware: RW, NX (the AP trampoline page RWX until
//	                         the APs are up, then RW, NX)
//	[image, text)            ELF headers and notes: R, NX
//	[text, rodata)           the Go text segment: R, X
//	[rodata, data)           .rodata, .gopclntab, .typelink, .itablink: R, NX
//	[data, identityTop)      .noptrdata to .noptrbss, then free frames, page tables, MMIO: RW, NX
//
// The runtime's own memory above identityTop is mapped NX already (vm.go). Kernel text is
// written only through PokeTexts' alias; CR0.WP (set at boot) makes a supervisor write to a
// read-only page fault.

// protect gives every mapped page in [start, end) (4 KiB aligned) the write and execute
// permissions asked for, splitting a 2 MiB page that the range covers only in part.
//
// Kernel context, vmLock held (or boot, before any other CPU runs). The caller flushes the TLB.
func (pt *pageTable) protect(start, end uint64, write, exec bool) int {
	for va := start; va < end; {
		e, size := pt.leaf(va)
		if e == nil {
			va = (va &^ (size - 1)) + size
			continue
		}
		if size > pageSize && (va&(size-1) != 0 || va+size > end) {
			if size > 2<<20 {
				return ptHugeInTheWay
			}
			if r := pt.splitHuge(va); r != ptOK {
				return r
			}
			continue
		}
		if write {
			*e |= pteWrite
		} else {
			*e &^= pteWrite
		}
		if exec {
			*e &^= pteNX
		} else {
			*e |= pteNX
		}
		va += size
	}
	return ptOK
}

// leaf returns the entry that maps va (a 4 KiB PTE, or a 2 MiB or 1 GiB page's entry) and the
// size it maps; nil and the size of the absent range when nothing maps va.
//
// Kernel context, vmLock held (or boot).
func (pt *pageTable) leaf(va uint64) (*uint64, uint64) {
	t := table(pt.root)
	for level := uint(3); ; level-- {
		e := &t[ptIndex(va, level)]
		size := uint64(1) << (12 + 9*level)
		if *e&ptePresent == 0 {
			return nil, size
		}
		if level == 0 || *e&pteHuge != 0 {
			return e, size
		}
		t = table(*e)
	}
}

// protectKernel applies the layout above. Boot, before any AP runs.
func protectKernel() {
	img := uint64(kernelStart()) &^ (1<<20 - 1)
	text, rodata := uint64(kernelStart()), uint64(kernelRodata())
	data := uint64(kernelNoptrdata()) &^ (pageSize - 1)
	for _, r := range []struct {
		start, end  uint64
		write, exec bool
	}{
		{pageSize, img, true, false},
		{trampolineBase, trampolineBase + pageSize, true, true},
		{img, text, false, false},
		{text, rodata, false, true},
		{rodata, data, false, false},
		{data, identityTop, true, false},
	} {
		if res := kpt.protect(r.start, r.end, r.write, r.exec); res != ptOK {
			var k kbuf
			k.s("tracebed: fatal: cannot protect ").hex(r.start).s("-").hex(r.end).s(" (").dec(int64(res)).s(")").out()
			debugExit(ktest.ExitFatal)
		}
	}
	amd64.WriteCR3(amd64.ReadCR3()) // flush every translation
}

// protectTrampoline makes the AP trampoline page non-executable once every AP has left it.
// Other CPUs may keep its old translation cached; none executes there again. Boot.
func protectTrampoline() {
	kpt.protect(trampolineBase, trampolineBase+pageSize, true, false)
	invlpg(trampolineBase)
}

// Protection reports how va is mapped: writable, executable, and whether it is mapped at all.
//
// Trap context allowed. (A read-only walk.)
func Protection(va uintptr) (write, exec, ok bool) {
	_, fl, ok := kpt.lookup(uint64(va))
	return fl&pteWrite != 0, fl&pteNX == 0, ok
}
