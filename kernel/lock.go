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
type spinlock struct{ v uint32 }

// Kernel context: interrupts off, so a holder is never preempted; never in NMI context.
func (l *spinlock) lock() {
	for !atomic.CompareAndSwapUint32(&l.v, 0, 1) {
		c := lockWaiter()
		if c != nil {
			atomic.AddUint32(&c.lockWait, 1)
		}
		for atomic.LoadUint32(&l.v) != 0 {
			if c != nil {
				drainCalls()
				if l != &consoleLock { // the report prints: it must not wait for itself
					watchdogPoll(c)
				}
			}
			amd64.Pause()
		}
		if c != nil {
			atomic.AddUint32(&c.lockWait, ^uint32(0))
		}
	}
}

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
