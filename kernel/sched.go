package kernel

import (
	"tracebed/apic"
	"tracebed/kernel/sched"
)

// Scheduling: the mechanism. Package sched holds the threads, the run queue and the rules of
// blocking and waking; this file loads threads into CPUs, idles, preempts and arms the timer.
//
// Protocol. All scheduling state (package sched's threads and run queue, package linux's
// futex waits and file descriptors) is guarded by one lock, klock, held by kernel code from
// entry to exit; kernel code never sleeps holding it and runs with interrupts off, so it is a
// spinlock. The address space has a lock of its own, vmLock (syscall.go), which the
// address-space calls take instead; no code holds both.
//
//   - A kernel entry that keeps its thread (most syscalls, most interrupts) edits f in place.
//   - A blocking syscall saves f in its Thread (sched.Block), then reschedule loads the next
//     runnable Thread's Frame into f; the common exit path resumes whatever f holds. Waking
//     (sched.Wake) sets the sleeper's saved RAX to the syscall's result and queues it; the
//     kicks it recorded become wake IPIs (kickIdleCPUs), sent once klock is released
//     (unlockKlock), as is the timer's new deadline: no LAPIC write is made under klock.
//   - With nothing runnable the CPU idles inside reschedule: it drops klock and executes
//     STI;HLT. Interrupts taken there see current == -1 and never switch; they only wake
//     threads, which the idle loop then picks up.
//   - Preemption: the LAPIC timer (one-shot, re-armed at every scheduling decision to the
//     nearer of the time-slice end and the earliest sleeper's deadline) moves a thread that has
//     used its slice to the tail of the queue when another thread is waiting.
//
// SMP. The run queue is one FIFO shared by all CPUs (package sched says why). Each CPU has its
// own one-shot timer and time slice. A CPU with nothing to run marks itself idling and halts; a
// kick sends a wake IPI (vecWake) to one idling CPU, preferring the thread's last one, so a
// futex wake aimed at a thread whose CPU halts is served within an IPI's latency. Per-CPU data
// lives in CPU.
//
// Stacks: the idle loop runs on the kernel stack (only SYSCALL paths block or exit; an
// interrupt reschedules only through yield), so interrupts taken while idling build their
// frames below the idle loop's RSP (commonEntry), never over a frame at the stack's top.

// timeslice is how long a thread runs before another waiting thread gets the CPU.
const timeslice = 10_000_000 // ns

// noPreempt (nopreempt=1 on the command line) turns timer preemption off: a mutation switch
// under which the runtime suite's preempt_spinning_thread must fail (make test checks that).
var noPreempt bool

// Interrupt vectors the kernel programs.
const (
	vecTimer    = 0x30
	vecWake     = 0x31 // IPI: look at the run queue
	vecTest     = 0x33 // IPI sent by tests; counted
	vecXcall    = 0x34 // IPI: run the cross-CPU calls posted to this CPU (package xcall)
	vecSpurious = 0xff
)

var (
	klock   spinlock
	lapic   apic.LAPIC // Base set by kmain: package initialisers do not run in the kernel
	lapicHz uint64
)

// armTimer chooses this CPU's one-shot timer's next scheduling event; unlockKlock programs it.
//
// Kernel context, klock held.
func (c *CPU) armTimer() {
	next := sched.EarliestDeadline()
	if c.current >= 0 && (next == 0 || c.sliceEnd < next) {
		next = c.sliceEnd
	}
	now := nanotime()
	if watchdog.limitNs != 0 && (next == 0 || next > now+watchdogTick) {
		next = now + watchdogTick // the watchdog's measure of progress
	}
	c.timerSet = true
	if next == 0 {
		c.timerDelta = 0
		return
	}
	c.timerDelta = next - now
	if c.timerDelta < 2000 {
		c.timerDelta = 2000
	}
}

// unlockKlock releases klock, then makes the LAPIC writes decided under it: the timer armTimer
// chose and the wake IPIs of kick. A wake IPI sent late finds its CPU halted or about to halt
// (the IPI stays pending while IF=0, so the halt ends at once); a stale one is harmless.
//
// Kernel context, klock held.
func (c *CPU) unlockKlock() {
	klock.unlock()
	if c.timerSet {
		c.timerSet = false
		if c.timerDelta == 0 {
			lapic.OneShot(vecTimer, 0)
		} else {
			timerIn(c.timerDelta)
		}
	}
	for i := 0; i < c.nkicks; i++ {
		lapic.IPI(c.kickAPIC[i], vecWake)
	}
	c.nkicks = 0
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
	t := sched.T(i)
	t.State = sched.Running
	t.CPU = int32(c.id)
	c.current = i
	c.currentSeq.Add(1)
	c.sliceEnd = nanotime() + timeslice
	c.switches++
	*f = t.Frame
}

// reschedule gives the CPU to the next runnable thread, idling until there is one. The
// current thread, if any, must already be saved. Called with klock held; returns with it held.
//
// Kernel context, klock held.
func (c *CPU) reschedule(f *Frame) {
	c.current = -1
	c.currentSeq.Add(1)
	for {
		sched.WakeExpired(nanotime())
		if i := sched.Dequeue(c.id); i >= 0 {
			c.resume(i, f)
			c.armTimer()
			return
		}
		c.armTimer()
		kickIdleCPUs() // a yield's or an expired deadline's kick, before this CPU halts
		c.idling = true
		c.unlockKlock()
		c.idles++
		c.enterLazyTLB()
		c.idle()
		c.leaveLazyTLB()
		klock.lock()
		c.idling = false
		c.kicked = false
	}
}

// yield puts the current thread at the tail of the run queue if another is waiting, or if
// it is pinned to another CPU (it then moves there).
//
// Kernel context, klock held.
func (c *CPU) yield(f *Frame) {
	t := sched.T(c.current)
	away := t.Pin >= 0 && t.Pin != int32(c.id)
	if sched.Queued() == 0 && !away {
		return
	}
	t.Frame = *f
	sched.Enqueue(c.current)
	if away {
		sched.Kick(t.Pin)
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
	watchdogCheck(c, f)
	klock.lock()
	now := nanotime()
	sched.WakeExpired(now)
	if c.current >= 0 && now >= c.sliceEnd && c.threadFrame(f) && !noPreempt {
		if sched.Queued() > 0 {
			c.yield(f)
		} else {
			c.sliceEnd = now + timeslice
		}
	}
	c.armTimer()
	kickIdleCPUs()
	c.unlockKlock()
}
