package kernel

import (
	"tracebed/kernel/sched"
	"unsafe"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/kernel/ktest"
	"tracebed/trap"
)

// kernelEntry is called by saveFrame for every kernel entry with the saved Frame. The kernel
// handles system calls, its interrupts and NMIs itself and gives every other vector to
// trap.Dispatch; what nobody handles is fatal.
// Trap context: on the CPU's kernel stack (or the #DF IST stack), g = the CPU's kernel g,
// interrupts as the gate left them.
func kernelEntry(f *Frame) {
	c := thisCPU()
	trap.Enter(c.id, f.Vector)
	if c.overflowed(f) {
		fatalTrap(c, f) // no handler runs on the IST stack commonEntry left this frame on
	}
	switch v := f.Vector; {
	case v == VecSyscall:
		c.syscall(f)
	case v == vecTimer:
		c.timerInterrupt(f)
	case v == vecWake, v == vecTest: // counted by trap.Enter
		lapic.EOI()
	case v == vecXcall:
		lapic.EOI() // first: a call IPI sent while these calls run is taken after the IRET
		c.runCalls()
	case v == idt.NMI:
		c.nmi(f)
	case v == vecSpurious:
		// no EOI for a spurious interrupt (SDM Vol. 3A, 10.9)
	default:
		if !trap.Dispatch(c.id, f) {
			fatalTrap(c, f)
		}
	}
	trap.Exit(c.id)
}

// nmi gives an NMI (counted by trap.Enter) to a registered handler, if any, and answers the
// watchdog. An NMI can arrive between a #PF and its entry's read of CR2, and its handler may
// fault (a fault-safe read): CR2 is put back as it was.
//
// NMIs never nest here: the CPU holds further NMIs until the IRET that ends one, but the IRET
// of a fault taken inside the handler (a fault-safe read) lets them in early. Such an NMI is
// latched (nmiLatched) and run after the one in progress, not inside it.
//
// Trap context.
func (c *CPU) nmi(f *Frame) {
	if c.inNMI && !noNMILatch {
		c.nmiLatched = true
		return
	}
	c.inNMI = true
	for {
		cr2 := amd64.ReadCR2()
		handled := trap.Dispatch(c.id, f)
		answered := watchdogSnapshot(c, f)
		expected := c.nmiExpected.Load() > 0 // one the kernel sent (a test's)
		if expected {
			c.nmiExpected.Add(-1)
		}
		if !handled && !answered && !expected {
			c.nmiBacktrace(f)
		}
		if amd64.ReadCR2() != cr2 {
			amd64.WriteCR2(cr2)
		}
		c.inNMI = false
		if !c.nmiLatched { // one arriving from here on runs on its own
			return
		}
		c.nmiLatched = false
		c.inNMI = true
	}
}

// noNMILatch (nmilatch=0) lets an NMI that arrives inside the NMI handler run nested in it: a
// mutation under which the traps suite's nmi_never_nests must fail.
var noNMILatch bool

// SelfNMI sends this CPU an NMI (a test's: inside the NMI handler it stays pending until
// an IRET). Trap context allowed.
func SelfNMI() { sendNMI(thisCPU()) }

// sendNMI sends c an NMI the kernel expects (nmiBacktrace is for the others). Two NMIs sent to
// a CPU that holds one pending merge into one; the count then stays one too high, and the next
// external NMI on that CPU prints nothing. Trap context allowed.
func sendNMI(c *CPU) bool {
	c.nmiExpected.Add(1)
	return lapic.NMI(c.apicID)
}

// threadFrame reports whether f holds the registers of an interrupted thread (it is at the
// kernel stack's top) rather than of interrupted kernel code: only then may the scheduler
// switch threads on this entry. Trap context.
func (c *CPU) threadFrame(f *Frame) bool {
	return uintptr(unsafe.Pointer(f)) == c.kstack-unsafe.Sizeof(Frame{})
}

