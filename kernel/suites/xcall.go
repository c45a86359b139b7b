package suites

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
	"tracebed/trap"
	"tracebed/xcall"
)

// Xcall exercises cross-CPU calls (package xcall) where tracers need them: from goroutine
// code, with interrupts off, from a #BP handler, nested, at a CPU spinning for klock, and in
// the seeds' deadlock: CPUs with interrupts off all calling each other at once. Every case
// checks that each call ran exactly once, on its target. With xcall.mode=naive the storm
// deadlocks and the watchdog reports it (make test runs that mutation); with xcall.drop=N
// the run completes with resends.
var Xcall = ktest.Suite{Name: "xcall", Cases: []ktest.Case{
	{Name: "unicast_each_cpu", Run: xcUnicast},
	{Name: "broadcast_all_cpus", Run: xcBroadcast},
	{Name: "broadcast_with_interrupts_off", Run: xcInterruptsOff},
	{Name: "broadcast_from_bp_handler", Run: xcFromBP},
	{Name: "nested_call", Run: xcNested},
	{Name: "call_cpu_spinning_on_klock", Run: xcKlockSpinner},
	{Name: "refused_in_nmi", Run: xcInNMI},
	{Name: "tlb_shootdown_no_stale_reads", Run: xcNoStaleReads},
	{Name: "all_to_all_storm", Run: xcStorm},
}}

var (
	xcRanOn    [trap.MaxCPUs]atomic.Uint64 // calls of xcRecord run, by the CPU they ran on
	xcWrongCPU atomic.Uint64               // calls of xcRecord that ran elsewhere than arg
	xcLockWait atomic.Int32                // xcInLock: 1 ran in a lock wait, 2 did not
	xcPair     [trap.MaxCPUs][trap.MaxCPUs]atomic.Uint64

	xcRecord = xcall.Register(xcRecordFn)
	xcNest   = xcall.Register(xcNestFn)
	xcInLock = xcall.Register(xcInLockFn)
	xcCount  = xcall.Register(xcCountFn)
)

// xcRecordFn counts a call on the CPU it runs on, which must be arg. Trap context.
func xcRecordFn(arg uintptr) {
	cpu := kernel.CurrentCPU()
	xcRanOn[cpu].Add(1)
	if uintptr(cpu) != arg {
		xcWrongCPU.Add(1)
	}
}

// xcNestFn runs on CPU arg>>8 and calls CPU arg&0xff from there. Trap context.
func xcNestFn(arg uintptr) {
	if uintptr(kernel.CurrentCPU()) != arg>>8 {
		xcWrongCPU.Add(1)
	}
	if kernel.CrossCall(int(arg&0xff), xcRecord, arg&0xff) != xcall.OK {
		xcWrongCPU.Add(1)
	}
}

// xcInLockFn records whether it runs inside a kernel lock's wait. Trap context.
func xcInLockFn(uintptr) {
	if kernel.InLockWait() {
		xcLockWait.Store(1)
	} else {
		xcLockWait.Store(2)
	}
}

// xcCountFn counts the storm's call from arg>>8 to arg&0xff. Trap context.
func xcCountFn(arg uintptr) { xcPair[arg>>8][arg&0xff].Add(1) }

// ranSnapshot returns xcRanOn.
func ranSnapshot() (s [trap.MaxCPUs]uint64) {
	for i := range s {
		s[i] = xcRanOn[i].Load()
	}
	return s
}

// checkRan fails t unless, since before, xcRecord ran exactly want[i] times on each CPU i,
// each time on the CPU it was sent to.
func checkRan(t *ktest.T, before [trap.MaxCPUs]uint64, want []uint64) {
	after := ranSnapshot()
	for i, w := range want {
		if got := after[i] - before[i]; got != w {
			t.Errorf("cpu %d ran the call %d times, want %d", i, got, w)
		}
	}
	if n := xcWrongCPU.Load(); n != 0 {
		t.Errorf("%d calls ran on the wrong CPU", n)
	}
}

func allCPUs() uint64 { return 1<<kernel.OnlineCPUs() - 1 }

func ones(n int) []uint64 {
	w := make([]uint64, n)
	for i := range w {
		w[i] = 1
	}
	return w
}

// From goroutine code, one call to each CPU (the caller's own included) with its latency.
func xcUnicast(t *ktest.T) {
	n := kernel.OnlineCPUs()
	before := ranSnapshot()
	var worst int64
	for cpu := 0; cpu < n; cpu++ {
		t0 := kernel.Nanotime()
		if err := kernel.CrossCall(cpu, xcRecord, uintptr(cpu)); err != xcall.OK {
			t.Errorf("cpu %d: %v", cpu, err)
		}
		worst = max(worst, kernel.Nanotime()-t0)
	}
	checkRan(t, before, ones(n))
	t.Diag("slowest_call_us", worst/1000)
	if err := kernel.CrossCall(n, xcRecord, 0); err != xcall.ErrNoCPU {
		t.Errorf("a call to offline cpu %d: %v, want %v", n, err, xcall.ErrNoCPU)
	}
}

