package kernel

import (
	"sync/atomic"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/kernel/ktest"
)

// trap is called by commonEntry for every kernel entry with the saved Frame.
// Trap context: interrupts off, on a kernel or IST stack, g = the CPU's kernel g.
func trap(f *Frame) {
	c := thisCPU()
	switch v := f.Vector; {
	case v == VecSyscall:
		c.syscall(f)
	case v == vecTimer:
		c.timerInterrupt(f)
	case v == vecWake:
		c.wakeIPIs++
		lapic.EOI()
	case v == vecFlush:
		c.flushIPIs++
		drainTLB()
		lapic.EOI()
	case v == vecTest:
		atomic.AddUint64(&c.testIPIs, 1)
		lapic.EOI()
	case v == idt.NMI:
		// Counted and dismissed: NMIs are sent by tests (and, later, the watchdog).
		atomic.AddUint64(&c.nmis, 1)
	case v == vecSpurious:
		// no EOI for a spurious interrupt (SDM Vol. 3A, 10.9)
	default:
		fatalTrap(c, f)
	}
}

// fatalTrap reports an exception the kernel cannot handle and ends the run with the fatal
// exit code. The console lines start with "tracebed: fatal" so the host can classify them.
func fatalTrap(c *CPU, f *Frame) {
	var k kbuf
	k.s("tracebed: fatal trap: vector ").dec(int64(f.Vector)).s(" ").s(idt.Name(f.Vector)).
		s(" error ").hex(f.Err).s(" on cpu ").dec(int64(c.id))
	if c.current >= 0 {
		k.s(" thread ").dec(int64(threads[c.current].tid))
	} else {
		k.s(" (kernel)")
	}
	k.out()
	k.s("tracebed: fatal RIP ").hex(f.RIP).s(" RSP ").hex(f.RSP).s(" RFLAGS ").hex(f.RFLAGS).
		s(" CR2 ").hex(amd64.ReadCR2()).s(" FS ").hex(f.FSBase).out()
	k.s("tracebed: fatal RAX ").hex(f.RAX).s(" RBX ").hex(f.RBX).s(" RCX ").hex(f.RCX).
		s(" RDX ").hex(f.RDX).s(" RSI ").hex(f.RSI).s(" RDI ").hex(f.RDI).out()
	k.s("tracebed: fatal RBP ").hex(f.RBP).s(" R8 ").hex(f.R8).s(" R9 ").hex(f.R9).
		s(" R10 ").hex(f.R10).s(" R11 ").hex(f.R11).s(" R12 ").hex(f.R12).out()
	k.s("tracebed: fatal R13 ").hex(f.R13).s(" R14 ").hex(f.R14).s(" R15 ").hex(f.R15).out()
	// Frame-pointer walk: Go keeps RBP chains on amd64. The host symbolizes these PCs.
	k.s("tracebed: fatal stack ").hex(f.RIP)
	bp := f.RBP
	for i := 0; i < 16 && bp >= identityTop && bp < userTop && bp%8 == 0; i++ {
		if _, _, ok := kpt.lookup(bp); !ok {
			break
		}
		if _, _, ok := kpt.lookup(bp + 8); !ok {
			break
		}
		k.c(' ').hex(*u64(bp + 8))
		bp = *u64(bp)
	}
	k.out()
	debugExit(ktest.ExitFatal)
}
