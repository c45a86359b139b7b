package suites

import (
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"tracebed/kernel"
	"tracebed/kernel/ktest"
)

// SMP proves every CPU is online and carries the runtime: IPIs of each kind reach their
// targets, goroutine work lands on every CPU, a parallel job speeds up, futex wakes cross CPUs
// promptly, TLB shootdowns keep munmap safe, and the GC survives allocation on all CPUs.
var SMP = ktest.Suite{Name: "smp", Cases: []ktest.Case{
	{Name: "cpus_online", Run: cpusOnline},
	{Name: "clock_monotonic_across_cpus", Run: clockMonotonicAcrossCPUs},
	{Name: "ipi_fixed_each_cpu", Run: ipiFixed},
	{Name: "ipi_self", Run: ipiSelf},
	{Name: "ipi_all_but_self", Run: ipiAllButSelf},
	{Name: "ipi_nmi_each_cpu", Run: ipiNMI},
	{Name: "work_on_every_cpu", Run: workOnEveryCPU},
	{Name: "parallel_speedup", Run: parallelSpeedup},
	{Name: "futex_wake_cross_cpu", Run: futexWakeLatency},
	{Name: "munmap_tlb_shootdown", Run: munmapShootdown},
	{Name: "gc_parallel_8", Run: gcParallel},
}}

// ipiTimeout bounds every wait for an IPI to show up in the target's counter.
const ipiTimeout = 2 * time.Second

func cpusOnline(t *ktest.T) {
	n := kernel.OnlineCPUs()
	t.Diag("cpus_online", n)
	t.Diag("cpus_in_madt", kernel.FoundCPUs())
	t.Diag("numcpu", runtime.NumCPU())
	t.Diag("gomaxprocs", runtime.GOMAXPROCS(0))
	var ids, starts []string
	for i := 0; i < n; i++ {
		s := kernel.CPUStat(i)
		ids = append(ids, fmt.Sprint(s.APICID))
		if i > 0 {
			starts = append(starts, fmt.Sprintf("%.1f", float64(s.StartNs)/1e6))
		}
	}
	t.Diag("apic_ids", strings.Join(ids, ","))
	if len(starts) > 0 {
		t.Diag("ap_start_ms", strings.Join(starts, ","))
	}
	if want, err := optionInt(t, "expect_cpus", 0); err != nil {
		t.Errorf("%v", err)
	} else if want != 0 && int64(n) != want {
		t.Errorf("%d CPUs online, %d requested", n, want)
	}
	if n != kernel.FoundCPUs() {
		t.Errorf("%d CPUs online, the MADT lists %d", n, kernel.FoundCPUs())
	}
	if runtime.NumCPU() != n || runtime.GOMAXPROCS(0) != n {
		t.Errorf("runtime.NumCPU()=%d GOMAXPROCS=%d, want %d", runtime.NumCPU(), runtime.GOMAXPROCS(0), n)
	}
}

// waitCounter polls get until it reaches want or the timeout passes; it returns how long that
// took, or false.
func waitCounter(get func() uint64, want uint64) (time.Duration, bool) {
	start := kernel.Nanotime()
	for get() < want {
		if time.Duration(kernel.Nanotime()-start) > ipiTimeout {
			return 0, false
		}
		runtime.Gosched()
	}
	return time.Duration(kernel.Nanotime() - start), true
}

func testIPIs(i int) func() uint64 { return func() uint64 { return kernel.CPUStat(i).TestIPIs } }
func nmis(i int) func() uint64     { return func() uint64 { return kernel.CPUStat(i).NMIs } }

