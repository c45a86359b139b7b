package suites

import (
	"bytes"
	"syscall"
	"time"

	"tracebed/kernel"
	"tracebed/kernel/ktest"
)

// Console is the console's behaviour under long writes. Run it with console.baud=115200 to see
// a real UART's timing: one long write then holds the console, interrupts off, for seconds.
var Console = ktest.Suite{Name: "console", Cases: []ktest.Case{
	{Name: "long_write_with_a_waiter", Run: longConsoleWrite},
}}

// longWriteBytes is the long write's size: 4.3 s at 115200 baud.
const longWriteBytes = 48 << 10

// longConsoleWrite: CPU 1 writes one long comment line in a single write(2) while CPU 2
// writes short lines that must wait behind it; CPU 0 sleeps meanwhile, taking timer
// interrupts, and so watches both for the watchdog. Both are making progress (the console
// is), so neither may be reported stuck.
func longConsoleWrite(t *ktest.T) {
	n := kernel.OnlineCPUs()
	if n < 3 {
		t.Skip("needs 3 CPUs")
		return
	}
	line := append([]byte("# console fill "), bytes.Repeat([]byte{'.'}, longWriteBytes)...)
	line = append(line, '\n')
	var wrote int
	var werr error
	waiterLines := 0
	t0 := time.Now()
	onCPUs(1, 3, func(cpu int, pinned bool) {
		if !pinned {
			t.Errorf("cannot pin to cpu %d", cpu)
			return
		}
		if cpu == 1 {
			wrote, werr = syscall.Write(1, line)
			return
		}
		time.Sleep(20 * time.Millisecond) // the long write holds the console by now
		for i := 0; i < 3; i++ {
			t.Logf("a short line from cpu 2, written behind the long one")
			waiterLines++
		}
	})
	elapsed := time.Since(t0)
	t.Diag("long_write_bytes", len(line))
	t.Diag("long_write_ms", elapsed.Milliseconds())
	if werr != nil || wrote != len(line) {
		t.Errorf("the long write wrote %d of %d bytes (%v)", wrote, len(line), werr)
	}
	if waiterLines != 3 {
		t.Errorf("cpu 2 wrote %d of its 3 lines", waiterLines)
	}
}