// overflowed reports whether f interrupted this CPU's kernel code below CPU.kstkMin: the kernel
// stack has overflowed into its reserve or its guard page, and commonEntry left f on the stack
// the CPU delivered it to. Trap context.
func (c *CPU) overflowed(f *Frame) bool {
	return c.onStacks(f.RSP) && f.RSP < uint64(c.kstkMin)
}

// onStacks reports whether a lies in this CPU's stack region. Trap context.
func (c *CPU) onStacks(a uint64) bool { return a >= uint64(c.stkLo) && a < uint64(c.stkHi) }

// overflowedStack names the stack f's trap overflowed, if any: the one whose guard page holds
// the interrupted RSP or, for a #PF, the faulting address; else the kernel stack when the
// interrupted RSP lies below its limit. slot is 0 for the kernel stack, else the IST slot.
// Trap context.
func (c *CPU) overflowedStack(f *Frame) (slot int, guard uint64, ok bool) {
	guards := stackRegion(c.id).guardPages()
	for i, g := range guards {
		lo := uint64(g)
		// RSP at the guard page's top: a push there faulted without moving it.
		if f.RSP-lo <= guardBytes || f.Vector == idt.PageFault && f.CR2-lo < guardBytes {
			return i, lo, true
		}
	}
	return 0, uint64(guards[0]), c.overflowed(f)
}

// fatalTrap reports an exception the kernel cannot handle and ends the run with the fatal
// exit code. The console lines start with "tracebed: fatal" so the host can classify them.
//
// Trap context.
func fatalTrap(c *CPU, f *Frame) {
	// This CPU may hold consoleLock (the fault came from inside a console write); another CPU
	// may be printing its own fatal report, which is then left to finish and end the run.
	if !seizeConsole(c) {
		leaveExitToReporter()
		debugExit(ktest.ExitFatal)
	}
	var k kbuf
	k.s("tracebed: fatal trap: vector ").dec(int64(f.Vector)).s(" ").s(idt.Name(f.Vector)).
		s(" error ").hex(f.Err).s(" on cpu ").dec(int64(c.id))
	if c.current >= 0 {
		k.s(" thread ").dec(int64(sched.T(c.current).TID))
	} else {
		k.s(" (kernel)")
	}
	k.out()
	if slot, guard, ok := c.overflowedStack(f); ok {
		k.s("tracebed: fatal: stack overflow on cpu ").dec(int64(c.id)).s(": ")
		if slot == 0 {
			k.s("kernel stack")
		} else {
			k.s("IST stack ").dec(int64(slot))
		}
		k.s(" (guard page ").hex(guard).s(", kernel stack limit ").hex(uint64(c.kstkMin)).
			s(") at trap depth ").dec(int64(trap.Depth(c.id))).out()
	}
	k.s("tracebed: fatal RIP ").hex(f.RIP).s(" RSP ").hex(f.RSP).s(" RFLAGS ").hex(f.RFLAGS).
		s(" CR2 ").hex(f.CR2).s(" FS ").hex(f.FSBase).out()
	k.s("tracebed: fatal RAX ").hex(f.RAX).s(" RBX ").hex(f.RBX).s(" RCX ").hex(f.RCX).
		s(" RDX ").hex(f.RDX).s(" RSI ").hex(f.RSI).s(" RDI ").hex(f.RDI).out()
	k.s("tracebed: fatal RBP ").hex(f.RBP).s(" R8 ").hex(f.R8).s(" R9 ").hex(f.R9).
		s(" R10 ").hex(f.R10).s(" R11 ").hex(f.R11).s(" R12 ").hex(f.R12).out()
	k.s("tracebed: fatal R13 ").hex(f.R13).s(" R14 ").hex(f.R14).s(" R15 ").hex(f.R15).out()
	var pcs [maxFrames]uint64
	n := c.walkTrapped(f, &pcs)
	k.s("tracebed: fatal stack")
	for _, pc := range pcs[:n] {
		k.c(' ').hex(pc)
	}
	k.out()
	// The same frames named from the kernel's own pclntab, for consoles no host reads.
	tab := kernelTable()
	for i, pc := range pcs[:n] {
		if fn, file, line, found := tab.Lookup(frameLookup(i, pc)); found {
			k.s("tracebed: fatal frame ").dec(int64(i)).c(' ').hex(pc).c(' ').s(fn).c(' ').s(file).
				c(':').dec(int64(line)).out()
		}
	}
	debugExit(ktest.ExitFatal)
}