// ipiEach sends rounds IPIs of kind to every CPU and checks each arrives; it prints the
// median and worst send-to-seen time per target.
func ipiEach(t *ktest.T, kind int, count func(int) func() uint64) {
	const rounds = 20
	n := kernel.OnlineCPUs()
	var all []time.Duration
	for to := 0; to < n; to++ {
		for r := 0; r < rounds; r++ {
			before := count(to)()
			if _, ok := kernel.SendTestIPI(kind, to); !ok {
				t.Fatalf("cpu %d: the local APIC did not accept the IPI", to)
			}
			d, ok := waitCounter(count(to), before+1)
			if !ok {
				t.Fatalf("cpu %d: IPI not received within %v (round %d)", to, ipiTimeout, r)
			}
			all = append(all, d)
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	t.Diag("ipis", len(all))
	t.Diag("targets", n)
	t.Diag("seen_us_p50", all[len(all)/2].Microseconds())
	t.Diag("seen_us_max", all[len(all)-1].Microseconds())
	us := make([]uint64, len(all))
	for i, d := range all {
		us[i] = uint64(d.Microseconds())
	}
	t.Diag("seen_us_log2_hist", log2Hist(us))
}

func ipiFixed(t *ktest.T) { ipiEach(t, kernel.IPIFixed, testIPIs) }
func ipiNMI(t *ktest.T)   { ipiEach(t, kernel.IPINMI, nmis) }

// testIPICounts snapshots every CPU's count of test IPIs received.
func testIPICounts() []uint64 {
	c := make([]uint64, kernel.OnlineCPUs())
	for i := range c {
		c[i] = kernel.CPUStat(i).TestIPIs
	}
	return c
}

func ipiSelf(t *ktest.T) {
	const rounds = 100
	n := kernel.OnlineCPUs()
	for r := 0; r < rounds; r++ {
		before := testIPICounts()
		from, ok := kernel.SendTestIPI(kernel.IPISelf, 0)
		if !ok {
			t.Fatalf("the local APIC did not accept a self IPI")
		}
		// The sender takes its own IPI as soon as interrupts come back on, before its thread
		// can move; nobody else may see it.
		if _, ok := waitCounter(testIPIs(from), before[from]+1); !ok {
			t.Fatalf("cpu %d never received its self IPI", from)
		}
		for i := 0; i < n; i++ {
			if got := kernel.CPUStat(i).TestIPIs; i != from && got != before[i] {
				t.Fatalf("cpu %d received cpu %d's self IPI", i, from)
			}
		}
	}
	t.Diag("self_ipis", rounds)
}

func ipiAllButSelf(t *ktest.T) {
	n := kernel.OnlineCPUs()
	if n < 2 {
		t.Skip("one CPU: nobody else to interrupt")
	}
	const rounds = 20
	for r := 0; r < rounds; r++ {
		before := testIPICounts()
		from, ok := kernel.SendTestIPI(kernel.IPIAllButSelf, 0)
		if !ok {
			t.Fatalf("the local APIC did not accept the broadcast")
		}
		for i := 0; i < n; i++ {
			if i == from {
				continue
			}
			if _, ok := waitCounter(testIPIs(i), before[i]+1); !ok {
				t.Fatalf("round %d: cpu %d missed the all-but-self IPI from cpu %d", r, i, from)
			}
		}
		// The sender must not have received it: allow a moment for a wrong delivery to land.
		time.Sleep(time.Millisecond)
		if got := kernel.CPUStat(from).TestIPIs; got != before[from] {
			t.Fatalf("round %d: sender cpu %d received its own all-but-self IPI", r, from)
		}
	}
	t.Diag("broadcasts", rounds)
}

// spin is CPU-bound work that the compiler cannot remove: an xorshift chain of n steps.
func spin(seed uint64, n int) uint64 {
	x := seed | 1
	for i := 0; i < n; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

// countPerCPU runs chunk in g goroutines, each repeating it for d and on until every CPU has
// run at least one chunk (at most coverLimit × d, so that a CPU the scheduler never uses still
// fails the case), and counts the chunks each CPU executed. With many vCPUs on few host
// threads a CPU can go unused for a fixed half second; requiring coverage makes the result
// depend on whether work spreads, not on how fast the host is. The time until every CPU had
// taken part is returned too.
//
// With cover false it stops at d (for more rounds of a run whose first round covered).
func countPerCPU(g int, d time.Duration, cover bool, chunk func(i int)) ([]uint64, time.Duration) {
	counts := make([]atomic.Uint64, kernel.OnlineCPUs())
	start := time.Now()
	var covered atomic.Int64 // ns after start when the last CPU first ran a chunk, 0 before
	allRan := func() bool {
		for i := range counts {
			if counts[i].Load() == 0 {
				return false
			}
		}
		return true
	}
	var wg sync.WaitGroup
	for w := 0; w < g; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				el := time.Since(start)
				if el >= coverLimit*d || el >= d && (!cover || covered.Load() != 0) {
					return
				}
				chunk(w)
				if counts[kernel.CurrentCPU()].Add(1) == 1 && allRan() {
					covered.CompareAndSwap(0, int64(time.Since(start)))
				}
			}
		}(w)
	}
	wg.Wait()
	out := make([]uint64, len(counts))
	for i := range counts {
		out[i] = counts[i].Load()
	}
	return out, time.Duration(covered.Load())
}

// coverLimit bounds how long countPerCPU and countPinned wait for every CPU to take part, in
// multiples of the case's own duration.
const coverLimit = 20

