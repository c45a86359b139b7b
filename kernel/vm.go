package kernel

import "tracebed/kernel/linux"

// The address space. One set of page tables serves the kernel and every thread (the Go
// runtime is one process). The low 4 GiB is identity-mapped with 2 MiB pages at boot (kernel
// image, page tables, MMIO); everything the runtime maps lives above it (package linux decides
// where), in 4 KiB pages that are committed eagerly: mmap of a readable or writable range
// allocates and zeroes every page at once, so the kernel never takes a page fault on runtime
// memory and a fault is always a bug. The pages are this file's; the ranges, linux's.

const (
	identityTop = linux.UserBase // [0, identityTop) is the kernel's identity map
	userTop     = linux.UserTop  // end of the lower canonical half
)

var (
	kpt      pageTable
	pmem     frames
	pmemBits [identityTop / pageSize / 64]uint64
	// statistics
	vmCommitted uint64 // pages mapped for the runtime
)

// Trap context allowed.
func pageFlags(prot uint64) uint64 {
	fl := uint64(pteWrite)
	if prot&linux.ProtExec == 0 {
		fl |= pteNX
	}
	return fl
}

// Trap context allowed.
func zeroPage(pa uint64) { clear(table(pa)[:]) }

// walkMapped calls fn for every mapped 4 KiB page in [start, end), skipping absent tables in
// whole. fn gets the entry and the address.
//
// Kernel context, vmLock held. (Or boot, before any other CPU runs.)
func (pt *pageTable) walkMapped(start, end uint64, fn func(e *uint64, va uint64)) {
	va := start
	for va < end {
		t := table(pt.root)
		skip := uint64(0)
		for level := uint(3); level > 0; level-- {
			e := t[ptIndex(va, level)]
			if e&ptePresent == 0 || e&pteHuge != 0 {
				skip = uint64(1) << (12 + 9*level)
				break
			}
			t = table(e)
		}
		if skip != 0 {
			va = (va &^ (skip - 1)) + skip
			continue
		}
		e := &t[ptIndex(va, 0)]
		if *e&ptePresent != 0 {
			fn(e, va)
		}
		va += pageSize
	}
}

// commit makes [start, end) mapped, writable and zero-filled; when keep is set, pages already
// mapped keep their contents and flags. false when memory ran out.
//
// Kernel context, vmLock held.
func commit(start, end, prot uint64, keep bool) bool {
	fl := pageFlags(prot)
	for va := start; va < end; va += pageSize {
		e, r := kpt.entry(va, true)
		if r != ptOK {
			return false
		}
		if *e&ptePresent != 0 {
			if !keep {
				zeroPage(*e & pteAddr)
				*e = *e&pteAddr | fl | ptePresent
			}
			continue
		}
		pa, ok := pmem.alloc()
		if !ok {
			return false
		}
		zeroPage(pa)
		*e = pa | fl | ptePresent
		vmCommitted++
	}
	return true
}

// decommit unmaps [start, end) and frees its frames. Other CPUs may still hold the old
// translations in their TLBs, so they flush before vmLock is released and anyone can take the
// frames again.
//
// Kernel context, vmLock held.
func decommit(start, end uint64) {
	n := 0
	kpt.walkMapped(start, end, func(e *uint64, va uint64) {
		pmem.put(*e & pteAddr)
		*e = 0
		vmCommitted--
		invlpg(va)
		n++
	})
	if n > 0 {
		tlbShootdown()
	}
}
