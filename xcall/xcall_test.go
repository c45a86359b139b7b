package xcall

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The host tests play CPUs with goroutines, each with a P of its own (cpus sets GOMAXPROCS:
// a spinning goroutine sharing a P would wait for the runtime's 10 ms preemption at every
// call). No IPI is sent (no local APIC): a call runs only when its target drains, which is
// exactly the property under test.

var (
	ran      [MaxCPUs][MaxCPUs]atomic.Uint64 // ran[from][to]: calls of count that ran
	where    atomic.Int64                    // the CPU count's last run was told it runs on
	countFn  = Register(count)
	nestedFn = Register(nested)
	funcsSet sync.Once
)

// count records a call from arg>>8 to arg&0xff.
func count(arg uintptr) {
	ran[arg>>8][arg&0xff].Add(1)
	where.Store(int64(arg & 0xff))
}

// nested, run on CPU arg>>8, calls CPU arg&0xff in turn.
func nested(arg uintptr) {
	self, to := int(arg>>8), int(arg&0xff)
	Call(self, to, countFn, uintptr(self)<<8|uintptr(to))
}

func reset(t *testing.T, n int) {
	t.Helper()
	prev := runtime.GOMAXPROCS(n + 1)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	mail = [MaxCPUs][MaxCPUs]mailbox{}
	cpus = [MaxCPUs]cpuState{}
	ran = [MaxCPUs][MaxCPUs]atomic.Uint64{}
	SetNaive(false)
	SetDrop(0)
	for i := 0; i < n; i++ {
		SetOnline(i, uint32(i))
	}
}

// drainers starts a goroutine draining each of cpus again and again, as the CPU's own waits
// and IPIs would; stop ends them and returns when they have ended.
func drainers(cpus ...int) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, cpu := range cpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
					Drain(cpu)
				}
			}
		}()
	}
	return func() { close(done); wg.Wait() }
}

// allToAll runs n CPUs that each call every other one rounds times, and reports whether they
// all finished within limit.
func allToAll(n, rounds int, limit time.Duration) bool {
	var wg sync.WaitGroup
	var through atomic.Int32 // CPUs done with their rounds
	for self := 0; self < n; self++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				for to := 0; to < n; to++ {
					if to != self {
						Call(self, to, countFn, uintptr(self)<<8|uintptr(to))
					}
				}
			}
			// Serve the others until they are through too, as a CPU's idle loop would.
			through.Add(1)
			for through.Load() < int32(n) || !finished(n) {
				Drain(self)
			}
		}()
	}
	end := make(chan struct{})
	go func() { wg.Wait(); close(end) }()
	select {
	case <-end:
		return true
	case <-time.After(limit):
		return false
	}
}

// finished reports whether every posted call has run.
func finished(n int) bool {
	for from := 0; from < n; from++ {
		for to := 0; to < n; to++ {
			if p, d := Pair(from, to); p != d {
				return false
			}
		}
	}
	return true
}

// Every CPU calling every other at once, none taking IPIs: only draining lets the calls run.
// Each runs exactly once, and sent equals run for every pair.
func TestAllToAllCompletesByDraining(t *testing.T) {
	const n, rounds = 4, 200
	reset(t, n)
	require.True(t, allToAll(n, rounds, time.Minute), "all-to-all calls deadlocked")
	for from := 0; from < n; from++ {
		for to := 0; to < n; to++ {
			want := uint64(rounds)
			if from == to {
				want = 0
			}
			posted, done := Pair(from, to)
			assert.Equal(t, want, posted, "%d→%d posted", from, to)
			assert.Equal(t, want, done, "%d→%d done", from, to)
			assert.Equal(t, want, ran[from][to].Load(), "%d→%d ran", from, to)
		}
	}
}

// The witness: without draining, the same calls deadlock (here, until draining is turned back
// on, which lets them finish).
func TestNaiveAllToAllDeadlocks(t *testing.T) {
	const n = 3
	reset(t, n)
	SetNaive(true)
	var wg sync.WaitGroup
	var through atomic.Int32
	for self := 0; self < n; self++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			Call(self, (self+1)%n, countFn, uintptr(self)<<8|uintptr((self+1)%n))
			through.Add(1)
			for through.Load() < n { // go on serving the others, as a CPU would
				Drain(self)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("naive calls in a cycle completed: nothing showed that draining is needed")
	case <-time.After(300 * time.Millisecond):
	}
	SetNaive(false)
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("draining turned on did not end the deadlock")
	}
}

// A drain interrupted by another on the same CPU (a nested IPI, say) never runs a call twice.
func TestConcurrentDrainsRunEachCallOnce(t *testing.T) {
	reset(t, 2)
	const calls = 20000
	stop := drainers(1, 1, 1) // three drains of CPU 1 at once
	for i := 0; i < calls; i++ {
		require.Equal(t, OK, Call(0, 1, countFn, 0<<8|1))
	}
	stop()
	assert.Equal(t, uint64(calls), ran[0][1].Load())
	assert.Equal(t, uint64(calls), CPUStats(1).Ran)
}

// A called function may call a third CPU; the target runs on its own CPU number.
func TestNestedCall(t *testing.T) {
	reset(t, 3)
	stop := drainers(1, 2)
	require.Equal(t, OK, Call(0, 1, nestedFn, 1<<8|2))
	assert.Equal(t, uint64(1), ran[1][2].Load(), "CPU 1, inside the call from 0, called 2")
	assert.Equal(t, int64(2), where.Load())
	ran1, ran2 := CPUStats(1).Ran, CPUStats(2).Ran
	require.Equal(t, OK, Broadcast(0, 0b111, countFn, 0<<8|0))
	stop()
	assert.Equal(t, uint64(3), ran[0][0].Load(), "once on each CPU of the set, this one included")
	assert.Equal(t, ran1+1, CPUStats(1).Ran)
	assert.Equal(t, ran2+1, CPUStats(2).Ran)
}

// Lost IPIs cost resends, not calls: with every second IPI dropped and a target that drains
// only now and then, every call still runs once.
func TestDroppedIPIsAreResent(t *testing.T) {
	reset(t, 2)
	SetDrop(2)
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
				Drain(1)
			}
		}
	}()
	for i := 0; i < 20; i++ {
		require.Equal(t, OK, Call(0, 1, countFn, 0<<8|1))
	}
	close(stop)
	s := CPUStats(0)
	assert.Equal(t, uint64(20), ran[0][1].Load())
	assert.Positive(t, s.Dropped)
	assert.Positive(t, s.Resends, "waits longer than ResendAfter re-send")
	assert.Equal(t, uint64(10), s.Dropped, "the first IPI of every second call dropped")
	assert.GreaterOrEqual(t, s.Resends, s.Dropped, "each dropped call resent")
}

func TestRefusals(t *testing.T) {
	reset(t, 2)
	assert.Equal(t, ErrNoCPU, Call(0, 5, countFn, 0))
	assert.Equal(t, ErrNoCPU, Call(0, -1, countFn, 0))
	assert.Equal(t, ErrNoCPU, Call(0, MaxCPUs, countFn, 0))
	assert.Equal(t, ErrFunc, Call(0, 1, Func(maxFuncs), 0))
	assert.Equal(t, OK, Call(0, 0, countFn, 0<<8|0), "self: run at once")
	assert.Contains(t, ErrNMI.Error(), "NMI")
}
