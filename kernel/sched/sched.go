// Package sched holds the kernel's threads and its run queue: which threads exist, which are
// runnable and in what order, which wait and for what, and which CPU should be told that one
// became runnable. It is the scheduler's state and policy; package kernel is its mechanism
// (loading a thread's registers into a CPU, idling, the timer, the IPIs), and package linux
// blocks and wakes threads through it. Nothing here touches hardware, so it is tested on the
// host.
//
// Protocol. Every Linux thread the Go runtime creates is a Thread whose registers at rest are
// a trap.Frame. All of this state is guarded by the kernel's scheduling lock, klock, held by
// kernel code from entry to exit with interrupts off; every function here expects it held (or
// runs at boot, before a second CPU starts).
//
//   - Block saves the running thread's Frame, marks it blocked with a wait kind and an optional
//     deadline, and leaves it off the run queue; the kernel then loads another thread.
//   - Wake sets a blocked thread's saved RAX to its system call's result, queues it at the
//     tail, and records a kick for the CPU it should run on (its pinned CPU, else the one it
//     last ran on). The kernel sends the kicks (TakeKicks) before it releases klock: a wake
//     IPI to that CPU if it idles, else to another idling one, so a thread woken while CPUs
//     halt runs within an IPI's latency.
//   - WakeExpired wakes every thread whose deadline has passed with its timeout result.
//   - Dequeue(cpu) takes the first queued thread that CPU may run: a thread pinned to another
//     CPU stays queued, in order, for that one.
//
// The run queue is one FIFO shared by all CPUs. Per-CPU queues with work stealing pay off with
// many threads and long holds; the Go runtime creates a handful of threads (about GOMAXPROCS
// plus a few) and balances goroutines across them itself, so one queue is simple, fair, never
// long, and lets any idle CPU take any thread at once.
package sched

import "tracebed/trap"

// MaxThreads bounds the threads the runtime may create.
const MaxThreads = 256

// Thread states.
const (
	Free = iota
	Runnable
	Running
	Blocked
)

// What a blocked thread waits for.
const (
	WaitNone = iota
	WaitFutex
	WaitSleep
	WaitEpoll
)

// Thread is one thread of the hosted runtime.
type Thread struct {
	Frame      trap.Frame // its registers while it does not run
	State      uint32
	Wait       uint32 // while Blocked: what for
	TID        int32
	next       int32  // run-queue link
	Deadline   int64  // wake-up time of a timed wait (ns on the kernel's clock), 0 for none
	TimeoutRet uint64 // RAX when the deadline wakes it
	Futex      uint64 // WaitFutex: the futex word's address
	Epfd       int32  // WaitEpoll: the epoll fd
	CPU        int32  // the CPU it last ran on
	Pin        int32  // the only CPU it may run on, -1 for any
}

// FirstTID is the first thread's TID (the runtime's m0); Linux makes it the process ID too.
const FirstTID = 100

var (
	threads  [MaxThreads]Thread
	nthreads int32 // threads[:nthreads] have ever been used
	nextTID  int32 = FirstTID
	rqHead   int32 = -1
	rqTail   int32 = -1
	rqLen    int32
	kicks    struct {
		cpu [trap.MaxCPUs]int32 // the CPU each kick prefers, -1 for any
		n   int
	}
)

// Reset forgets every thread and queued kick: the state of a fresh boot (for tests).
func Reset() {
	threads = [MaxThreads]Thread{}
	nthreads, nextTID = 0, FirstTID
	rqHead, rqTail, rqLen = -1, -1, 0
	kicks.n = 0
}

// T returns thread i (an index New returned).
//
// Kernel context, klock held. (Trap context allowed for reading a field that never changes
// while the thread runs, such as its TID.)
func T(i int32) *Thread { return &threads[i] }

// Count is the number of thread slots ever used: every thread has an index below it.
//
// Kernel context, klock held.
func Count() int32 { return nthreads }

