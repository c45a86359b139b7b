package kernel

import "tracebed/apic"

// Threads and scheduling.
//
// Protocol. Every Linux thread the Go runtime creates is a Thread whose registers at rest are
// a Frame. All scheduling state (threads, run queue, futex and sleep waits, file descriptors)
// is guarded by one lock, klock, held by kernel code from entry to exit; kernel code never
// sleeps holding it and runs with interrupts off, so it is a spinlock.
//
//   - A kernel entry that keeps its thread (most syscalls, most interrupts) edits f in place.
//   - A blocking syscall copies f into its Thread (state blocked, with a wait kind and an
//     optional deadline), then reschedule loads the next runnable Thread's Frame into f; the
//     common exit path resumes whatever f holds. Waking sets the sleeper's saved RAX to the
//     syscall's result and appends it to the run queue.
//   - With nothing runnable the CPU idles inside reschedule: it drops klock and executes
//     STI;HLT. Interrupts taken there see current == -1 and never switch; they only wake
//     threads, which the idle loop then picks up.
//   - Preemption: the LAPIC timer (one-shot, re-armed at every scheduling decision to the
//     nearer of the time-slice end and the earliest sleeper's deadline) moves a thread that has
//     used its slice to the tail of the queue when another thread is waiting.
//
// SMP. The run queue is one FIFO shared by all CPUs, under klock. Per-CPU queues with work
// stealing pay off with many threads and long holds; the Go runtime creates a handful of
// threads (about GOMAXPROCS plus a few) and does its own goroutine balancing across them, so
// one queue is simple, fair, never long, and lets any idle CPU take any thread at once. Each
// CPU has its own one-shot timer and time slice. A CPU with nothing to run marks itself idling
// and halts; wake() sends a wake IPI (vecWake) to one idling CPU, preferring the thread's last
// one, so a futex wake aimed at a thread whose CPU halts is served within an IPI's latency.
// Per-CPU data lives in CPU.
//
// Stacks: the idle loop runs on the kernel stack (only SYSCALL paths block or exit; an
// interrupt reschedules only through yield), so interrupts taken while idling build their
// frames below the idle loop's RSP (commonEntry), never over a frame at the stack's top.

// MaxThreads bounds the threads the runtime may create.
const MaxThreads = 256

// timeslice is how long a thread runs before another waiting thread gets the CPU.
const timeslice = 10_000_000 // ns

// noPreempt (nopreempt=1 on the command line) turns timer preemption off: a mutation switch
// under which the runtime suite's preempt_spinning_thread must fail (make test checks that).
var noPreempt bool

// Thread states.
const (
	thFree = iota
	thRunnable
	thRunning
	thBlocked
)

// What a blocked thread waits for.
const (
	waitNone = iota
	waitFutex
	waitSleep
	waitEpoll
)

// Interrupt vectors the kernel programs.
const (
	vecTimer    = 0x30
	vecWake     = 0x31 // IPI: look at the run queue
	vecFlush    = 0x32 // IPI: flush the TLB (tlbShootdown)
	vecTest     = 0x33 // IPI sent by tests; counted
	vecSpurious = 0xff
)

type Thread struct {
	frame      Frame
	state      uint32
	wait       uint32
	tid        int32
	next       int32 // run-queue link
	deadline   int64 // wake-up time for a timed wait (ns), 0 for none
	timeoutRet uint64
	futex      uint64
	epfd       int32
	cpu        int32 // the CPU it last ran on
	pin        int32 // the only CPU it may run on, -1 for any (PinCPU)
}

var (
	klock    spinlock
	threads  [MaxThreads]Thread
	nthreads int32       // threads[:nthreads] have ever been used
	nextTID  int32 = 100 // the first thread (the runtime's m0) gets 100
	rqHead   int32 = -1
	rqTail   int32 = -1
	rqLen    int32
	lapic    apic.LAPIC // Base set by kmain: package initialisers do not run in the kernel
	lapicHz  uint64
)

// Kernel context, klock held.
func enqueue(i int32) {
	threads[i].next = -1
	if rqTail < 0 {
		rqHead = i
	} else {
		threads[rqTail].next = i
	}
	rqTail = i
	rqLen++
}