// maxFrames bounds a reported stack.
const maxFrames = 17

// walkStack fills pcs with rip and the return addresses of the frame-pointer chain from rbp,
// and returns how many it found. Go keeps RBP chains on amd64, in goroutine stacks and in this
// CPU's kernel stacks alike (saveFrame leaves RBP as it was, so the walk goes on through nested
// entries into the code they interrupted); every word is read fault-safe.
//
// Trap context allowed.
func (c *CPU) walkStack(rip, rbp uint64, pcs *[maxFrames]uint64) int {
	pcs[0] = rip
	n := 1
	bp := rbp
	for n < len(pcs) && (bp >= identityTop && bp < userTop || c.onStacks(bp)) && bp%8 == 0 {
		// Fault-safe: in an NMI another CPU may unmap the stack between a check and a load.
		ret, f1 := trap.SafeLoad64(uintptr(bp + 8))
		next, f2 := trap.SafeLoad64(uintptr(bp))
		if f1.Failed() || f2.Failed() {
			break
		}
		pcs[n] = ret
		n++
		bp = next
	}
	return n
}

// walkTrapped is walkStack for the state in f, which a trap may have caught anywhere in a
// function: in a leaf without a frame (amd64.Pause), or in a prologue or an epilogue, where RBP
// is still the caller's. There the return address is at RSP plus the function's SP delta at RIP
// (the pclntab's pcsp), and the chain goes on from RBP. Without that, the walk skipped the
// caller: a CPU spinning on Pause was reported as "Pause goexit".
//
// Trap context allowed.
func (c *CPU) walkTrapped(f *Frame, pcs *[maxFrames]uint64) int {
	tab := kernelTable()
	d, ok := tab.SPDelta(uintptr(f.RIP))
	if !ok || d < 0 || f.RBP == f.RSP+uint64(d)-8 { // RBP is this function's frame
		return c.walkStack(f.RIP, f.RBP, pcs)
	}
	at := f.RSP + uint64(d)
	if !(at >= identityTop && at < userTop || c.onStacks(at)) || at%8 != 0 {
		return c.walkStack(f.RIP, f.RBP, pcs)
	}
	ret, fault := trap.SafeLoad64(uintptr(at))
	if _, _, _, named := tab.Lookup(uintptr(ret) - 1); fault.Failed() || !named {
		return c.walkStack(f.RIP, f.RBP, pcs) // not a return into the kernel: trust RBP
	}
	var rest [maxFrames]uint64
	n := c.walkStack(ret, f.RBP, &rest)
	pcs[0] = f.RIP
	n = copy(pcs[1:], rest[:n]) + 1
	return n
}

// kernelTable is the kernel's own pclntab, to name frames with; a table that does not parse
// is empty, and names nothing.
//
// Trap context allowed.
func kernelTable() trap.Table {
	lo, hi := pclntab()
	tab, _ := trap.NewTable(unsafe.Slice((*byte)(unsafe.Pointer(lo)), hi-lo), kernelStart())
	return tab
}

// frameLookup is the address to name frame i by: the PC itself for the first, the call before
// a return address for the others.
//
// Trap context allowed.
func frameLookup(i int, pc uint64) uintptr {
	if i > 0 {
		return uintptr(pc) - 1
	}
	return uintptr(pc)
}
