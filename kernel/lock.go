package kernel

import (
	"sync/atomic"

	"tracebed/amd64"
)

// spinlock is the kernel's lock type. Kernel code runs with interrupts disabled (SYSCALL's
// SFMASK and interrupt gates clear IF), so a holder is never interrupted on its own CPU and a
// spinlock is enough. Never taken in NMI context.
//
// A CPU spinning here has interrupts off and cannot take IPIs, so the wait loop runs the
// cross-CPU calls other CPUs may be waiting on it for (drainCalls; TLB shootdowns are such
// calls): a CPU holding a lock may then call all others and wait for them without deadlock.
type spinlock struct {
	v      uint32
	urgent uint32 // 1 + the id of a CPU that has waited starveNs: others stand back for it
}

// starveNs is how long a CPU waits for a lock before it claims the next turn. A bare
// test-and-set lock lets one CPU lose every race: at 32 vCPUs on 2 host cores, CPUs waited
// over a second for vmLock and klock while others took them again and again, which the
// watchdog rightly reported as stuck CPUs. A claim hands the lock to one named CPU, which costs
// throughput when the host has not scheduled that vCPU, so it is kept for real starvation
// (two orders of magnitude above a usual wait, one below the watchdog's limit).
const starveNs = 50e6

// Kernel context: interrupts off, so a holder is never preempted; never in NMI context.
func (l *spinlock) lock() {
	if atomic.LoadUint32(&l.urgent) == 0 && atomic.CompareAndSwapUint32(&l.v, 0, 1) {
		return
	}
	c := lockWaiter()
	me := uint32(0) // before the per-CPU blocks are loaded only one CPU runs: no claims
	var since int64
	if c != nil {
		atomic.AddUint32(&c.lockWait, 1)
		me = uint32(c.id) + 1
		since = nanotime()
	}
	for {
		u := atomic.LoadUint32(&l.urgent)
		if (u == 0 || u == me) && atomic.LoadUint32(&l.v) == 0 && atomic.CompareAndSwapUint32(&l.v, 0, 1) {
			if u == me {
				atomic.StoreUint32(&l.urgent, 0)
				c.starvedLocks++
			}
			break
		}
		if c != nil {
			if !noLockDrain {
				drainCalls()
			}
			if l != &consoleLock { // the report prints: it must not wait for itself
				watchdogPoll(c)
			} else if n := consoleChunks.Load(); n != c.consoleSeen {
				c.consoleSeen = n // the writer ahead is making progress, so is this CPU
				c.consoleProgress.Add(1)
			}
			if u == 0 && nanotime()-since > starveNs {
				atomic.CompareAndSwapUint32(&l.urgent, 0, me)
			}
		}
		amd64.Pause()
	}
	if c != nil {
		atomic.AddUint32(&c.lockWait, ^uint32(0))
	}
}

// noLockDrain (lockdrain=0) stops lock waits from running cross-CPU calls: a mutation under
// which the xcall suite's call_cpu_spinning_on_klock must deadlock (and the watchdog say so).
var noLockDrain bool

// lockWaiter is this CPU's block once the per-CPU blocks are loaded (the console lock is taken
// before), else nil. Trap context allowed.
func lockWaiter() *CPU {
	if !xcallReady.Load() {
		return nil
	}
	return thisCPU()
}

// Kernel context (interrupts off), or trap context for the console's seizure.
func (l *spinlock) unlock() { atomic.StoreUint32(&l.v, 0) }

// tryLock takes the lock if it is free, without waiting.
//
// Kernel context (interrupts off), or trap context for the console's seizure.
func (l *spinlock) tryLock() bool { return atomic.CompareAndSwapUint32(&l.v, 0, 1) }
