package linux

// The runtime's address space, as mmap, munmap, madvise and mprotect see it. The kernel and
// the runtime share one set of page tables; [0, UserBase) is the kernel's identity map, and
// everything the runtime maps lies above it, placed downward from mmapBase unless it asks for
// an address. Which ranges are handed out is decided here (regions); the pages themselves are
// the kernel's (Host.Commit and the rest), committed eagerly, so the kernel never takes a page
// fault on runtime memory and a fault is always a bug. MADV_DONTNEED zeroes in place (the
// runtime relies on zeroed pages after it). All of it runs under the kernel's VM lock, not
// klock (IsMemoryCall).

const (
	UserBase = 4 << 30          // the runtime's mappings lie in [UserBase, UserTop)
	UserTop  = 0x8000_0000_0000 // end of the lower canonical half
	mmapBase = 0x7f00_0000_0000 // non-hinted mappings are placed downward from here
	pageSize = 4096
)

// mmap prot and flags (Linux uapi asm-generic/mman*.h).
const (
	ProtRead          = 0x1
	ProtWrite         = 0x2
	ProtExec          = 0x4
	MapPrivate        = 0x02
	MapFixed          = 0x10
	MapAnonymous      = 0x20
	mapFixedNoreplace = 0x100000
	madvDontneed      = 4
)

var (
	regions  regionSet // every range mmap handed out, whatever its protection, and [0, UserBase)
	mmapNext uint64    // the next non-hinted mapping ends here (Init)
)

// Mmap is mmap(2) of anonymous memory. The kernel calls it at boot too, for the first thread's
// stack.
//
// Kernel context, VM lock held (or boot, before the first thread runs).
func Mmap(addr, length, prot, flags uint64) int64 {
	if length == 0 || length > UserTop {
		return -errEINVAL
	}
	if flags&MapAnonymous == 0 { // no files here
		return -errENODEV
	}
	length = (length + pageSize - 1) &^ (pageSize - 1)
	switch {
	case flags&MapFixed != 0:
		if addr%pageSize != 0 || !inUserSpace(addr, length) {
			return -errEINVAL
		}
	case flags&mapFixedNoreplace != 0:
		if addr%pageSize != 0 || !inUserSpace(addr, length) {
			return -errEINVAL
		}
		if regions.overlaps(addr, addr+length) {
			return -errEEXIST
		}
	default:
		if addr%pageSize != 0 || !inUserSpace(addr, length) || regions.overlaps(addr, addr+length) {
			if length > mmapNext-UserBase { // mmapNext-length would wrap below UserBase
				return -errENOMEM
			}
			mmapNext -= length
			addr = mmapNext
		}
	}
	if prot&(ProtRead|ProtWrite|ProtExec) != 0 {
		if !host.Commit(addr, addr+length, prot) {
			return -errENOMEM
		}
	} else {
		host.Decommit(addr, addr+length)
	}
	if !regions.add(addr, addr+length) {
		return -errENOMEM
	}
	return int64(addr)
}

// inUserSpace reports whether [addr, addr+length), rounded up to pages, lies in the runtime's
// part of the address space, without letting addr+length wrap.
//
// Trap context allowed.
func inUserSpace(addr, length uint64) bool {
	return addr >= UserBase && addr <= UserTop && length <= UserTop-addr &&
		(addr+length+pageSize-1)&^(pageSize-1) <= UserTop
}

// Kernel context, VM lock held.
func munmap(addr, length uint64) int64 {
	if addr%pageSize != 0 || length == 0 {
		return -errEINVAL
	}
	if !inUserSpace(addr, length) {
		return -errEINVAL
	}
	end := (addr + length + pageSize - 1) &^ (pageSize - 1)
	host.Decommit(addr, end)
	regions.remove(addr, end)
	return 0
}

// Kernel context, VM lock held.
func madvise(addr, length, advice uint64) int64 {
	if addr%pageSize != 0 {
		return -errEINVAL
	}
	end := (addr + length + pageSize - 1) &^ (pageSize - 1)
	if advice == madvDontneed && inUserSpace(addr, length) {
		host.ZeroMapped(addr, end)
	}
	return 0
}

// mprotect keeps what is mapped (protection is not enforced: every page stays writable) and
// maps what is missing when the new protection allows access.
//
// Kernel context, VM lock held.
func mprotect(addr, length, prot uint64) int64 {
	if addr%pageSize != 0 {
		return -errEINVAL
	}
	if !inUserSpace(addr, length) {
		return -errEINVAL
	}
	end := (addr + length + pageSize - 1) &^ (pageSize - 1)
	if prot&(ProtRead|ProtWrite|ProtExec) != 0 && !host.MapMissing(addr, end, prot) {
		return -errENOMEM
	}
	return 0
}