// dequeue takes the first queued thread CPU c may run (one not pinned to another CPU).
//
// Kernel context, klock held.
func (c *CPU) dequeue() int32 {
	prev := int32(-1)
	for i := rqHead; i >= 0; prev, i = i, threads[i].next {
		if p := threads[i].pin; p >= 0 && p != int32(c.id) {
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
		return i
	}
	return -1
}

// newThread takes a free Thread slot and gives it a TID; -1 when none is left.
//
// Kernel context, klock held.
func newThread() int32 {
	for i := int32(0); i < MaxThreads; i++ {
		t := &threads[i]
		if t.state == thFree {
			*t = Thread{tid: nextTID, next: -1, epfd: -1, pin: -1}
			nextTID++
			if i >= nthreads {
				nthreads = i + 1
			}
			return i
		}
	}
	return -1
}

// wake makes blocked thread i runnable with syscall result ret, and kicks an idle CPU to run
// it.
//
// Kernel context, klock held.
func wake(i int32, ret uint64) {
	t := &threads[i]
	t.frame.RAX = ret
	t.state = thRunnable
	t.wait = waitNone
	t.deadline = 0
	enqueue(i)
	if t.pin >= 0 {
		kickIdle(t.pin)
	} else {
		kickIdle(t.cpu)
	}
}

// wakeExpired wakes every thread whose deadline has passed.
//
// Kernel context, klock held.
func wakeExpired(now int64) {
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state == thBlocked && t.deadline != 0 && t.deadline <= now {
			wake(i, t.timeoutRet)
		}
	}
}

// Kernel context, klock held.
func earliestDeadline() int64 {
	var d int64
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state == thBlocked && t.deadline != 0 && (d == 0 || t.deadline < d) {
			d = t.deadline
		}
	}
	return d
}

// armTimer programs this CPU's one-shot timer for its next scheduling event.
//
// Kernel context, klock held.
func (c *CPU) armTimer() {
	next := earliestDeadline()
	if c.current >= 0 && (next == 0 || c.sliceEnd < next) {
		next = c.sliceEnd
	}
	if next == 0 {
		lapic.OneShot(vecTimer, 0)
		return
	}
	delta := next - nanotime()
	if delta < 2000 {
		delta = 2000
	}
	timerIn(delta)
}

// timerIn arms this CPU's one-shot timer for about ns from now (at least one LAPIC tick, at
// most the 32-bit counter's range).
//
// Trap context allowed.
func timerIn(ns int64) {
	ticks := uint64(ns) * lapicHz / 1e9
	if ticks > 0xffffffff {
		ticks = 0xffffffff
	}
	if ticks == 0 {
		ticks = 1
	}
	lapic.OneShot(vecTimer, uint32(ticks))
}

// resume makes thread i this CPU's current thread and loads its registers into f.
//
// Kernel context, klock held.
func (c *CPU) resume(i int32, f *Frame) {
	t := &threads[i]
	t.state = thRunning
	t.cpu = int32(c.id)
	c.current = i
	c.sliceEnd = nanotime() + timeslice
	c.switches++
	*f = t.frame
}

// reschedule gives the CPU to the next runnable thread, idling until there is one. The
// current thread, if any, must already be saved. Called with klock held; returns with it held.
//
// Kernel context, klock held.
func (c *CPU) reschedule(f *Frame) {
	c.current = -1
	for {
		wakeExpired(nanotime())
		if i := c.dequeue(); i >= 0 {
			c.resume(i, f)
			c.armTimer()
			return
		}
		c.armTimer()
		c.idling = true
		klock.unlock()
		c.idles++
		c.idle()
		klock.lock()
		c.idling = false
		c.kicked = false
	}
}

// block saves the current thread as waiting for kind until woken or until deadline (then
// returning timeoutRet), and switches away.
//
// Kernel context, klock held.
func (c *CPU) block(f *Frame, kind uint32, deadline int64, timeoutRet uint64) {
	t := &threads[c.current]
	t.frame = *f
	t.state = thBlocked
	t.wait = kind
	t.deadline = deadline
	t.timeoutRet = timeoutRet
	c.reschedule(f)
}

// yield puts the current thread at the tail of the run queue if another is waiting, or if
// it is pinned to another CPU (it then moves there).
//
// Kernel context, klock held.
func (c *CPU) yield(f *Frame) {
	t := &threads[c.current]
	away := t.pin >= 0 && t.pin != int32(c.id)
	if rqLen == 0 && !away {
		return
	}
	t.frame = *f
	t.state = thRunnable
	enqueue(c.current)
	if away {
		kickIdle(t.pin)
	}
	c.reschedule(f)
}

// timerInterrupt wakes sleepers and preempts a thread whose slice is over. A timer taken
// inside a trap handler (through a trap gate) finds kernel code under it, not the thread, and
// never switches.
//
// Trap context (an interrupt gate: IF=0, never nested in itself); it takes klock, which is why
// vectors 32-255 must stay interrupt gates (idt.Config.Check).
func (c *CPU) timerInterrupt(f *Frame) {
	lapic.EOI()
	klock.lock()
	now := nanotime()
	wakeExpired(now)
	if c.current >= 0 && now >= c.sliceEnd && c.threadFrame(f) && !noPreempt {
		if rqLen > 0 {
			c.yield(f)
		} else {
			c.sliceEnd = now + timeslice
		}
	}
	c.armTimer()
	klock.unlock()
}
