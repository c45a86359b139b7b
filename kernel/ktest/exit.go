// Package ktest is the in-kernel test runner: suites of named cases whose results are printed
// as KTAP v1 on the console, with measurements as "# key=value" diagnostics, and the exit
// values that tell the host how a run ended.
package ktest

// Values the kernel writes to QEMU's isa-debug-exit port; QEMU exits with (v<<1)|1.
const (
	ExitPass  = 0x10 // every selected suite passed
	ExitFail  = 0x11 // a case failed, or the command line was bad
	ExitFatal = 0x12 // fatal trap, kernel panic, or a Go runtime crash
	ExitHang  = 0x13 // the watchdog found a stuck CPU
)

// QEMUStatus is the process exit status QEMU reports for debug-exit value v.
func QEMUStatus(v int) int { return v<<1 | 1 }
