package qemu_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/qemu"
)

// These tests boot the real kernel in QEMU (TCG). They never skip: without QEMU they fail
// with the install instruction (make test installs it first).

var (
	buildOnce sync.Once
	kernelELF string
	buildErr  error
)

func kernel(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tracebed-kernel")
		if err != nil {
			buildErr = err
			return
		}
		kernelELF = filepath.Join(dir, "kernel.elf")
		buildErr = qemu.BuildKernel("..", kernelELF)
	})
	require.NoError(t, buildErr)
	return kernelELF
}

func boot(t *testing.T, cfg qemu.Config) *qemu.Report {
	t.Helper()
	cfg.Kernel = kernel(t)
	rep, err := qemu.Run(cfg, nil)
	require.NoError(t, err)
	t.Logf("%s", strings.Join(rep.Summary(), "\n"))
	if d := rep.Diagnosis; d != nil { // a hang: where every vCPU was, and what the NMI printed
		t.Logf("%s\nafter the NMI:\n%s", strings.Join(d.Lines(), "\n"), strings.Join(d.AfterNMI, "\n"))
	}
	return rep
}

func diagFloat(t *testing.T, r *qemu.Result, key string) float64 {
	t.Helper()
	v, ok := r.Diag(key)
	require.True(t, ok, "%s: no diagnostic %s in %v", r.Name, key, r.Diags)
	f, err := strconv.ParseFloat(v, 64)
	require.NoError(t, err)
	return f
}

func TestRuntimeSuiteInQEMU(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 4, Append: "suite=runtime", Timeout: 10 * time.Minute})
	require.Equal(t, qemu.Pass, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	require.NoError(t, rep.KTAPError)
	require.Len(t, rep.Results, 1)
	rt := rep.Results[0]
	assert.Equal(t, "runtime", rt.Name)
	for _, name := range []string{"goroutines_10000", "channels_select_timers", "sleep_accuracy", "maps",
		"fmt", "panic_recover", "gc_stress", "mutex_contention_8", "preempt_spinning_thread",
		"efault_bad_user_pointers"} {
		c := rt.Find(name)
		if assert.NotNil(t, c, name) {
			assert.True(t, c.OK, name)
		}
	}
	assert.Equal(t, 10000.0, diagFloat(t, rt.Find("goroutines_10000"), "spawned"))
	assert.GreaterOrEqual(t, diagFloat(t, rt.Find("preempt_spinning_thread"), "wakeups_while_all_spinning"), 3.0)
	assert.Equal(t, 34.0, diagFloat(t, rt.Find("efault_bad_user_pointers"), "bad_pointer_calls"),
		"9 calls for each of 3 bad pointers, 6 for NULL, 1 wrapping write")
	assert.Equal(t, 34.0, diagFloat(t, rt.Find("efault_bad_user_pointers"), "efault_returns"))
	assert.Equal(t, 24.0, diagFloat(t, rt.Find("efault_bad_user_pointers"), "partial_write_bytes"),
		"write(2) stops at the end of the mapping")
	gc := rt.Find("gc_stress")
	assert.GreaterOrEqual(t, diagFloat(t, gc, "total_alloc_mib"), 1024.0)
	assert.GreaterOrEqual(t, diagFloat(t, gc, "gc_cycles"), 20.0)
	for _, ms := range []string{"1", "10", "100"} {
		got := diagFloat(t, rt.Find("sleep_accuracy"), "sleep_"+ms+"ms_measured_ms")
		want, _ := strconv.ParseFloat(ms, 64)
		assert.GreaterOrEqual(t, got, want)
	}
	assert.Greater(t, rep.FirstKTAP, time.Duration(0))
}

func TestHangIsDetected(t *testing.T) {
	rep := boot(t, qemu.Config{Append: "suite=hang", Timeout: 20 * time.Second})
	assert.Equal(t, qemu.Hang, rep.Outcome)
	assert.Contains(t, strings.Join(rep.Tail, "\n"), "hanging on purpose")
	assert.LessOrEqual(t, len(rep.Tail), qemu.TailLines)
	assert.Less(t, rep.Total, 60*time.Second, "the timeout bounds the run")
}

