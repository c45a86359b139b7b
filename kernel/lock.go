package kernel

import (
	"sync/atomic"

	"tracebed/amd64"
)

// spinlock is the kernel's only lock. Kernel code runs with interrupts disabled (SYSCALL's
// SFMASK and interrupt gates clear IF), so a holder is never interrupted on its own CPU and a
// spinlock is enough. Never taken in NMI context.
type spinlock struct{ v uint32 }

func (l *spinlock) lock() {
	for !atomic.CompareAndSwapUint32(&l.v, 0, 1) {
		for atomic.LoadUint32(&l.v) != 0 {
			amd64.Pause()
		}
	}
}

func (l *spinlock) unlock() { atomic.StoreUint32(&l.v, 0) }
