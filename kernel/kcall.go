package kernel

import (
	"syscall"
	"unsafe"

	"tracebed/kernel/sched"
	"tracebed/xcall"
)

// Kernel calls: how goroutine code runs a short piece of kernel work with interrupts off.
//
// Goroutine code must not simply disable interrupts and call kernel functions: every Go
// function's prologue may find a preemption request (the runtime sets the goroutine's
// stackguard0), and the goroutine is then descheduled right there — with IF=0 left on the
// thread, which goes on running other goroutines unpreemptible, and with any lock the work held
// still held. (FBT's safe mode counted thousands of probe hits with IF=0 in the runtime's
// scheduler this way before kernel calls existed.) A kernel call instead enters the kernel
// through SYSCALL, which clears IF, and runs the work on the CPU's kernel stack with the
// kernel's g, which the runtime never preempts.

// sysKcall is the system-call number of kernel calls (no Linux call has it).
const sysKcall = 0x7e57

// Kernel call numbers.
const (
	kcMapXOL      = iota // MapXOL(a, b)
	kcSync               // SyncCPUs()
	kcPin                // setPin(int32(a))
	kcXcall              // CrossCall(int(a), xcall.Func(c), b) from goroutine code
	kcXbroadcast         // CrossBroadcast(a, xcall.Func(c), b) from goroutine code
	kcSyncThreads        // SyncThreads(out): a is &out[0], b is len(out)
	kcPokes              // PokeTexts(p): a is &p[0], b is len(p) (at most pokeBatch)
	numKcalls
)

// kcall runs kernel call n with arguments a and b and returns its result. Goroutine code.
//
// An argument may be a pointer converted to uintptr in the call itself (PokeTexts,
// SyncThreads): uintptrescapes puts what it points to on the heap and keeps it alive for the
// call, as for syscall.Syscall — a goroutine's stack can move when the call grows it, and the
// kernel would read the old one.
//
//go:uintptrescapes
func kcall(n int, a, b uintptr) uintptr { return kcall3(n, a, b, 0) }

// kcall3 is kcall with a third argument (R10). Goroutine code. (CrossCall and CrossBroadcast,
// which trap context calls too, reach it only from goroutine code: trapcontext_test.go's
// goroutineBranchOnly.)
//
//go:uintptrescapes
func kcall3(n int, a, b, c uintptr) uintptr {
	r, _, _ := syscall.RawSyscall6(sysKcall, uintptr(n), a, b, c, 0, 0)
	return r
}

// runKcall runs the kernel call in a SYSCALL frame (RDI: number, RSI, RDX and R10: arguments).
//
// Kernel context: the SYSCALL entry (IF=0, not nested).
func (c *CPU) runKcall(f *Frame) uint64 {
	a, b := uintptr(f.RSI), uintptr(f.RDX)
	switch f.RDI {
	case kcMapXOL:
		w, ok := mapXOL(a, b)
		if !ok {
			return 0
		}
		return uint64(w)
	case kcSync:
		return b2u(CrossBroadcast(1<<uint(ncpuOnline)-1, syncCall, 0) == xcall.OK)
	case kcXcall:
		return uint64(CrossCall(int(a), xcall.Func(f.R10), b))
	case kcXbroadcast:
		return uint64(CrossBroadcast(uint64(a), xcall.Func(f.R10), b))
	case kcPin:
		klock.lock()
		sched.T(c.current).Pin = int32(a)
		c.unlockKlock()
		return 0
	case kcPokes:
		if b == 0 || b > pokeBatch {
			return 0
		}
		return uint64(pokeTexts(unsafe.Slice((*Poke)(unsafe.Pointer(a)), b)))
	case kcSyncThreads:
		if b == 0 {
			return 0
		}
		return c.syncThreads(unsafe.Slice((*uint64)(unsafe.Pointer(a)), b))
	}
	return ^uint64(0)
}

// Trap context allowed.
func b2u(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}