// fatalUnmappedLoad boots suite and checks that it ends in the fatal report of a #PF at the
// fault suites' unmapped address; it returns the report's console lines.
func fatalUnmappedLoad(t *testing.T, suite string) (*qemu.Report, string) {
	t.Helper()
	rep := boot(t, qemu.Config{Append: "suite=" + suite, Timeout: 2 * time.Minute})
	require.Equal(t, qemu.Fatal, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	tail := strings.Join(rep.Tail, "\n")
	assert.Contains(t, tail, "vector 14 #PF page fault")
	assert.Contains(t, tail, "CR2 0xdeadbee000")
	return rep, tail
}

func TestFaultIsDetected(t *testing.T) {
	rep, tail := fatalUnmappedLoad(t, "fault")
	require.NotEmpty(t, rep.Stack)
	assert.Contains(t, strings.Join(rep.Stack, "\n"), "tracebed/kernel/suites", "the stack is symbolized")
	// The kernel names the same frames itself, from its own pclntab.
	assert.Regexp(t, `tracebed: fatal frame 0 0x[0-9a-f]+ tracebed/kernel/suites\.\S+ \S+/kernel/suites/broken\.go:\d+`, tail)
	fields := strings.Fields(rep.Stack[0]) // "pc function file:line"
	require.Len(t, fields, 3)
	assert.Contains(t, tail, "tracebed: fatal frame 0 "+fields[0]+" "+fields[1]+" "+fields[2],
		"kernel and host agree on the faulting frame")
}

// A nil dereference faults (page 0 is unmapped) and is reported as a fatal #PF at CR2 0.
func TestNilDereferenceIsReported(t *testing.T) {
	rep := boot(t, qemu.Config{Append: "suite=fault_nil", Timeout: 2 * time.Minute})
	require.Equal(t, qemu.Fatal, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	tail := strings.Join(rep.Tail, "\n")
	assert.Contains(t, tail, "vector 14 #PF page fault")
	assert.Contains(t, tail, "CR2 0x0 ")
}

// A fault while this CPU holds the console lock is still reported as a fatal trap: the report
// seizes the console after a bounded wait. Without that (remove seizeConsole from fatalTrap) the
// report spins on the lock its own CPU holds and this run ends as a HANG.
func TestFaultWhilePrintingIsReported(t *testing.T) {
	_, tail := fatalUnmappedLoad(t, "fault_console")
	assert.Regexp(t, `tracebed: fatal frame 0 0x[0-9a-f]+ tracebed/kernel\.FaultInConsoleWrite `, tail)
}

// Overflowing the kernel stack is reported as a stack overflow on each way it happens: nested
// traps (a #BP handler that executes INT3 again) stop at the kernel stack's limit, and a push
// into the guard page faults, through #PF on its IST stack or, when #PF has no IST stack of
// its own (idt.ist=14:0), through #DF on the double fault's.
func TestStackOverflowIsReported(t *testing.T) {
	for _, tc := range []struct{ name, append, trap string }{
		{"nested_traps", "suite=fault_overflow", ""},
		{"guard_page_pf", "suite=fault_guard", "vector 14 #PF page fault"},
		{"guard_page_df", "suite=fault_guard idt.ist=14:0", "vector 8 #DF double fault"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := boot(t, qemu.Config{Append: tc.append, Timeout: 2 * time.Minute})
			tail := strings.Join(rep.Tail, "\n")
			require.Equal(t, qemu.Fatal, rep.Outcome, "tail:\n%s", tail)
			assert.Contains(t, tail, tc.trap)
			m := regexp.MustCompile(`tracebed: fatal: stack overflow on cpu \d+: kernel stack \(guard page 0x[0-9a-f]+, kernel stack limit 0x[0-9a-f]+\) at trap depth (\d+)`).FindStringSubmatch(tail)
			require.NotNil(t, m, "no stack overflow report in:\n%s", tail)
			depth, _ := strconv.Atoi(m[1])
			if tc.name == "nested_traps" {
				// 92 KiB of kernel stack hold dozens of nested entries (a frame is 704 bytes).
				assert.GreaterOrEqual(t, depth, 16, "the handler's traps nested")
			}
			t.Logf("%s: %s", tc.name, m[0])
		})
	}
}

// The witness for the guard pages: with them mapped (stackguard=0) the pushes of fault_guard
// land in the guard page unnoticed, and the case fails on finding them there.
func TestStackGuardMutationFails(t *testing.T) {
	rep := boot(t, qemu.Config{Append: "suite=fault_guard stackguard=0", Timeout: 2 * time.Minute})
	tail := strings.Join(rep.Tail, "\n")
	require.Equal(t, qemu.Fail, rep.Outcome, "tail:\n%s", tail)
	assert.Contains(t, tail, "nothing faulted: the guard page is mapped")
	assert.NotContains(t, tail, "stack overflow")
}

// The witness for preemption: with timer preemption off (nopreempt=1), preempt_spinning_thread
// must fail, because nothing else can give its sleeper a CPU while every CPU spins; every other
// runtime case still passes.
func TestPreemptionMutationFails(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 2, Append: "suite=runtime nopreempt=1 gc_mib=64", Timeout: 5 * time.Minute})
	require.Equal(t, qemu.Fail, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	require.Len(t, rep.Results, 1)
	rt := rep.Results[0]
	pre := rt.Find("preempt_spinning_thread")
	require.NotNil(t, pre)
	assert.False(t, pre.OK, "the preemption case passed with preemption off")
	assert.Equal(t, 0.0, diagFloat(t, pre, "wakeups_while_all_spinning"))
	for _, c := range rt.Children {
		if c.Name != "preempt_spinning_thread" {
			assert.True(t, c.OK, "%s fails without preemption too", c.Name)
		}
	}
}

