package kernel

// The address space. One set of page tables serves the kernel and every thread (the Go
// runtime is one process). The low 4 GiB is identity-mapped with 2 MiB pages at boot (kernel
// image, page tables, MMIO); everything the runtime maps lives above it, in 4 KiB pages that
// are committed eagerly: mmap of a readable or writable range allocates and zeroes every page
// at once, so the kernel never takes a page fault on runtime memory and a fault is always a
// bug. MADV_DONTNEED zeroes in place (the runtime relies on zeroed pages after it).

const (
	identityTop = 4 << 30          // [0, identityTop) is the kernel's identity map
	userTop     = 0x8000_0000_0000 // end of the lower canonical half
	mmapBase    = 0x7f00_0000_0000 // non-hinted mappings are placed downward from here
)

// mmap prot and flags (Linux uapi asm-generic/mman*.h).
const (
	protRead          = 0x1
	protWrite         = 0x2
	protExec          = 0x4
	mapShared         = 0x01
	mapPrivate        = 0x02
	mapFixed          = 0x10
	mapAnonymous      = 0x20
	mapFixedNoreplace = 0x100000
	madvDontneed      = 4
)

var (
	kpt      pageTable
	pmem     frames
	pmemBits [identityTop / pageSize / 64]uint64
	vmRegion regionSet
	mmapNext uint64 = mmapBase
	// statistics
	vmCommitted uint64 // pages mapped for the runtime
)

// Trap context allowed.
func pageFlags(prot uint64) uint64 {
	fl := uint64(pteWrite)
	if prot&protExec == 0 {
		fl |= pteNX
	}
	return fl
}

// Trap context allowed.
func zeroPage(pa uint64) { clear(table(pa)[:]) }

// walkMapped calls fn for every mapped 4 KiB page in [start, end), skipping absent tables in
// whole. fn gets the entry and the address.
//
// Kernel context, klock held. (Or boot, before any other CPU runs.)
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

// commit makes [start, end) mapped, writable and zero-filled.
//
// Kernel context, klock held.
func commit(start, end, prot uint64) int64 {
	fl := pageFlags(prot)
	for va := start; va < end; va += pageSize {
		e, r := kpt.entry(va, true)
		if r != ptOK {
			return -errENOMEM
		}
		if *e&ptePresent != 0 {
			zeroPage(*e & pteAddr)
			*e = *e&pteAddr | fl | ptePresent
			continue
		}
		pa, ok := pmem.alloc()
		if !ok {
			return -errENOMEM
		}
		zeroPage(pa)
		*e = pa | fl | ptePresent
		vmCommitted++
	}
	return 0
}

// decommit unmaps [start, end) and frees its frames. Other CPUs may still hold the old
// translations in their TLBs, so they flush before klock is released and anyone can take the
// frames again.
//
// Kernel context, klock held.
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

// Kernel context, klock held.
func sysMmap(addr, length, prot, flags uint64) int64 {
	if length == 0 || length > userTop {
		return -errEINVAL
	}
	if flags&mapAnonymous == 0 { // no files here
		return -errENODEV
	}
	length = (length + pageSize - 1) &^ (pageSize - 1)
	switch {
	case flags&mapFixed != 0:
		if addr%pageSize != 0 || !inUserSpace(addr, length) {
			return -errEINVAL
		}
	case flags&mapFixedNoreplace != 0:
		if addr%pageSize != 0 || !inUserSpace(addr, length) {
			return -errEINVAL
		}
		if vmRegion.overlaps(addr, addr+length) {
			return -errEEXIST
		}
	default:
		if addr%pageSize != 0 || !inUserSpace(addr, length) || vmRegion.overlaps(addr, addr+length) {
			if length > mmapNext-identityTop { // mmapNext-length would wrap below the identity map
				return -errENOMEM
			}
			mmapNext -= length
			addr = mmapNext
		}
	}
	if prot&(protRead|protWrite|protExec) != 0 {
		if r := commit(addr, addr+length, prot); r != 0 {
			return r
		}
	} else {
		decommit(addr, addr+length)
	}
	if !vmRegion.add(addr, addr+length) {
		return -errENOMEM
	}
	return int64(addr)
}

// inUserSpace reports whether [addr, addr+length), rounded up to pages, lies in the runtime's
// part of the address space, without letting addr+length wrap.
//
// Trap context allowed.
func inUserSpace(addr, length uint64) bool {
	return addr >= identityTop && addr <= userTop && length <= userTop-addr &&
		(addr+length+pageSize-1)&^(pageSize-1) <= userTop
}

// Kernel context, klock held.
func sysMunmap(addr, length uint64) int64 {
	if addr%pageSize != 0 || length == 0 {
		return -errEINVAL
	}
	if !inUserSpace(addr, length) {
		return -errEINVAL
	}
	end := (addr + length + pageSize - 1) &^ (pageSize - 1)
	decommit(addr, end)
	vmRegion.remove(addr, end)
	return 0
}

// Kernel context, klock held.
func sysMadvise(addr, length, advice uint64) int64 {
	if addr%pageSize != 0 {
		return -errEINVAL
	}
	end := (addr + length + pageSize - 1) &^ (pageSize - 1)
	if advice == madvDontneed && inUserSpace(addr, length) {
		kpt.walkMapped(addr, end, func(e *uint64, va uint64) { zeroPage(*e & pteAddr) })
	}
	return 0
}

// Kernel context, klock held.
func sysMprotect(addr, length, prot uint64) int64 {
	if addr%pageSize != 0 {
		return -errEINVAL
	}
	if !inUserSpace(addr, length) {
		return -errEINVAL
	}
	end := (addr + length + pageSize - 1) &^ (pageSize - 1)
	if prot&(protRead|protWrite|protExec) != 0 {
		// Keep contents; map what is missing.
		fl := pageFlags(prot)
		for va := addr; va < end; va += pageSize {
			e, r := kpt.entry(va, true)
			if r != ptOK {
				return -errENOMEM
			}
			if *e&ptePresent == 0 {
				pa, ok := pmem.alloc()
				if !ok {
					return -errENOMEM
				}
				zeroPage(pa)
				*e = pa | fl | ptePresent
				vmCommitted++
			}
		}
	}
	return 0
}
