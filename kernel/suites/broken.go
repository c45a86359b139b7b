package suites

import (
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
	"tracebed/trap"
)

// Hang, HangKlock, Fault, FaultNil, FaultConsole, FaultOverflow and FaultGuard fail on purpose, in the ways
// a kernel under test goes wrong: it stops making progress, or it takes an exception it cannot
// handle (a nil dereference among them, one while holding the console's lock, and overflowing
// its stack). The host's tests select them and pass only when the host reports exactly that.
// None runs by default.

// Hang stops the CPU for good: interrupts off and a spin, as a stuck CPU does.
var Hang = ktest.Suite{Name: "hang", Cases: []ktest.Case{{"spin_with_interrupts_off", func(t *ktest.T) {
	t.Logf("hanging on purpose: interrupts off, spinning forever")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	amd64.DisableInterrupts()
	for {
		amd64.Pause()
	}
}}}}

// unmapped is an address in the lower half that nothing maps (above the identity map, below
// the runtime's arenas at 0xc000000000).
const unmapped = 0x00de_adbe_e000

// Fault loads from an unmapped address: #PF with CR2 = unmapped, which the kernel reports as a
// fatal trap.
var Fault = ktest.Suite{Name: "fault", Cases: []ktest.Case{{"load_from_unmapped_address", func(t *ktest.T) {
	t.Logf("faulting on purpose: load from %#x", uintptr(unmapped))
	p := (*uint64)(unsafe.Pointer(uintptr(unmapped)))
	t.Diag("value", *p)
	t.Errorf("load from an unmapped address returned")
}}}}

// FaultConsole faults while this CPU holds the console lock, as a console write of a bad buffer
// once did: the fatal report must still be printed (the kernel seizes the console after a
// bounded wait), not hang on the lock its own CPU holds.
var FaultConsole = ktest.Suite{Name: "fault_console", Cases: []ktest.Case{{"fault_holding_console_lock", func(t *ktest.T) {
	t.Logf("faulting on purpose inside a console write: load from %#x", uintptr(unmapped))
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	kernel.FaultInConsoleWrite(unmapped)
	t.Errorf("load from an unmapped address returned")
}}}}

// nilTarget is a nil pointer the compiler cannot see through.
var nilTarget *uint64

// FaultNil dereferences a nil pointer: page 0 is unmapped, so it is a #PF with CR2 0 that the
// kernel reports as fatal (no signal turns it into a Go panic here), never a read of whatever
// the firmware left at address 0.
var FaultNil = ktest.Suite{Name: "fault_nil", Cases: []ktest.Case{{"nil_dereference", func(t *ktest.T) {
	t.Logf("faulting on purpose: nil dereference")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	t.Diag("value", *nilTarget)
	t.Errorf("a nil dereference returned")
}}}}

// FaultOverflow overflows the kernel stack with nested traps: a #BP handler that executes INT3
// again, each nested entry a frame below the last. The kernel must stop at the kernel stack's
// limit and report a stack overflow, with the trap depth reached.
var FaultOverflow = ktest.Suite{Name: "fault_overflow", Cases: []ktest.Case{{"recursive_bp_handler", func(t *ktest.T) {
	trapSites(&sites)
	trap.Register(idt.Breakpoint, onRecursiveBP)
	t.Logf("overflowing the kernel stack on purpose: a #BP handler that executes INT3 again")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	int3Site()
	t.Errorf("the recursive #BP handler returned")
}}}}

// onRecursiveBP executes the INT3 it was entered for again, without end. Trap context.
func onRecursiveBP(f *trap.Frame) bool {
	if uintptr(f.RIP)-1 != sites[siteInt3] {
		return false
	}
	int3Site()
	return true
}

// pushMarker is the word pushUntil pushes.
const pushMarker = 0x5ac0ffee

// pushUntil pushes pushMarker until RSP is at or below limit, then puts RSP back
// (broken_amd64.s). Trap context: it runs on the kernel stack of the handler that calls it.
func pushUntil(limit uintptr)

// FaultGuard runs a #BP handler (on the kernel stack) that pushes, interrupts off, until RSP is
// inside the kernel stack's guard page: the push that reaches the unmapped page must fault and
// be reported as a stack overflow. With stackguard=0 (the guard pages stay mapped) the pushes
// succeed and the case fails, having found its marker in the guard page: the mutation that
// shows the guard page is what catches an overflow no software check sees.
var FaultGuard = ktest.Suite{Name: "fault_guard", Cases: []ktest.Case{{"push_into_guard_page", func(t *ktest.T) {
	trapSites(&sites)
	trap.Register(idt.Breakpoint, onGuardBP)
	t.Logf("overflowing the kernel stack on purpose: pushing into its guard page")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	int3Site()
	at := guardTarget.Load()
	if at != 0 && *(*uint64)(unsafe.Pointer(at)) == pushMarker {
		t.Errorf("pushed into the kernel stack's guard page at %#x and nothing faulted: the guard page is mapped", at)
		return
	}
	t.Errorf("the pushing #BP handler returned")
}}}}

