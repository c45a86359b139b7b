// Package suites holds the in-kernel KTAP suites. Each runs as ordinary Go code on the runtime
// the kernel hosts, so a pass means the kernel's system calls, threads, timers and memory
// management carried the runtime through it.
package suites

import (
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tracebed/amd64"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
)

// Runtime is the suite that proves the Go runtime works on the kernel.
var Runtime = ktest.Suite{Name: "runtime", Cases: []ktest.Case{
	{"goroutines_10000", goroutines},
	{"channels_select_timers", channels},
	{"sleep_accuracy", sleeps},
	{"maps", maps},
	{"fmt", formatting},
	{"panic_recover", panicRecover},
	{"gc_stress", gcStress},
	{"mutex_contention_8", mutexContention},
	{"preempt_spinning_thread", preemptSpinner},
	{"efault_bad_user_pointers", efaultCases},
}}

func goroutines(t *ktest.T) {
	const n = 10000
	var wg sync.WaitGroup
	var sum atomic.Int64
	start := time.Now()
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			runtime.Gosched()
			sum.Add(int64(i))
		}(i)
	}
	wg.Wait()
	t.Diag("spawned", n)
	t.Diag("spawn_join_ms", time.Since(start).Milliseconds())
	t.Diag("gomaxprocs", runtime.GOMAXPROCS(0))
	t.Diag("numcpu", runtime.NumCPU())
	if want := int64(n * (n + 1) / 2); sum.Load() != want {
		t.Errorf("sum of goroutine indices %d, want %d", sum.Load(), want)
	}
}

