package linux

import (
	"tracebed/trap"
)

// User memory. A system call's pointer arguments point into the one address space the runtime
// shares with the kernel; a bad one (unmapped, non-canonical) gets -EFAULT, as on Linux, and
// never becomes a fatal trap under klock. Every access to memory a system call names goes
// through these helpers, which use trap's fault-safe loads and stores: a fault is recovered by
// the exception table and reported here as false.
//
// Kernel context: called from system-call handlers (klock held, or for the console, not).
// UserRange, CopyIn and Efault serve the kernel's console write too.

// The runtime's own image (its globals) lives in the identity map below 4 GiB, beside the
// kernel's, so no address range separates the runtime's memory from the kernel's: a pointer is
// bad when it is unmapped (page 0 among them) or non-canonical, or when the range it starts
// would wrap past 2^64 (checked by UserRange before a multi-byte copy).

// UserRange reports whether [p, p+n) does not wrap.
//
// Trap context allowed.
func UserRange(p, n uint64) bool { return p+n >= p }

// putU8 writes one byte of user memory.
//
// Trap context allowed.
func putU8(p uint64, v uint8) bool { return !trap.SafeStore8(uintptr(p), v).Failed() }

// getU64 reads 8 bytes of user memory.
//
// Trap context allowed.
func getU64(p uint64) (uint64, bool) {
	v, f := trap.SafeLoad64(uintptr(p))
	return v, !f.Failed()
}

// readable reports whether the 8 bytes at p can be read. (Called only for pointers a system
// call was given: the runtime's first calls, before package trap's init has found its
// exception table, must not probe NULL.)
//
// Trap context allowed.
func readable(p uint64) bool {
	_, ok := getU64(p)
	return ok
}

// getU32 reads 4 bytes of user memory (one access: atomic when aligned, as futex needs).
//
// Trap context allowed.
func getU32(p uint64) (uint32, bool) {
	v, f := trap.SafeLoad32(uintptr(p))
	return v, !f.Failed()
}

// putU64 writes 8 bytes of user memory.
//
// Trap context allowed.
func putU64(p, v uint64) bool { return !trap.SafeStore64(uintptr(p), v).Failed() }

// putU32 writes 4 bytes of user memory, least significant first.
//
// Trap context allowed.
func putU32(p uint64, v uint32) bool {
	for i := uint64(0); i < 4; i++ {
		if !putU8(p+i, uint8(v>>(8*i))) {
			return false
		}
	}
	return true
}

// zeroUser clears n bytes of user memory.
//
// Trap context allowed.
func zeroUser(p, n uint64) bool {
	if !UserRange(p, n) {
		return false
	}
	for i := uint64(0); i < n; i++ {
		if !putU8(p+i, 0) {
			return false
		}
	}
	return true
}

// CopyIn fills dst from user memory at p and returns how many bytes it read before a fault
// (len(dst) when none).
//
// Trap context allowed.
func CopyIn(dst []byte, p uint64) int {
	if !UserRange(p, uint64(len(dst))) {
		return 0
	}
	for i := range dst {
		b, f := trap.SafeLoad8(uintptr(p) + uintptr(i))
		if f.Failed() {
			return i
		}
		dst[i] = b
	}
	return len(dst)
}

// maxTimespecNs is where long durations saturate: about 146 years, far past any run, and far
// from overflowing when a deadline adds the current time.
const maxTimespecNs = 1 << 62

// getTimespec reads a struct timespec as nanoseconds, or returns the errno Linux gives:
// EFAULT for a bad pointer, EINVAL for a negative time or tv_nsec out of [0, 1e9).
//
// Trap context allowed.
func getTimespec(p uint64) (ns int64, errno int64) {
	s, ok1 := getU64(p)
	n, ok2 := getU64(p + 8)
	switch {
	case !ok1 || !ok2:
		return 0, errEFAULT
	case int64(s) < 0 || n >= 1e9:
		return 0, errEINVAL
	case s >= maxTimespecNs/1_000_000_000:
		return maxTimespecNs, 0
	}
	return int64(s)*1e9 + int64(n), 0
}

// putTimespec writes ns as a struct timespec.
//
// Trap context allowed.
func putTimespec(p uint64, ns int64) bool {
	return putU64(p, uint64(ns/1e9)) && putU64(p+8, uint64(ns%1e9))
}

// Efault is the system call result for a bad pointer: -EFAULT, or, when some bytes were
// already transferred, their count (as Linux's write does).
//
// Trap context allowed.
func Efault(done uint64) int64 {
	if done > 0 {
		return int64(done)
	}
	return -errEFAULT
}
