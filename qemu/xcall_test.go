package qemu_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/kernel/ktest"
	"tracebed/qemu"
)

// xcallCases are the xcall suite's cases; at fewer CPUs than a case needs, it is skipped.
var xcallCases = []string{"unicast_each_cpu", "broadcast_all_cpus", "broadcast_with_interrupts_off",
	"broadcast_from_bp_handler", "nested_call", "call_cpu_spinning_on_klock", "refused_in_nmi", "tlb_shootdown_no_stale_reads",
	"all_to_all_storm"}

// The xcall suite at each CPU count make test covers: every case passes (or, short of CPUs,
// is skipped), and the storm's figures are logged.
func TestXcallSuiteInQEMU(t *testing.T) {
	for _, cpus := range []int{1, 2, 4, 8, qemu.MaxSMP} {
		t.Run(strconv.Itoa(cpus)+"cpus", func(t *testing.T) {
			words := "suite=xcall xcall_seconds=5"
			if cpus == qemu.MaxSMP {
				// The 32-CPU boot's short storm, and the watchdog's allowance for 16 vCPUs per
				// host core, as in the smp suite's (a klock wait of over a second in CI).
				words = "suite=xcall xcall_seconds=2 watchdog_ms=5000"
			}
			rep := boot(t, qemu.Config{SMP: cpus, Append: words, Timeout: 5 * time.Minute})
			require.Equal(t, qemu.Pass, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
			require.Len(t, rep.Results, 1)
			x := rep.Results[0]
			for _, name := range xcallCases {
				c := x.Find(name)
				require.NotNil(t, c, name)
				assert.True(t, c.OK, name)
			}
			storm := x.Find("all_to_all_storm")
			if cpus == 1 {
				assert.True(t, strings.HasPrefix(storm.Directive, "SKIP"), storm.Directive)
				return
			}
			assert.Greater(t, diagFloat(t, storm, "calls"), 0.0)
			t.Logf("%d cpus: %v", cpus, storm.Diags)
		})
	}
}

// Lost IPIs: with every third call IPI dropped at its sender, the storm still completes, every
// call exactly once, and the waiters' resends are counted.
func TestXcallSurvivesDroppedIPIs(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 4, Append: "suite=xcall xcall_seconds=3 xcall.drop=3", Timeout: 5 * time.Minute})
	require.Equal(t, qemu.Pass, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	storm := rep.Results[0].Find("all_to_all_storm")
	require.NotNil(t, storm)
	assert.Greater(t, diagFloat(t, storm, "ipis_dropped"), 0.0)
	assert.Greater(t, diagFloat(t, storm, "resends"), 0.0)
	t.Logf("%v", storm.Diags)
}

// watchdogStuck returns the stuck CPU and the time the watchdog reported, and checks the run
// ended with the watchdog's hang exit (not the host's timeout) and a state line per CPU.
func watchdogStuck(t *testing.T, rep *qemu.Report, cpus int) (cpu, ms int) {
	t.Helper()
	tail := strings.Join(rep.Tail, "\n")
	require.Equal(t, qemu.Hang, rep.Outcome, "tail:\n%s", tail)
	require.Equal(t, ktest.QEMUStatus(ktest.ExitHang), rep.ExitCode, "the watchdog ended the run, not the host:\n%s", tail)
	for i := 0; i < cpus; i++ {
		assert.Regexp(t, `tracebed: watchdog cpu `+strconv.Itoa(i)+
			`: (RIP 0x[0-9a-f]+ RSP 0x[0-9a-f]+ IF [01] trap depth \d+|reporting from a wait \(a lock's or a cross-CPU call's\))`, tail)
	}
	m := regexp.MustCompile(`tracebed: cpu (\d+) stuck for (\d+) ms`).FindStringSubmatch(tail)
	require.NotNil(t, m, tail)
	cpu, _ = strconv.Atoi(m[1])
	ms, _ = strconv.Atoi(m[2])
	return cpu, ms
}

