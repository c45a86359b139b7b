package kernel

import (
	"unsafe"

	"tracebed/amd64"
)

// Page-table entry bits (SDM Vol. 3A, 4.5, Tables 4-14..4-20).
const (
	ptePresent = 1 << 0
	pteWrite   = 1 << 1
	ptePWT     = 1 << 3
	ptePCD     = 1 << 4
	pteHuge    = 1 << 7 // PS: a 1 GiB (PDPTE) or 2 MiB (PDE) page
	pteNX      = 1 << 63
	pteAddr    = 0x000ffffffffff000
)

// Page-table builder results.
const (
	ptOK = iota
	ptNonCanonical
	ptNoMemory
	ptHugeInTheWay // a 1 GiB/2 MiB page covers the address
	ptMapped       // already mapped
	ptUnaligned
)

// pageTable edits 4-level page tables rooted at physical address root. Physical memory is
// reached through the identity map (tables are only ever allocated where it reaches), which
// is also what lets the host tests run this code on ordinary Go memory.
type pageTable struct {
	root  uint64
	alloc *frames
}

// Trap context allowed.
func table(pa uint64) *[512]uint64 { return (*[512]uint64)(unsafe.Pointer(uintptr(pa & pteAddr))) }

// Trap context allowed.
func ptIndex(va uint64, level uint) uint64 { return (va >> (12 + 9*level)) & 511 }

// entry returns the level-0 (4 KiB) entry for va, creating tables when create is set.
//
// Kernel context, vmLock held. (Or boot, before any other CPU runs.)
func (pt *pageTable) entry(va uint64, create bool) (*uint64, int) {
	if !amd64.Canonical(va) {
		return nil, ptNonCanonical
	}
	t := table(pt.root)
	for level := uint(3); level > 0; level-- {
		e := &t[ptIndex(va, level)]
		if *e&ptePresent == 0 {
			if !create {
				return nil, ptOK
			}
			pa, ok := pt.alloc.alloc()
			if !ok {
				return nil, ptNoMemory
			}
			clear(table(pa)[:])
			*e = pa | ptePresent | pteWrite
		} else if *e&pteHuge != 0 {
			return nil, ptHugeInTheWay
		}
		t = table(*e)
	}
	return &t[ptIndex(va, 0)], ptOK
}

// mapPage maps the 4 KiB page at va to pa with flags (ptePresent is implied).
//
// Kernel context, vmLock held (or boot).
func (pt *pageTable) mapPage(va, pa, flags uint64) int {
	if va%pageSize != 0 || pa%pageSize != 0 {
		return ptUnaligned
	}
	e, r := pt.entry(va, true)
	if r != ptOK {
		return r
	}
	if *e&ptePresent != 0 {
		return ptMapped
	}
	*e = pa | flags | ptePresent
	return ptOK
}

// unmapPage removes the 4 KiB mapping at va and returns the frame it mapped. Tables emptied by
// the removal are kept: address space is reused and tables are small.
//
// Kernel context, vmLock held (or boot).
func (pt *pageTable) unmapPage(va uint64) (uint64, bool) {
	e, r := pt.entry(va, false)
	if r != ptOK || e == nil || *e&ptePresent == 0 {
		return 0, false
	}
	pa := *e & pteAddr
	*e = 0
	return pa, true
}

// lookup translates va, following 1 GiB and 2 MiB pages too.
//
// Trap context allowed. (A read-only walk.)
func (pt *pageTable) lookup(va uint64) (pa, flags uint64, ok bool) {
	if !amd64.Canonical(va) {
		return 0, 0, false
	}
	t := table(pt.root)
	for level := uint(3); ; level-- {
		e := t[ptIndex(va, level)]
		if e&ptePresent == 0 {
			return 0, 0, false
		}
		if level == 0 || e&pteHuge != 0 {
			size := uint64(1) << (12 + 9*level)
			return e&pteAddr&^(size-1) | va&(size-1), e &^ pteAddr, true
		}
		t = table(e)
	}
}

// splitHuge replaces the 2 MiB page mapping va (if any) with a table of 512 4 KiB pages that
// map the same frames with the same flags, so that one of them can be changed alone. The
// caller flushes the TLB for the range.
//
// Kernel context, vmLock held (or boot, before any other CPU runs).
func (pt *pageTable) splitHuge(va uint64) int {
	if !amd64.Canonical(va) {
		return ptNonCanonical
	}
	t := table(pt.root)
	for level := uint(3); level > 1; level-- {
		e := t[ptIndex(va, level)]
		if e&ptePresent == 0 {
			return ptOK // nothing mapped: nothing to split
		}
		if e&pteHuge != 0 {
			return ptHugeInTheWay // a 1 GiB page: not split here
		}
		t = table(e)
	}
	pde := &t[ptIndex(va, 1)]
	if *pde&ptePresent == 0 || *pde&pteHuge == 0 {
		return ptOK
	}
	pa, ok := pt.alloc.alloc()
	if !ok {
		return ptNoMemory
	}
	// A PDE's PAT bit is bit 12 and a PTE's bit 7 (SDM Vol. 3A, Tables 4-18, 4-19): the boot
	// tables set neither, so the low flags carry over unchanged but for PS.
	flags := *pde &^ (pteAddr | pteHuge)
	base := *pde & pteAddr &^ (1<<21 - 1)
	pt4 := table(pa)
	for i := range pt4 {
		pt4[i] = base + uint64(i)*pageSize | flags
	}
	*pde = pa | ptePresent | pteWrite
	return ptOK
}