// One broadcast to every CPU, the caller's included: each runs it once.
func xcBroadcast(t *ktest.T) {
	before := ranSnapshot()
	// xcRecord checks its CPU against arg: a broadcast's arg is the same everywhere, so each
	// CPU is sent its own broadcast here, of one.
	for cpu := 0; cpu < kernel.OnlineCPUs(); cpu++ {
		if err := kernel.CrossBroadcast(1<<cpu, xcRecord, uintptr(cpu)); err != xcall.OK {
			t.Errorf("cpu %d: %v", cpu, err)
		}
	}
	t0 := kernel.Nanotime()
	if err := kernel.CrossBroadcast(allCPUs(), xcCount, 0); err != xcall.OK {
		t.Errorf("broadcast: %v", err)
	}
	t.Diag("broadcast_all_us", (kernel.Nanotime()-t0)/1000)
	checkRan(t, before, ones(kernel.OnlineCPUs()))
}

// Kernel-style callers: a pinned thread with interrupts off calls every other CPU.
func xcInterruptsOff(t *ktest.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	n := kernel.OnlineCPUs()
	for self := 0; self < n; self++ {
		if !kernel.PinCPU(self) {
			t.Errorf("cpu %d: cannot pin", self)
			continue
		}
		before := ranSnapshot()
		fl := amd64.DisableInterrupts()
		err := xcall.OK
		for cpu := 0; cpu < n && err == xcall.OK; cpu++ {
			if cpu != self {
				err = kernel.CrossCall(cpu, xcRecord, uintptr(cpu))
			}
		}
		amd64.RestoreInterrupts(fl)
		if err != xcall.OK {
			t.Errorf("from cpu %d: %v", self, err)
		}
		want := ones(n)
		want[self] = 0
		checkRan(t, before, want)
	}
}

// xcBP is what onXcallBP did: the error of its broadcast, and whether it ran at all.
var xcBP struct {
	armed atomic.Bool
	ran   atomic.Bool
	err   xcall.Error
	set   uint64
}

// onXcallBP broadcasts to every other CPU from inside the #BP handler. Trap context.
func onXcallBP(f *trap.Frame) bool {
	if !xcBP.armed.Load() || uintptr(f.RIP)-1 != sites[siteInt3] {
		return false
	}
	xcBP.err = kernel.CrossBroadcast(xcBP.set, xcRecordOwn, 0)
	xcBP.ran.Store(true)
	return true
}

var xcRecordOwn = xcall.Register(xcRecordOwnFn)

// xcRecordOwnFn counts a call on the CPU it runs on. Trap context.
func xcRecordOwnFn(uintptr) { xcRanOn[kernel.CurrentCPU()].Add(1) }

// An INT3 whose handler calls every other CPU: the calls complete inside the trap.
func xcFromBP(t *ktest.T) {
	trapSites(&sites)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	if !kernel.PinCPU(0) {
		t.Fatalf("cannot pin to cpu 0")
	}
	prev := trap.Register(idt.Breakpoint, onXcallBP)
	defer trap.Register(idt.Breakpoint, prev)
	before := ranSnapshot()
	xcBP.set = allCPUs() &^ 1
	xcBP.armed.Store(true)
	int3Site()
	xcBP.armed.Store(false)
	if !xcBP.ran.Load() {
		t.Fatalf("the #BP handler did not run")
	}
	if xcBP.err != xcall.OK {
		t.Errorf("broadcast from the #BP handler: %v", xcBP.err)
	}
	want := ones(kernel.OnlineCPUs())
	want[0] = 0
	checkRan(t, before, want)
}

// A called function calls a third CPU.
func xcNested(t *ktest.T) {
	n := kernel.OnlineCPUs()
	if n < 3 {
		t.Skip("needs 3 CPUs")
		return
	}
	before := ranSnapshot()
	if err := kernel.CrossCall(1, xcNest, 1<<8|2); err != xcall.OK {
		t.Errorf("%v", err)
	}
	want := make([]uint64, n)
	want[2] = 1
	checkRan(t, before, want)
}