// countPinned runs chunk again and again on every CPU at once, one thread pinned to each (so
// that every CPU takes part however the scheduler would spread the work), for d and on until
// each has run it minChunks times (at most coverLimit × d), and returns how many chunks each
// CPU ran. A pinned thread can start late when many vCPUs share few host threads.
func countPinned(d time.Duration, minChunks uint64, chunk func()) []uint64 {
	counts := make([]uint64, kernel.OnlineCPUs())
	start := time.Now()
	onCPUs(0, len(counts), func(cpu int, pinned bool) {
		for pinned { // not pinned: none, and reportPerCPU fails the case
			el := time.Since(start)
			if el >= coverLimit*d || el >= d && counts[cpu] >= minChunks {
				return
			}
			chunk()
			counts[cpu]++
		}
	})
	return counts
}

// reportPerCPU prints the per-CPU counts and fails the case if a CPU did none of the work.
func reportPerCPU(t *ktest.T, key string, counts []uint64) {
	var s []string
	for i, c := range counts {
		s = append(s, fmt.Sprint(c))
		if c == 0 {
			t.Errorf("cpu %d executed no %s", i, key)
		}
	}
	t.Diag(key+"_per_cpu", strings.Join(s, ","))
}

func workOnEveryCPU(t *ktest.T) {
	n := kernel.OnlineCPUs()
	var sink atomic.Uint64
	counts, covered := countPerCPU(2*n, 500*time.Millisecond, true, func(i int) { sink.Add(spin(uint64(i), 20000)) })
	reportPerCPU(t, "chunks", counts)
	t.Diag("every_cpu_ran_after_ms", covered.Milliseconds())
	var ticks, switches []string
	for i := 0; i < n; i++ {
		s := kernel.CPUStat(i)
		ticks = append(ticks, fmt.Sprint(s.Ticks))
		switches = append(switches, fmt.Sprint(s.Switches))
	}
	t.Diag("timer_ticks_per_cpu", strings.Join(ticks, ","))
	t.Diag("thread_switches_per_cpu", strings.Join(switches, ","))
}

// parallelSpeedup runs one fixed CPU-bound job with GOMAXPROCS=1 and then with every CPU,
// checks both give the same answer, and prints the speed-up measured in this run.
func parallelSpeedup(t *ktest.T) {
	n := kernel.OnlineCPUs()
	const parts, steps = 64, 400_000
	job := func(procs int) (uint64, time.Duration) {
		prev := runtime.GOMAXPROCS(procs)
		defer runtime.GOMAXPROCS(prev)
		results := make([]uint64, parts)
		next := atomic.Int64{}
		start := time.Now()
		var wg sync.WaitGroup
		for w := 0; w < procs; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := next.Add(1) - 1; p < parts; p = next.Add(1) - 1 {
					results[p] = spin(uint64(p)*0x9e3779b97f4a7c15, steps)
				}
			}()
		}
		wg.Wait()
		var sum uint64
		for _, r := range results {
			sum ^= r
		}
		return sum, time.Since(start)
	}
	sum1, t1 := job(1)
	sumN, tN := job(n)
	t.Diag("cpus", n)
	t.Diag("work_steps", parts*steps)
	t.Diag("one_cpu_ms", t1.Milliseconds())
	t.Diag("all_cpus_ms", tN.Milliseconds())
	t.Diag("speedup", fmt.Sprintf("%.2f", float64(t1)/float64(tN)))
	if sum1 != sumN {
		t.Errorf("the job's result differs: %#x on 1 CPU, %#x on %d", sum1, sumN, n)
	}
}

const (
	futexWaitPrivate = 128 | 0
	futexWakePrivate = 128 | 1
)

