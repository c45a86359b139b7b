package suites

import (
	"time"
	"unsafe"

	"tracebed/amd64"
	"tracebed/kernel/ktest"
)

// Hang and Fault fail on purpose, in the two ways a kernel under test goes wrong: it stops
// making progress, or it takes an exception it cannot handle. The host's tests select them
// and pass only when the host reports exactly that. Neither runs by default.

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