// Queued is the number of threads on the run queue.
//
// Kernel context, klock held.
func Queued() int32 { return rqLen }

// New takes a free Thread slot, gives it the next TID and returns its index; -1 when none is
// left. The thread is Runnable: the caller fills its Frame and enqueues or runs it.
//
// Kernel context, klock held.
func New() int32 {
	for i := int32(0); i < MaxThreads; i++ {
		t := &threads[i]
		if t.State == Free {
			*t = Thread{State: Runnable, TID: nextTID, next: -1, Epfd: -1, Pin: -1}
			nextTID++
			if i >= nthreads {
				nthreads = i + 1
			}
			return i
		}
	}
	return -1
}

// Enqueue marks thread i runnable and appends it to the run queue.
//
// Kernel context, klock held.
func Enqueue(i int32) {
	threads[i].State = Runnable
	threads[i].next = -1
	if rqTail < 0 {
		rqHead = i
	} else {
		threads[rqTail].next = i
	}
	rqTail = i
	rqLen++
}

// Dequeue takes the first queued thread cpu may run (one not pinned to another CPU); -1 when
// there is none.
//
// Kernel context, klock held.
func Dequeue(cpu int) int32 {
	prev := int32(-1)
	for i := rqHead; i >= 0; prev, i = i, threads[i].next {
		if p := threads[i].Pin; p >= 0 && p != int32(cpu) {
			continue
		}
		if prev < 0 {
			rqHead = threads[i].next
		} else {
			threads[prev].next = threads[i].next
		}
		if rqTail == i {
			rqTail = prev
		}
		rqLen--
		threads[i].next = -1
		return i
	}
	return -1
}

// Block saves f as thread i's registers and marks it blocked for kind until woken or, when
// deadline is not 0, until then (it then resumes with RAX = timeoutRet). The caller loads
// another thread.
//
// Kernel context, klock held.
func Block(i int32, f *trap.Frame, kind uint32, deadline int64, timeoutRet uint64) {
	t := &threads[i]
	t.Frame = *f
	t.State = Blocked
	t.Wait = kind
	t.Deadline = deadline
	t.TimeoutRet = timeoutRet
}

// Wake makes blocked thread i runnable with system-call result ret and records a kick for the
// CPU it should run on.
//
// Kernel context, klock held.
func Wake(i int32, ret uint64) {
	t := &threads[i]
	t.Frame.RAX = ret
	t.Wait = WaitNone
	t.Deadline = 0
	Enqueue(i)
	if t.Pin >= 0 {
		Kick(t.Pin)
	} else {
		Kick(t.CPU)
	}
}

// Kick records that an idling CPU should look at the run queue, cpu if it idles, else any
// (cpu -1: any). Kicks beyond one per CPU are dropped: each one the kernel sends wakes the
// preferred CPU or another idling one, so as many as there are CPUs already wake them all.
//
// Kernel context, klock held.
func Kick(cpu int32) {
	if kicks.n < len(kicks.cpu) {
		kicks.cpu[kicks.n] = cpu
		kicks.n++
	}
}

// TakeKicks returns the kicks recorded since the last call, oldest first, and forgets them.
// The slice is valid until the next Kick.
//
// Kernel context, klock held.
func TakeKicks() []int32 {
	n := kicks.n
	kicks.n = 0
	return kicks.cpu[:n]
}

// WakeExpired wakes every blocked thread whose deadline is not after now.
//
// Kernel context, klock held.
func WakeExpired(now int64) {
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.State == Blocked && t.Deadline != 0 && t.Deadline <= now {
			Wake(i, t.TimeoutRet)
		}
	}
}

// EarliestDeadline is the nearest deadline of a blocked thread, 0 for none.
//
// Kernel context, klock held.
func EarliestDeadline() int64 {
	var d int64
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.State == Blocked && t.Deadline != 0 && (d == 0 || t.Deadline < d) {
			d = t.Deadline
		}
	}
	return d
}