// The holder of klock calls a CPU that is spinning for klock with interrupts off: that CPU
// runs the call from its lock wait (it cannot take the IPI).
func xcKlockSpinner(t *ktest.T) {
	if kernel.OnlineCPUs() < 2 {
		t.Skip("needs 2 CPUs")
		return
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	pinned := make(chan bool)
	wg.Add(1)
	go func() { // on cpu 1: system calls, each of which takes klock
		defer wg.Done()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer kernel.UnpinCPU()
		pinned <- kernel.PinCPU(1)
		for !stop.Load() {
			syscall.Getpid()
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	kernel.PinCPU(0)
	if !<-pinned {
		stop.Store(true)
		wg.Wait()
		t.Fatalf("cannot pin to cpu 1")
	}
	xcLockWait.Store(0)
	var err xcall.Error
	waited := false
	kernel.WithKlock(func() {
		t0 := kernel.Nanotime()
		for !kernel.LockWaiting(1) && kernel.Nanotime()-t0 < int64(time.Second) {
		}
		waited = kernel.LockWaiting(1)
		err = kernel.CrossCall(1, xcInLock, 0)
	})
	stop.Store(true)
	wg.Wait()
	switch {
	case !waited:
		t.Errorf("cpu 1 never spun on klock within 1 s")
	case err != xcall.OK:
		t.Errorf("%v", err)
	case xcLockWait.Load() != 1:
		t.Errorf("the call did not run from cpu 1's lock wait (state %d)", xcLockWait.Load())
	}
}

var xcNMI struct {
	armed atomic.Bool
	done  atomic.Bool
	err   xcall.Error
}

// onXcallNMI tries a cross-CPU call from the NMI handler. Trap context.
func onXcallNMI(f *trap.Frame) bool {
	if !xcNMI.armed.Load() || xcNMI.done.Load() {
		return false
	}
	xcNMI.err = kernel.CrossCall(0, xcRecordOwn, 0)
	xcNMI.done.Store(true)
	return true
}

// A call from NMI context is refused with an error, never made (it could wait on itself).
func xcInNMI(t *ktest.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	kernel.PinCPU(0)
	prev := trap.Register(idt.NMI, onXcallNMI)
	defer trap.Register(idt.NMI, prev)
	xcNMI.done.Store(false)
	xcNMI.armed.Store(true)
	kernel.SendTestIPI(kernel.IPINMI, 0)
	t0 := kernel.Nanotime()
	for !xcNMI.done.Load() && kernel.Nanotime()-t0 < int64(time.Second) {
	}
	xcNMI.armed.Store(false)
	if !xcNMI.done.Load() {
		t.Fatalf("the NMI handler did not run")
	}
	if xcNMI.err != xcall.ErrNMI {
		t.Errorf("a call from the NMI handler: %v, want %v", xcNMI.err, xcall.ErrNMI)
	}
}

// TLB shootdowns are cross-CPU calls: after munmap on CPU 0, a page every other CPU had just
// read (so its TLB holds the translation) must fault there, read fault-safe. A stale
// translation would read the freed frame instead.
func xcNoStaleReads(t *ktest.T) {
	const rounds = 50
	n := kernel.OnlineCPUs()
	if n < 2 {
		t.Skip("needs 2 CPUs")
		return
	}
	type probe struct {
		addr  uintptr
		fault chan bool // whether the read faulted
	}
	work := make([]chan probe, n)
	for cpu := 1; cpu < n; cpu++ {
		work[cpu] = make(chan probe)
	}
	workers := make(chan struct{})
	go func() {
		onCPUs(1, n, func(cpu int, pinned bool) {
			for p := range work[cpu] {
				_, f := trap.SafeLoad64(p.addr)
				p.fault <- f.Failed() || !pinned
			}
		})
		close(workers)
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	kernel.PinCPU(0)
	var stale, cached int
	reply := make(chan bool)
	for r := 0; r < rounds; r++ {
		m, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err != nil {
			t.Fatalf("mmap: %v", err)
		}
		m[0] = byte(r)
		addr := uintptr(unsafe.Pointer(&m[0]))
		for cpu := 1; cpu < n; cpu++ { // every other CPU caches the translation
			work[cpu] <- probe{addr, reply}
			if !<-reply {
				cached++
			}
		}
		if err := syscall.Munmap(m); err != nil {
			t.Fatalf("munmap: %v", err)
		}
		for cpu := 1; cpu < n; cpu++ {
			work[cpu] <- probe{addr, reply}
			if !<-reply {
				stale++
			}
		}
	}
	for cpu := 1; cpu < n; cpu++ {
		close(work[cpu])
	}
	<-workers
	t.Diag("reads_before_munmap", cached)
	t.Diag("stale_reads_after_munmap", stale)
	if cached != rounds*(n-1) {
		t.Errorf("%d of %d reads of a mapped page faulted", rounds*(n-1)-cached, rounds*(n-1))
	}
	if stale != 0 {
		t.Errorf("%d reads after munmap went through a stale translation", stale)
	}
}

// The seeds' deadlock: CPUs with interrupts off all call every CPU at once, round after round,
// for xcall_seconds. Each round runs in a #BP handler, as a tracer's probe would (an INT3 the
// sender executes again and again): trap context, interrupts off, no Go preemption point, so
// nothing but draining gets the others' calls run while a sender waits. With three CPUs or
// more, CPU 0 stays out of the senders (it is still called) so that one CPU keeps taking timer
// interrupts and the watchdog can report the deadlock of xcall.mode=naive.
func xcStorm(t *ktest.T) {
	secs, err := optionInt(t, "xcall_seconds", 10)
	if err != nil {
		t.Fatalf("%v", err)
	}
	n := kernel.OnlineCPUs()
	if n < 2 {
		t.Skip("needs 2 CPUs")
		return
	}
	first := 0
	if n >= 3 {
		first = 1
	}
	trapSites(&sites)
	storm = stormState{}
	for i := range xcPair {
		for j := range xcPair[i] {
			xcPair[i][j].Store(0)
		}
	}
	var before [trap.MaxCPUs]xcall.Stats
	for i := 0; i < n; i++ {
		before[i] = xcall.CPUStats(i)
	}
	storm.n = n
	prev := trap.Register(idt.Breakpoint, onStormBP)
	defer trap.Register(idt.Breakpoint, prev)
	deadline := kernel.Nanotime() + secs*int64(time.Second)
	errs := make([]error, n)
	onCPUs(first, n, func(self int, pinned bool) {
		if !pinned {
			errs[self] = fmt.Errorf("cannot pin to cpu %d", self)
			return
		}
		storm.armed[self].Store(true)
		for kernel.Nanotime() < deadline && storm.err[self].Load() == 0 {
			int3Site() // one round, in the #BP handler
		}
		storm.armed[self].Store(false)
	})
	var total uint64
	var all []int64
	for self := first; self < n; self++ {
		if errs[self] != nil {
			t.Errorf("cpu %d: %v", self, errs[self])
		}
		if e := xcall.Error(storm.err[self].Load()); e != xcall.OK {
			t.Errorf("cpu %d: %v", self, e)
		}
		all = append(all, storm.lat[self][:min(storm.nlat[self], len(storm.lat[self]))]...)
		for to := 0; to < n; to++ {
			ran := xcPair[self][to].Load()
			if ran != storm.sent[self][to] {
				t.Errorf("cpu %d → %d: %d calls returned, %d ran", self, to, storm.sent[self][to], ran)
			}
			total += ran
		}
	}
	var resends, dropped, drains uint64
	for i := 0; i < n; i++ {
		s := xcall.CPUStats(i)
		resends += s.Resends - before[i].Resends
		dropped += s.Dropped - before[i].Dropped
		drains += s.Drains - before[i].Drains
	}
	slices.Sort(all)
	t.Diag("senders", n-first)
	t.Diag("calls", total)
	t.Diag("calls_per_sec", total/uint64(secs))
	if len(all) > 0 {
		t.Diag("latency_p50_ns", all[len(all)/2])
		t.Diag("latency_p99_ns", all[len(all)*99/100])
		t.Diag("latency_max_ns", all[len(all)-1])
		us := make([]uint64, len(all))
		for i, ns := range all {
			us[i] = uint64(ns) / 1000
		}
		t.Diag("latency_us_log2_hist", log2Hist(us))
	}
	t.Diag("drains_that_ran_calls", drains)
	t.Diag("ipis_dropped", dropped)
	t.Diag("resends", resends)
	if total == 0 {
		t.Errorf("no call completed")
	}
}

// stormSamples bounds the latencies each sender keeps.
const stormSamples = 1 << 14

// stormState is the storm's per-sender record, written by each sender's #BP handler (trap
// context: plain values in fixed arrays).
type stormState struct {
	n     int
	armed [trap.MaxCPUs]atomic.Bool
	err   [trap.MaxCPUs]atomic.Uint32 // the first xcall.Error of a sender
	sent  [trap.MaxCPUs][trap.MaxCPUs]uint64
	nlat  [trap.MaxCPUs]int
	lat   [trap.MaxCPUs][stormSamples]int64
}

var storm stormState

// onStormBP runs one round of the storm: a call to every other CPU, each timed. Trap context.
func onStormBP(f *trap.Frame) bool {
	self := kernel.CurrentCPU()
	if !storm.armed[self].Load() || uintptr(f.RIP)-1 != sites[siteInt3] {
		return false
	}
	for to := 0; to < storm.n; to++ {
		if to == self {
			continue
		}
		t0 := kernel.Nanotime()
		if e := kernel.CrossCall(to, xcCount, uintptr(self<<8|to)); e != xcall.OK {
			storm.err[self].CompareAndSwap(0, uint32(e))
			return true
		}
		if i := storm.nlat[self]; i < stormSamples {
			storm.lat[self][i] = kernel.Nanotime() - t0
		}
		storm.nlat[self]++
		storm.sent[self][to]++
	}
	return true
}