// futexWakeLatency measures the time from FUTEX_WAKE on one thread to the return of the
// waiter's FUTEX_WAIT on another, with both threads locked to their goroutines. When the
// waiter's CPU has halted, the kernel's wake IPI is on that path.
func futexWakeLatency(t *ktest.T) {
	const rounds = 300
	var word uint32
	addr := uintptr(unsafe.Pointer(&word))
	type sample struct {
		lat        time.Duration
		cross      bool
		notBlocked bool
	}
	samples := make([]sample, 0, rounds)
	sent := make(chan int64)
	ready := make(chan int)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer close(done)
		for r := 0; r < rounds; r++ {
			atomic.StoreUint32(&word, 0)
			ready <- kernel.CurrentCPU()
			_, _, e := syscall.Syscall6(syscall.SYS_FUTEX, addr, futexWaitPrivate, 0, 0, 0, 0)
			now := kernel.Nanotime()
			waker := <-sent
			samples = append(samples, sample{
				lat:        time.Duration(now - waker),
				notBlocked: e == syscall.EAGAIN,
			})
		}
	}()
	runtime.LockOSThread()
	var crossRounds int
	for r := 0; r < rounds; r++ {
		waiterCPU := <-ready
		time.Sleep(300 * time.Microsecond) // let the waiter block and its CPU halt
		me := kernel.CurrentCPU()
		t0 := kernel.Nanotime()
		atomic.StoreUint32(&word, 1)
		syscall.Syscall6(syscall.SYS_FUTEX, addr, futexWakePrivate, 1, 0, 0, 0)
		sent <- t0
		if me != waiterCPU {
			crossRounds++
		}
	}
	runtime.UnlockOSThread()
	<-done
	var lat []time.Duration
	notBlocked := 0
	for _, s := range samples {
		if s.notBlocked {
			notBlocked++
			continue
		}
		lat = append(lat, s.lat)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Diag("rounds", rounds)
	t.Diag("cross_cpu_rounds", crossRounds)
	t.Diag("waiter_not_yet_blocked", notBlocked)
	if len(lat) < rounds/2 {
		t.Fatalf("only %d of %d waits blocked", len(lat), rounds)
	}
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Nanoseconds())/1000) }
	t.Diag("wake_us_p50", us(lat[len(lat)/2]))
	t.Diag("wake_us_p99", us(lat[len(lat)*99/100]))
	t.Diag("wake_us_max", us(lat[len(lat)-1]))
	latUs := make([]uint64, len(lat))
	for i, d := range lat {
		latUs[i] = uint64(d.Microseconds())
	}
	t.Diag("wake_us_log2_hist", log2Hist(latUs))
	var ipis uint64
	for i := 0; i < kernel.OnlineCPUs(); i++ {
		ipis += kernel.CPUStat(i).WakeIPIs
	}
	t.Diag("wake_ipis_received_total", ipis)
	if kernel.OnlineCPUs() > 1 && crossRounds == 0 {
		t.Errorf("no round had the waker and the waiter on different CPUs")
	}
}

// munmapShootdown maps, fills, checks and unmaps private regions on every CPU at once. Each
// munmap makes the other CPUs flush their TLBs and waits for all of them (a CPU that never
// acknowledged would hang the case, which the host's timeout reports), and its frames go
// straight to the next mmap on any CPU, whose pattern must then read back intact. (The xcall
// suite's tlb_shootdown_no_stale_reads proves the stale translations gone.)
func munmapShootdown(t *ktest.T) {
	n := kernel.OnlineCPUs()
	before := make([]kernel.CPUStats, n)
	for i := range before {
		before[i] = kernel.CPUStat(i)
	}
	const size = 64 << 10
	var rounds atomic.Int64
	var bad atomic.Int64
	var errs sync.Map
	counts, covered := countPerCPU(2*n, 2*time.Second, true, func(w int) {
		m, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE,
			syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err != nil {
			errs.Store(err.Error(), true)
			return
		}
		pat := byte(w*31 + int(rounds.Add(1)))
		for i := range m {
			m[i] = pat
		}
		runtime.Gosched() // let the goroutine move; other CPUs unmap meanwhile
		for i := 0; i < len(m); i += 512 {
			if m[i] != pat {
				bad.Add(1)
				break
			}
		}
		if err := syscall.Munmap(m); err != nil {
			errs.Store(err.Error(), true)
		}
	})
	reportPerCPU(t, "rounds", counts)
	t.Diag("every_cpu_ran_after_ms", covered.Milliseconds())
	var shoot, flush, skips, lazy, starved uint64
	for i := 0; i < n; i++ {
		s := kernel.CPUStat(i)
		shoot += s.Shootdowns - before[i].Shootdowns
		flush += s.TLBFlushes - before[i].TLBFlushes
		skips += s.TLBLazySkips - before[i].TLBLazySkips
		lazy += s.TLBLazyFlushes - before[i].TLBLazyFlushes
		starved += s.StarvedLocks - before[i].StarvedLocks
	}
	t.Diag("map_unmap_rounds", rounds.Load())
	t.Diag("shootdowns", shoot)
	t.Diag("tlb_flushes_for_others", flush)
	t.Diag("idle_cpus_skipped", skips)
	t.Diag("flushes_on_wake", lazy)
	t.Diag("starved_lock_claims", starved)
	t.Diag("corrupted_rounds", bad.Load())
	errs.Range(func(k, _ any) bool { t.Errorf("mmap/munmap: %v", k); return true })
	if bad.Load() != 0 {
		t.Errorf("%d rounds saw another CPU's writes in freshly mapped memory", bad.Load())
	}
	if n > 1 && shoot == 0 {
		t.Errorf("munmap on %d CPUs triggered no TLB shootdown", n)
	}
}

