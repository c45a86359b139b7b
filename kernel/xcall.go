package kernel

import (
	"sync/atomic"

	"tracebed/amd64"
	"tracebed/kernel/ktest"
	"tracebed/trap"
	"tracebed/xcall"
)

// Cross-CPU calls (package xcall has the protocol). The kernel's part: the call IPI (vecXcall)
// drains on arrival; every spin wait with interrupts off drains too (spinlock.lock), so a CPU
// waiting for klock runs the calls of the CPU that holds it; calls are refused in NMI context.
// xcall.mode=naive on the command line turns the waiters' draining off (a mutation: the xcall
// suite's all-to-all storm must then hang, and the watchdog report it); xcall.drop=N drops
// every Nth call IPI at its sender (the waits re-send after about 1 ms).

// xcallReady is set once package xcall knows the boot CPU: spin waits before then (the console
// lock, early in boot) have nothing to drain.
var xcallReady atomic.Bool

// initXcall reads the xcall parameters and starts the package; a bad value is fatal, in one
// line. Boot, before any other CPU runs.
func initXcall(c *CPU) {
	if v, ok := cmdlineValue("xcall.mode"); ok {
		switch v {
		case "naive":
			xcall.SetNaive(true)
		case "drain":
		default:
			var k kbuf
			k.s("tracebed: fatal: xcall.mode must be drain or naive, not ").s(v).out()
			debugExit(ktest.ExitFatal)
		}
	}
	if n, ok := cmdlineInt("xcall.drop"); ok {
		xcall.SetDrop(uint64(n))
	}
	xcall.Init(&lapic, vecXcall, tscHz)
	tlbFlushCall = xcall.Register(flushTLB) // at boot: no write barrier can be on yet
	syncCall = xcall.Register(serialize)
	syncThreadCall = xcall.Register(syncThread)
	xcall.SetWaitHook(watchdogPollHere)
	xcall.SetOnline(c.id, c.apicID)
	xcallReady.Store(true)
}

// drainCalls runs the cross-CPU calls waiting for this CPU. Spin waits with interrupts off call
// it. Trap context allowed (not NMI: spin waits are never taken there).
func drainCalls() {
	if xcallReady.Load() {
		thisCPU().runCalls()
	}
}

// CrossCall runs f(arg) on CPU cpu (an xcall.Register'ed function) and returns once it has run
// there (xcall.OK), or says why not. Callable from goroutine code, from kernel code with
// interrupts off and from trap handlers; refused in NMI context. Interrupts are off during the
// call. The result is a plain value, which a trap handler may store anywhere.
//
// Trap context allowed.
func CrossCall(cpu int, f xcall.Func, arg uintptr) xcall.Error {
	if fromGoroutine() {
		return xcall.Error(kcall3(kcXcall, uintptr(cpu), arg, uintptr(f)))
	}
	fl := amd64.DisableInterrupts()
	c := thisCPU()
	e := xcall.ErrNMI
	if !c.inNMI {
		e = xcall.Call(c.id, cpu, f, arg)
	}
	amd64.RestoreInterrupts(fl)
	return e
}

// CrossBroadcast runs f(arg) on every online CPU in set (bit i: CPU i; the caller's own CPU
// included if its bit is set) and returns once each has run it. As CrossCall otherwise.
//
// Trap context allowed.
func CrossBroadcast(set uint64, f xcall.Func, arg uintptr) xcall.Error {
	if fromGoroutine() {
		return xcall.Error(kcall3(kcXbroadcast, uintptr(set), arg, uintptr(f)))
	}
	fl := amd64.DisableInterrupts()
	c := thisCPU()
	e := xcall.ErrNMI
	if !c.inNMI {
		e = xcall.Broadcast(c.id, set, f, arg)
	}
	amd64.RestoreInterrupts(fl)
	return e
}

// fromGoroutine reports whether the caller is goroutine code with interrupts on (a thread at
// trap depth 0), which then makes its cross-CPU call in a kernel call. It must not disable
// interrupts itself and call on: a Go function's prologue may deschedule the goroutine right
// there (a preemption request), and it would go on, on another thread and another CPU, with
// the first CPU taken as its own — CI saw a call meant for CPU 0 run on CPU 1 this way. Kernel
// code and trap handlers (even on a trap gate, with IF on) call directly.
//
// Trap context allowed.
func fromGoroutine() bool {
	return amd64.Flags()&amd64.RFLAGS_IF != 0 && trap.Depth(thisCPU().id) == 0
}

// InLockWait reports whether this CPU is spinning for a kernel lock (a cross-CPU call run from
// that wait sees true). Trap context allowed.
func InLockWait() bool { return thisCPU().lockWait != 0 }

// WithKlock runs fn on this CPU with klock held and interrupts off: for tests of what other
// CPUs do while they wait for it.
func WithKlock(fn func()) {
	fl := amd64.DisableInterrupts()
	klock.lock()
	fn()
	klock.unlock()
	amd64.RestoreInterrupts(fl)
}

// LockWaiting reports whether CPU cpu is spinning for a kernel lock right now.
func LockWaiting(cpu int) bool { return atomic.LoadUint32(&cpus[cpu].lockWait) != 0 }
