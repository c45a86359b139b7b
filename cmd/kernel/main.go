// Command kernel is the tracebed kernel image: package kernel boots the machine and hosts the
// Go runtime, which then runs this main — the in-kernel test runner. Its command line is the
// PVH command line (QEMU -append), one word per argument.
package main

import (
	"fmt"
	"os"

	"tracebed/fbt/live"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
	"tracebed/kernel/suites"
)

var all = []ktest.Suite{suites.Runtime, suites.SMP, suites.Traps, suites.Hang, suites.HangKlock, suites.HangXcall, suites.HangAll, suites.Panic, suites.Fault, suites.FaultNil, suites.FaultConsole,
	suites.FaultOverflow, suites.FaultGuard, suites.Xcall, suites.Console, suites.FBT, suites.FBTTorture, suites.FBTReap}

// defaults run when the command line names no suite.
var defaults = []string{"runtime", "smp", "traps", "xcall", "fbt"}

func main() {
	var names []string
	for _, s := range all {
		names = append(names, s.Name)
	}
	opts, err := ktest.ParseCmdline(os.Args[1:], names)
	if err != nil {
		ktest.ReportError(os.Stdout, err)
		os.Exit(1)
	}
	if len(opts.Suites) == 0 {
		opts.Suites = defaults
	}
	var run []ktest.Suite
	for _, n := range opts.Suites {
		for _, s := range all {
			if s.Name == n {
				run = append(run, s)
			}
		}
	}
	// Probes named on the command line are enabled before the first suite and stay enabled.
	if err := live.Boot(opts.Params, false, os.Stdout); err != nil {
		ktest.ReportError(os.Stdout, err)
		os.Exit(1)
	}
	fmt.Printf("# tracebed: runtime up %.1f ms after the runtime's first instruction, %d CPU(s)\n",
		float64(kernel.SinceRuntimeStart().Microseconds())/1000, kernel.OnlineCPUs())
	if !ktest.Run(os.Stdout, run, opts) {
		os.Exit(1)
	}
	os.Exit(0)
}
