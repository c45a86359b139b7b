package suites

import (
	"time"
	"unsafe"

	"tracebed/amd64"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
)

// Hang, Fault, FaultNil and FaultConsole fail on purpose, in the ways a kernel under test goes
// wrong: it stops making progress, or it takes an exception it cannot handle (a nil
// dereference among them, and one while holding the console's lock). The host's tests select them and pass only when the host reports exactly
// that. None runs by default.

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