// The witness for draining: with xcall.mode=naive the storm's senders, each waiting with
// interrupts off on another, deadlock; the watchdog reports it, naming the xcall wait on the
// stuck CPUs, and the run ends as a hang.
func TestXcallNaiveModeDeadlocks(t *testing.T) {
	for _, cpus := range []int{2, 4} {
		t.Run(strconv.Itoa(cpus)+"cpus", func(t *testing.T) {
			rep := boot(t, qemu.Config{SMP: cpus, Append: "suite=xcall xcall_seconds=10 xcall.mode=naive", Timeout: 5 * time.Minute})
			cpu, ms := watchdogStuck(t, rep, cpus)
			if cpus > 2 {
				assert.NotZero(t, cpu, "cpu 0 is no sender")
			}
			assert.GreaterOrEqual(t, ms, 1000)
			// Frames are named by the innermost function inlined at each PC: the wait loop (inlined
			// into xcall.Call) or the PAUSE or RDTSC inside it, below the storm's #BP handler; the
			// NMI may also find the CPU in what the wait calls (the watchdog's poll, a resend's
			// IPI): up to four frames above the wait.
			tail := strings.Join(rep.Tail, "\n")
			assert.Regexp(t, `tracebed: watchdog cpu `+strconv.Itoa(cpu)+` stack: (\S+ ){0,4}tracebed/xcall\.(wait|Call) .*tracebed/kernel/suites\.onStormBP`, tail)
			if cpus == 2 { // both CPUs wait: the report comes from a call's wait
				assert.Contains(t, tail, "reporting from a wait (a lock's")
			}
			// The log is cut by the hang; the cases before the storm passed.
			for i, name := range xcallCases[:len(xcallCases)-1] {
				assert.Regexp(t, `\n    ok `+strconv.Itoa(i+1)+" "+name+`( # SKIP[^\n]*)?\n`, tail, "%s fails in naive mode too", name)
			}
		})
	}
}

// A CPU spinning with interrupts off (suite=hang) is caught by the watchdog in about a second
// of guest time, with its state; watchdog=warn reports it and goes on; with watchdog=0 only the
// host's timeout ends the run.
func TestHangIsCaughtByTheWatchdog(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 2, Append: "suite=hang", Timeout: time.Minute})
	assert.Contains(t, strings.Join(rep.Tail, "\n"), "hanging on purpose")
	_, ms := watchdogStuck(t, rep, 2)
	assert.GreaterOrEqual(t, ms, 1000)
	assert.Less(t, ms, 2000)

	// watchdog=warn reports and goes on: the host's timeout ends the run.
	rep = boot(t, qemu.Config{SMP: 2, Append: "suite=hang watchdog=warn", Timeout: 15 * time.Second})
	tail := strings.Join(rep.Tail, "\n")
	assert.Equal(t, qemu.Hang, rep.Outcome)
	assert.NotEqual(t, ktest.QEMUStatus(ktest.ExitHang), rep.ExitCode, "watchdog=warn ended the run")
	assert.Regexp(t, `tracebed: watchdog: cpu \d made no progress`, tail)
	assert.Regexp(t, `tracebed: cpu \d stuck for \d+ ms`, tail)

	rep = boot(t, qemu.Config{SMP: 2, Append: "suite=hang watchdog=0", Timeout: 15 * time.Second})
	assert.Equal(t, qemu.Hang, rep.Outcome)
	assert.NotEqual(t, ktest.QEMUStatus(ktest.ExitHang), rep.ExitCode, "watchdog=0 still reported")
	assert.NotContains(t, strings.Join(rep.Tail, "\n"), "tracebed: watchdog")
}

// The witnesses for the shootdown: with tlbshootdown=0 the other CPUs keep their stale
// translations, and reads after munmap go through them; with tlbshootdown=2 shootdowns still
// skip idle CPUs (lazy TLB), but those no longer flush when they wake, and the reader CPU (idle
// between reads) sees stale memory.
func TestStaleReadsWithoutShootdown(t *testing.T) {
	for _, mutation := range []string{"tlbshootdown=0", "tlbshootdown=2"} {
		t.Run(mutation, func(t *testing.T) {
			rep := boot(t, qemu.Config{SMP: 2, Append: "suite=xcall xcall_seconds=1 " + mutation, Timeout: 5 * time.Minute})
			require.Equal(t, qemu.Fail, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
			require.Len(t, rep.Results, 1)
			c := rep.Results[0].Find("tlb_shootdown_no_stale_reads")
			require.NotNil(t, c)
			assert.False(t, c.OK)
			assert.Greater(t, diagFloat(t, c, "stale_reads_after_munmap"), 0.0)
		})
	}
}

// A CPU stuck with interrupts off while the only other CPU waits for a call to it: neither
// takes a timer interrupt, so the report comes from the call's wait (xcall's wait hook).
func TestStuckCallTargetIsReported(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 2, Append: "suite=hang_xcall", Timeout: time.Minute})
	cpu, _ := watchdogStuck(t, rep, 2)
	assert.Equal(t, 1, cpu)
	tail := strings.Join(rep.Tail, "\n")
	assert.Contains(t, tail, "hanging on purpose")
	assert.Contains(t, tail, "reporting from a wait (a lock's")
	// Its spin loop: the NMI lands inside Pause or on the loop's own instructions (CI saw both).
	assert.Regexp(t, `tracebed: watchdog cpu 1 stack: (tracebed/amd64\.Pause )?tracebed/kernel/suites\.`, tail)
}

