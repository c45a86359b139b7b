package kernel

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

// getU64 reads 8 bytes of user memory.
func getU64(p uint64) (uint64, bool) {
	v, f := trap.SafeLoad64(uintptr(p))
	return v, !f.Failed()
}

// getU32 reads 4 bytes of user memory (one access: atomic when aligned, as futex needs).
func getU32(p uint64) (uint32, bool) {
	v, f := trap.SafeLoad32(uintptr(p))
	return v, !f.Failed()
}

// putU64 writes 8 bytes of user memory.
func putU64(p, v uint64) bool { return !trap.SafeStore64(uintptr(p), v).Failed() }

// putU32 writes 4 bytes of user memory, least significant first.
func putU32(p uint64, v uint32) bool {
	for i := uint64(0); i < 4; i++ {
		if trap.SafeStore8(uintptr(p+i), uint8(v>>(8*i))).Failed() {
			return false
		}
	}
	return true
}

// zeroUser clears n bytes of user memory.
func zeroUser(p, n uint64) bool {
	for i := uint64(0); i < n; i++ {
		if trap.SafeStore8(uintptr(p+i), 0).Failed() {
			return false
		}
	}
	return true
}

// copyIn fills dst from user memory at p and returns how many bytes it read before a fault
// (len(dst) when none).
func copyIn(dst []byte, p uint64) int {
	for i := range dst {
		b, f := trap.SafeLoad8(uintptr(p) + uintptr(i))
		if f.Failed() {
			return i
		}
		dst[i] = b
	}
	return len(dst)
}

// getTimespec reads a struct timespec as nanoseconds.
func getTimespec(p uint64) (int64, bool) {
	s, ok1 := getU64(p)
	ns, ok2 := getU64(p + 8)
	return int64(s)*1e9 + int64(ns), ok1 && ok2
}

// putTimespec writes ns as a struct timespec.
func putTimespec(p uint64, ns int64) bool {
	return putU64(p, uint64(ns/1e9)) && putU64(p+8, uint64(ns%1e9))
}

// efault is the system call result for a bad pointer: -EFAULT, or, when some bytes were
// already transferred, their count (as Linux's write does).
func efault(done uint64) int64 {
	if done > 0 {
		return int64(done)
	}
	return -errEFAULT
}