// guardTarget is where onGuardBP's pushes end: 512 bytes into the guard page.
var guardTarget atomic.Uintptr

// onGuardBP pushes until RSP is 512 bytes into this CPU's kernel stack guard page. Trap context.
func onGuardBP(f *trap.Frame) bool {
	if uintptr(f.RIP)-1 != sites[siteInt3] {
		return false
	}
	fl := amd64.DisableInterrupts() // no entry nests while the stack is past its limit
	at := kernel.KernelStackGuard(kernel.CurrentCPU()) + 512
	guardTarget.Store(at)
	pushUntil(at)
	amd64.RestoreInterrupts(fl)
	return true
}

// HangXcall leaves CPU 1 spinning with interrupts off and has CPU 0 call it: CPU 0 then waits
// for the call with interrupts off too, no CPU takes a timer interrupt, and only the watchdog's
// look from the cross-CPU call's wait can report CPU 1.
var HangXcall = ktest.Suite{Name: "hang_xcall", Cases: []ktest.Case{{"call_a_stuck_cpu", func(t *ktest.T) {
	if kernel.OnlineCPUs() < 2 {
		t.Skip("needs 2 CPUs")
		return
	}
	t.Logf("hanging on purpose: cpu 1 spins with interrupts off, cpu 0 calls it")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	go func() {
		runtime.LockOSThread()
		if !kernel.PinCPU(1) {
			t.Errorf("cannot pin to cpu 1")
			return
		}
		amd64.DisableInterrupts()
		for {
			amd64.Pause()
		}
	}()
	runtime.LockOSThread()
	if !kernel.PinCPU(0) {
		t.Fatalf("cannot pin to cpu 0")
	}
	time.Sleep(50 * time.Millisecond) // cpu 1 is spinning by now
	t.Errorf("the call returned: %v", kernel.CrossCall(1, xcRecordOwn, 0))
}}}}

// HangAll stops every CPU in spinAllForever with interrupts off, outside any wait: no watchdog
// can run, so only the host sees it (its timeout, then a diagnosis over QMP, which must name
// spinAllForever on every vCPU). Run it with watchdog=0: a CPU waiting on another, for a TLB
// shootdown say, would otherwise report it from that wait.
var HangAll = ktest.Suite{Name: "hang_all", Cases: []ktest.Case{{"every_cpu_spins_with_interrupts_off", func(t *ktest.T) {
	t.Logf("hanging on purpose: every CPU spins with interrupts off")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	n := kernel.OnlineCPUs()
	var pinned atomic.Int32
	for cpu := 1; cpu < n; cpu++ {
		go func() {
			runtime.LockOSThread()
			if kernel.PinCPU(cpu) {
				pinned.Add(1)
				spinAllForever()
			}
		}()
	}
	runtime.LockOSThread()
	kernel.PinCPU(0)
	for t0 := time.Now(); pinned.Load() < int32(n-1) && time.Since(t0) < 2*time.Second; {
		time.Sleep(time.Millisecond)
	}
	spinAllForever()
}}}}

// hangSpins counts spinAllForever's turns.
var hangSpins atomic.Uint64

// spinAllForever disables interrupts and spins; the loop itself, not a callee, is where every
// CPU's RIP lies.
//
//go:noinline
func spinAllForever() {
	amd64.DisableInterrupts()
	for {
		hangSpins.Add(1)
	}
}

// Panic tells QEMU the guest panicked through the pvpanic device (port 0x505; run with
// `-device pvpanic -action panic=pause`): QEMU stops the guest, and the runner must say so at
// once instead of waiting out its timeout.
var Panic = ktest.Suite{Name: "pvpanic", Cases: []ktest.Case{{"report_a_panic_to_qemu", func(t *ktest.T) {
	t.Logf("telling QEMU the guest panicked (pvpanic)")
	time.Sleep(10 * time.Millisecond)
	amd64.Out8(0x505, 1)
	time.Sleep(time.Hour) // QEMU has stopped the guest by now
}}}}

// HangKlock holds klock forever with interrupts off, as a CPU stuck in a system call does:
// every other CPU then spins for klock, taking no timer interrupt, so only the watchdog's look
// from the lock waits can report it.
var HangKlock = ktest.Suite{Name: "hang_klock", Cases: []ktest.Case{{"spin_holding_klock", func(t *ktest.T) {
	t.Logf("hanging on purpose: holding klock, interrupts off")
	time.Sleep(10 * time.Millisecond) // let the line reach the console
	kernel.WithKlock(func() {
		for {
			amd64.Pause()
		}
	})
}}}}