func TestBadCommandLineFails(t *testing.T) {
	rep := boot(t, qemu.Config{Append: "suite=runtime bogus=1", Timeout: 2 * time.Minute})
	assert.Equal(t, qemu.Fail, rep.Outcome)
	require.Len(t, rep.Results, 1)
	assert.Equal(t, "cmdline", rep.Results[0].Name)
	assert.False(t, rep.Results[0].OK)
	assert.Contains(t, strings.Join(rep.Tail, "\n"), `unknown option "bogus"`)
}

// The smp suite at each CPU count make test covers, up to the most the kernel drives (32, on
// a 2-core host under TCG: 16 vCPUs per host core). The 4-CPU run keeps the full 30 s of
// parallel allocation; the others use less to keep CI short.
func TestSMPSuiteInQEMU(t *testing.T) {
	for _, tc := range []struct{ cpus, gcSeconds int }{{1, 10}, {2, 10}, {4, 30}, {8, 10}, {16, 10}, {qemu.MaxSMP, 10}} {
		t.Run(strconv.Itoa(tc.cpus)+"cpus", func(t *testing.T) {
			appendWords := "suite=smp expect_cpus=" + strconv.Itoa(tc.cpus) + " gc_seconds=" + strconv.Itoa(tc.gcSeconds)
			if tc.cpus >= 16 {
				// 8 to 16 vCPUs per core of a 2-core host: each vCPU thread runs a fraction of
				// the time, and a CPU can wait over a second of guest time for klock behind the
				// others (seen once at 32 in CI, with its 50 ms starvation claim pending). The
				// watchdog's limit is guest time; here it allows for the overcommit.
				appendWords += " watchdog_ms=5000"
			}
			rep := boot(t, qemu.Config{SMP: tc.cpus, Timeout: 10 * time.Minute, Append: appendWords})
			require.Equal(t, qemu.Pass, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
			require.NoError(t, rep.KTAPError)
			require.Len(t, rep.Results, 1)
			s := rep.Results[0]
			require.Equal(t, "smp", s.Name)
			require.Len(t, s.Children, 11)
			for _, c := range s.Children {
				assert.True(t, c.OK, c.Name)
				if c.Directive != "" {
					assert.Equal(t, 1, tc.cpus, "%s skipped with %d CPUs: %s", c.Name, tc.cpus, c.Directive)
				}
			}
			on := s.Find("cpus_online")
			assert.Equal(t, float64(tc.cpus), diagFloat(t, on, "cpus_online"))
			assert.Equal(t, float64(tc.cpus), diagFloat(t, on, "numcpu"))
			assert.Equal(t, float64(tc.cpus), diagFloat(t, on, "gomaxprocs"))
			// Every CPU did goroutine work, in each case that counts it.
			for _, k := range [][2]string{{"work_on_every_cpu", "chunks_per_cpu"},
				{"munmap_tlb_shootdown", "rounds_per_cpu"}, {"gc_parallel_8", "alloc_rounds_per_cpu"}} {
				v, ok := s.Find(k[0]).Diag(k[1])
				require.True(t, ok, k[1])
				per := strings.Split(v, ",")
				assert.Len(t, per, tc.cpus, k[1])
				for i, n := range per {
					assert.NotEqual(t, "0", n, "%s: cpu %d", k[1], i)
				}
			}
			// The speed-up is reported, not asserted: under TCG on this machine's 2 host cores
			// one run's ratio swings too far (1.1 to 1.69 at 2 CPUs with nothing else running,
			// 0.56 to 1.67 at 8). That work spreads over the CPUs is asserted above, per CPU.
			// A cross-CPU futex wake arrives by IPI in tens of µs (33-82 µs measured); one that
			// waited for the target's timer would take a 10 ms slice.
			fw := s.Find("futex_wake_cross_cpu")
			assert.Less(t, diagFloat(t, fw, "wake_us_p50"), 2000.0, "wakes wait for a timer tick, not an IPI")
			if tc.cpus > 1 {
				assert.Positive(t, diagFloat(t, fw, "cross_cpu_rounds"))
				assert.Positive(t, diagFloat(t, s.Find("munmap_tlb_shootdown"), "shootdowns"))
			}
			gc := s.Find("gc_parallel_8")
			assert.GreaterOrEqual(t, diagFloat(t, gc, "gc_cycles"), 50.0)
			// gc_seconds at least; longer only while fewer than 50 cycles had run.
			assert.GreaterOrEqual(t, diagFloat(t, gc, "seconds"), float64(tc.gcSeconds))
		})
	}
}

// More CPUs than the kernel drives: the host refuses the request, and the kernel itself ends
// the boot with a fatal line when the firmware lists too many anyway (a second -smp wins).
func TestTooManyCPUs(t *testing.T) {
	err := qemu.Config{Kernel: "k", SMP: qemu.MaxSMP + 1}.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("%d CPUs requested", qemu.MaxSMP+1))

	rep := boot(t, qemu.Config{Extra: []string{"-smp", strconv.Itoa(qemu.MaxSMP + 1)}, Timeout: 2 * time.Minute})
	require.Equal(t, qemu.Fatal, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	assert.Contains(t, strings.Join(rep.Tail, "\n"),
		fmt.Sprintf("the MADT lists %d CPUs; this kernel drives at most %d", qemu.MaxSMP+1, qemu.MaxSMP))
}

// A CPU that never starts (ap_stuck sends it to a halting page) is reported within the
// start-up bound, not waited on.
func TestStuckCPUIsReported(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 4, Append: "ap_stuck=2", Timeout: 2 * time.Minute})
	require.Equal(t, qemu.Fatal, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	assert.Contains(t, strings.Join(rep.Tail, "\n"), "cpu 2 (APIC ID 2) did not come online within 2000 ms")
	assert.Less(t, rep.Total, 30*time.Second)
}