func channels(t *ktest.T) {
	// A pipeline: producer -> squarer -> collector, unbuffered and buffered channels.
	src := make(chan int)
	sq := make(chan int, 16)
	go func() {
		for i := 0; i < 1000; i++ {
			src <- i
		}
		close(src)
	}()
	go func() {
		for v := range src {
			sq <- v * v
		}
		close(sq)
	}()
	total := 0
	for v := range sq {
		total += v
	}
	if want := 332833500; total != want {
		t.Errorf("pipeline sum %d, want %d", total, want)
	}

	// select: a value that arrives before the timeout wins; a value that never comes loses
	// to time.After.
	ready := make(chan string, 1)
	go func() { time.Sleep(5 * time.Millisecond); ready <- "value" }()
	select {
	case v := <-ready:
		if v != "value" {
			t.Errorf("select got %q", v)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("select: the value never arrived")
	}
	never := make(chan int)
	start := time.Now()
	select {
	case <-never:
		t.Errorf("select received from a channel nobody sends on")
	case <-time.After(20 * time.Millisecond):
	}
	waited := time.Since(start)
	t.Diag("select_timeout_asked_ms", 20)
	t.Diag("select_timeout_measured_ms", fmt.Sprintf("%.2f", float64(waited.Microseconds())/1000))
	if waited < 20*time.Millisecond {
		t.Errorf("time.After(20ms) fired after %v", waited)
	}

	// A ticker delivers; each value lies between the ticker's start and its receipt; a stopped
	// timer does not fire. Tick values are not asserted to increase: the runtime stamps a
	// tick with the time it ran the timer less how late that was, measured against a clock
	// reading taken earlier in the same pass, so a thread descheduled in between (a vCPU
	// the host preempted) stamps a later value than the next tick's. Such regressions are
	// counted instead.
	tickStart := time.Now()
	tk := time.NewTicker(2 * time.Millisecond)
	var last time.Time
	regressions := 0
	for i := 0; i < 10; i++ {
		v := <-tk.C
		got := time.Now()
		if v.Before(tickStart) || v.After(got) {
			t.Errorf("tick %d stamped %v, outside [%v, %v]", i, v, tickStart, got)
		}
		if !v.After(last) {
			regressions++
		}
		last = v
	}
	t.Diag("ticks", 10)
	t.Diag("tick_value_regressions", regressions)
	tk.Stop()
	tm := time.NewTimer(time.Hour)
	if !tm.Stop() {
		t.Errorf("stopping an hour-long timer reported it had fired")
	}
}

func sleeps(t *ktest.T) {
	for _, d := range []time.Duration{time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond} {
		start := time.Now()
		time.Sleep(d)
		got := time.Since(start)
		ms := d.Milliseconds()
		t.Diag(fmt.Sprintf("sleep_%dms_measured_ms", ms), fmt.Sprintf("%.3f", float64(got.Microseconds())/1000))
		if got < d {
			t.Errorf("time.Sleep(%v) returned after %v", d, got)
		}
		if got > d+2*time.Second {
			t.Errorf("time.Sleep(%v) took %v", d, got)
		}
	}
}

func maps(t *ktest.T) {
	r := rand.New(rand.NewSource(t.Seed))
	m := map[int]int{}
	ref := make([]int, 0, 100000)
	for i := 0; i < 100000; i++ {
		k := r.Int()
		m[k] = i
		ref = append(ref, k)
	}
	for i, k := range ref {
		if m[k] != i && ref[m[k]] != k {
			t.Fatalf("m[%d] = %d, want %d", k, m[k], i)
		}
	}
	for _, k := range ref[:50000] {
		delete(m, k)
	}
	if len(m) > 50000 {
		t.Errorf("len after deleting half: %d", len(m))
	}
	words := map[string]int{}
	for _, w := range strings.Fields("the quick brown fox jumps over the lazy dog the end") {
		words[w]++
	}
	if words["the"] != 3 || len(words) != 9 {
		t.Errorf("word count map %v", words)
	}
	t.Diag("entries", 100000)
}

func formatting(t *ktest.T) {
	type pt struct {
		X, Y int
		Tag  string
	}
	cases := []struct{ got, want string }{
		{fmt.Sprintf("%d %x %o %b", 255, 255, 8, 5), "255 ff 10 101"},
		{fmt.Sprintf("%08.3f|%-6s|%6s", 3.14159, "ab", "cd"), "0003.142|ab    |    cd"},
		{fmt.Sprintf("%v %+v", pt{1, 2, "a"}, pt{3, 4, "b"}), "{1 2 a} {X:3 Y:4 Tag:b}"},
		{fmt.Sprintf("%q %v", "tab\t", []byte("hi")), `"tab\t" [104 105]`},
		{fmt.Sprintf("%e %g", 1234.5678, 1e21), "1.234568e+03 1e+21"},
		{fmt.Sprint(errors.New("boom"), map[string]int{"b": 2, "a": 1}), "boom map[a:1 b:2]"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func panicRecover(t *ktest.T) {
	catch := func(f func()) (r any) {
		defer func() { r = recover() }()
		f()
		return nil
	}
	if r := catch(func() { panic("deliberate") }); r != "deliberate" {
		t.Errorf("recovered %v, want deliberate", r)
	}
	var s []int
	i := 3
	r := catch(func() { _ = s[i] })
	if err, ok := r.(runtime.Error); !ok || !strings.Contains(err.Error(), "index out of range") {
		t.Errorf("index panic recovered as %v", r)
	}
	var m map[string]int
	if r := catch(func() { m["x"] = 1 }); r == nil {
		t.Errorf("write to nil map did not panic")
	}
	// Deferred calls run in LIFO order during a panic.
	var order []int
	catch(func() {
		defer func() { order = append(order, 1) }()
		defer func() { order = append(order, 2) }()
		panic("unwind")
	})
	if fmt.Sprint(order) != "[2 1]" {
		t.Errorf("defer order %v", order)
	}
}

func gcStress(t *ktest.T) {
	mib, err := optionInt(t, "gc_mib", 1024)
	if err != nil {
		t.Fatalf("%v", err)
	}
	const chunk = 64 << 10
	const keep = 64 // live set: keep * chunk = 4 MiB
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	ring := make([][]byte, keep)
	var maxHeap uint64
	var ms runtime.MemStats
	start := time.Now()
	n := mib << 20 / chunk
	for i := int64(0); i < n; i++ {
		b := make([]byte, chunk)
		b[0], b[chunk-1] = byte(i), byte(i>>8)
		ring[i%keep] = b
		if i%1024 == 0 {
			runtime.ReadMemStats(&ms)
			maxHeap = max(maxHeap, ms.HeapAlloc)
		}
	}
	for i, b := range ring {
		if int64(i) >= n {
			break // gc_mib below the live set: fewer chunks than slots
		}
		// Slot i holds the last chunk j < n with j%keep == i.
		j := int64(i) + (n-1-int64(i))/keep*keep
		if b[0] != byte(j) || b[chunk-1] != byte(j>>8) {
			t.Errorf("live chunk %d corrupted", i)
		}
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	cycles := after.NumGC - before.NumGC
	total := after.TotalAlloc - before.TotalAlloc
	t.Diag("total_alloc_mib", total>>20)
	t.Diag("gc_cycles", cycles)
	t.Diag("max_heap_alloc_mib", fmt.Sprintf("%.1f", float64(maxHeap)/(1<<20)))
	t.Diag("heap_sys_mib", after.HeapSys>>20)
	t.Diag("sys_mib", after.Sys>>20)
	t.Diag("pause_total_ms", fmt.Sprintf("%.2f", float64(after.PauseTotalNs-before.PauseTotalNs)/1e6))
	t.Diag("alloc_mib_per_s", fmt.Sprintf("%.0f", float64(total>>20)/elapsed.Seconds()))
	if total < uint64(mib)<<20 {
		t.Errorf("allocated %d MiB, want >= %d", total>>20, mib)
	}
	if mib >= 1024 && cycles < 20 {
		t.Errorf("%d GC cycles, want >= 20", cycles)
	}
	if maxHeap > 256<<20 {
		t.Errorf("heap grew to %d MiB with a 4 MiB live set", maxHeap>>20)
	}
	runtime.KeepAlive(ring)
}

func mutexContention(t *ktest.T) {
	const workers, iters = 8, 20000
	var mu sync.Mutex
	counter := 0
	shared := map[int]int{}
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < iters; i++ {
				mu.Lock()
				counter++
				shared[i%64]++
				mu.Unlock()
				if i%500 == 0 {
					runtime.Gosched()
				}
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	sum := 0
	keys := make([]int, 0, len(shared))
	for k, v := range shared {
		sum += v
		keys = append(keys, k)
	}
	sort.Ints(keys)
	t.Diag("lock_ops", workers*iters)
	t.Diag("lock_ops_per_s", fmt.Sprintf("%.0f", float64(workers*iters)/elapsed.Seconds()))
	if counter != workers*iters || sum != workers*iters || len(keys) != 64 {
		t.Errorf("counter %d, map sum %d over %d keys; want %d over 64", counter, sum, len(keys), workers*iters)
	}
}

// optionInt reads an integer kernel parameter for a case.
func optionInt(t *ktest.T, key string, def int64) (int64, error) {
	return ktest.Options{Params: t.Params}.IntParam(key, def)
}

// preemptSpinner proves timer preemption: as many threads as CPUs spin with no system call and
// no Go preemption point (nothing but a NOSPLIT RDTSC), for spinFor of guest time, while a
// goroutine on one more P sleeps 2 ms at a time. Only the kernel's timer can give that sleeper
// a CPU while they spin; it must wake several times before they stop. With nopreempt=1 it
// wakes only after they stop, and this case fails (make test runs that mutation).
func preemptSpinner(t *ktest.T) {
	const spinFor = 400 * time.Millisecond
	cpus := kernel.OnlineCPUs()
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(cpus + 1)
	defer runtime.GOMAXPROCS(procs)
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	// TSC ticks per ns, measured over a sleep, so the spinners need no clock call.
	t0, n0 := amd64.RDTSC(), kernel.Nanotime()
	time.Sleep(20 * time.Millisecond)
	perNs := float64(amd64.RDTSC()-t0) / float64(kernel.Nanotime()-n0)
	var running, started atomic.Int32
	var spins atomic.Int64
	var wg sync.WaitGroup
	ready := make(chan struct{})
	for i := 0; i < cpus; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread() // one thread each, so every CPU gets one
			defer runtime.UnlockOSThread()
			running.Add(1)
			if started.Add(1) == int32(cpus) {
				close(ready)
			}
			end := amd64.RDTSC() + uint64(perNs*float64(spinFor))
			n := int64(0)
			for amd64.RDTSC() < end {
				n++
			}
			spins.Add(n)
			running.Add(-1)
		}()
	}
	<-ready
	before := kernel.ContextSwitches()
	wakesWhileSpinning, wakes := 0, 0
	start := time.Now()
	for running.Load() > 0 && time.Since(start) < 10*spinFor {
		time.Sleep(2 * time.Millisecond)
		wakes++
		if running.Load() == int32(cpus) {
			wakesWhileSpinning++ // every spinner still spinning, and yet this goroutine ran
		}
	}
	wg.Wait()
	t.Diag("spinners", cpus)
	t.Diag("wakeups", wakes)
	t.Diag("wakeups_while_all_spinning", wakesWhileSpinning)
	t.Diag("spin_iterations", spins.Load())
	t.Diag("context_switches", kernel.ContextSwitches()-before)
	if wakesWhileSpinning < 3 {
		t.Errorf("the sleeper woke %d times while %d threads spun on %d CPUs for %v: no preemption", wakesWhileSpinning, cpus, cpus, spinFor)
	}
}