// gcParallel: 8 goroutines allocate and check short-lived buffers on every CPU for
// gc_seconds (default 30) of guest time, and on until the GC has run at least 50 times; the
// rate is reported, not asserted. The wait for the 50 cycles is bounded (gcWaitMin) only so
// that a GC that stopped running fails the case instead of hanging it.
// gcCyclesWanted is how many GC cycles gcParallel must see under parallel allocation.
const gcCyclesWanted = 50

// gcWaitMin is the least gcParallel waits for its 50 cycles (up to four times gc_seconds
// when that is longer). CI's 32-CPU boot (16 vCPUs per host core) ran 49 cycles in the 41 s
// that four times gc_seconds=10 allowed: a rate, not a GC that stopped; at 1.2 cycles per
// second the 50 take 42 s.
const gcWaitMin = 3 * time.Minute

func gcParallel(t *ktest.T) {
	secs, err := optionInt(t, "gc_seconds", 30)
	if err != nil {
		t.Fatalf("%v", err)
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var bad atomic.Int64
	type ring struct{ bufs [16][]byte }
	rings := make([]ring, 8)
	alloc := func(w int) {
		r := &rings[w]
		for k := range r.bufs {
			if b := r.bufs[k]; b != nil && (b[0] != byte(k) || b[len(b)-1] != byte(w)) {
				bad.Add(1)
			}
			b := make([]byte, 4<<10+k*1024)
			b[0], b[len(b)-1] = byte(k), byte(w)
			r.bufs[k] = b
		}
	}
	// gc_seconds at least, and on until 50 GC cycles have run: the GC's rate depends on the
	// host (TCG vCPUs share its cores), the 50 cycles do not.
	start := time.Now()
	counts, _ := countPerCPU(8, time.Duration(secs)*time.Second, true, alloc)
	limit := max(4*time.Duration(secs)*time.Second, gcWaitMin)
	for time.Since(start) < limit {
		runtime.ReadMemStats(&ms1)
		if ms1.NumGC-ms0.NumGC >= gcCyclesWanted {
			break
		}
		more, _ := countPerCPU(8, time.Second, false, alloc)
		for i, n := range more {
			counts[i] += n
		}
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&ms1)
	reportPerCPU(t, "alloc_rounds", counts)
	cycles := ms1.NumGC - ms0.NumGC
	t.Diag("goroutines", 8)
	t.Diag("seconds", fmt.Sprintf("%.1f", elapsed.Seconds()))
	t.Diag("gc_cycles", cycles)
	t.Diag("gc_cycles_per_sec", fmt.Sprintf("%.1f", float64(cycles)/elapsed.Seconds()))
	t.Diag("total_alloc_mib", (ms1.TotalAlloc-ms0.TotalAlloc)>>20)
	t.Diag("pause_total_ms", fmt.Sprintf("%.1f", float64(ms1.PauseTotalNs-ms0.PauseTotalNs)/1e6))
	t.Diag("max_heap_sys_mib", ms1.HeapSys>>20)
	if bad.Load() != 0 {
		t.Errorf("%d buffers changed under their owner", bad.Load())
	}
	if cycles < gcCyclesWanted {
		t.Errorf("%d GC cycles in %.1f s, want at least %d", cycles, elapsed.Seconds(), gcCyclesWanted)
	}
}

// clockMonotonicAcrossCPUs: goroutines on every CPU publish the clock readings they take; a
// reading taken after another CPU's published one must not be smaller. TSCs that were not in
// step across CPUs would make Go's monotonic time run backwards when a goroutine moves.
func clockMonotonicAcrossCPUs(t *ktest.T) {
	var last atomic.Int64
	var back, worst atomic.Int64
	counts := countPinned(500*time.Millisecond, 3, func() {
		for i := 0; i < 1000; i++ {
			prev := last.Load()
			now := kernel.Nanotime()
			if now < prev {
				back.Add(1)
				if d := prev - now; d > worst.Load() {
					worst.Store(d)
				}
			}
			for {
				cur := last.Load()
				if now <= cur || last.CompareAndSwap(cur, now) {
					break
				}
			}
		}
	})
	reportPerCPU(t, "readings_k", counts)
	t.Diag("backwards", back.Load())
	t.Diag("worst_backwards_ns", worst.Load())
	if back.Load() != 0 {
		t.Errorf("the clock went backwards %d times across CPUs (by up to %d ns)", back.Load(), worst.Load())
	}
}