// A CPU stuck holding klock: the others spin for it with interrupts off and take no timer
// interrupt, so the watchdog looks from their lock waits, and reports the holder's stack.
func TestStuckKlockHolderIsReported(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 2, Append: "suite=hang_klock", Timeout: time.Minute})
	watchdogStuck(t, rep, 2)
	tail := strings.Join(rep.Tail, "\n")
	assert.Regexp(t, `tracebed: watchdog cpu \d stack: .*tracebed/kernel\.WithKlock`, tail)
	assert.Contains(t, tail, "reporting from a wait (a lock's")
}

// A long console write at a real UART's pace (48 KiB at 115200 baud: 4.3 s with interrupts
// off) is progress, for the writer and for a CPU waiting behind it: no hang is reported. With
// consoleprogress=0 (the mutation) the watchdog must report the writer, stuck in consoleRaw,
// and the report starts on a line of its own although the writer was mid-line.
func TestLongConsoleWriteIsProgress(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 3, Append: "suite=console console.baud=115200", Timeout: 3 * time.Minute})
	require.Equal(t, qemu.Pass, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	c := rep.Results[0].Find("long_write_with_a_waiter")
	require.NotNil(t, c)
	assert.GreaterOrEqual(t, diagFloat(t, c, "long_write_ms"), 2000.0, "paced at 115200 baud")

	rep = boot(t, qemu.Config{SMP: 3, Append: "suite=console console.baud=115200 consoleprogress=0", Timeout: 3 * time.Minute})
	cpu, _ := watchdogStuck(t, rep, 3)
	assert.NotZero(t, cpu, "cpu 0 only sleeps")
	tail := strings.Join(rep.Tail, "\n")
	assert.Regexp(t, `tracebed: watchdog cpu 1 stack: (tracebed/amd64\.Pause |github\.com/usbarmory/tamago/soc/intel/uart\.\(\*UART\)\.Tx )?tracebed/kernel\.(consoleTx|consoleRaw) `, tail)
	assert.Regexp(t, `(?m)^tracebed: watchdog: cpu \d made no progress`, tail)
}

// The witness for draining in lock waits: with lockdrain=0 a CPU spinning for klock no longer
// runs the call klock's holder makes to it, and call_cpu_spinning_on_klock deadlocks: the
// watchdog reports it from the waits, after the cases before it passed.
func TestLockWaitDrainingMutationHangs(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 2, Append: "suite=xcall lockdrain=0", Timeout: 5 * time.Minute})
	watchdogStuck(t, rep, 2)
	tail := strings.Join(rep.Tail, "\n")
	assert.Regexp(t, `\n    ok 5 nested_call( # SKIP[^\n]*)?\n`, tail, "the cases before passed")
	assert.NotContains(t, tail, "ok 6 call_cpu_spinning_on_klock")
	assert.Regexp(t, `tracebed: watchdog cpu 0 stack: .*tracebed/kernel\.CrossCall tracebed/kernel/suites\.xcKlockSpinner`, tail, "klock's holder, calling")
	assert.Regexp(t, `tracebed: watchdog cpu 1 stack: (tracebed/amd64\.Pause )?(tracebed/kernel\.\(\*spinlock\)\.lock )?tracebed/kernel\.\(\*CPU\)\.syscall `,
		tail, "the CPU spinning for klock (the lock may be inlined)")
}
