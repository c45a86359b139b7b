package kernel

import (
	"unsafe"

	"tracebed/kernel/linux"
	"tracebed/kernel/sched"
)

// The kernel's side of the system-call host (package linux answers the calls): the SYSCALL
// path, console writes, and what linux.Host asks of the kernel.

// syscall answers the SYSCALL in f and leaves the result in f.RAX, or f holds another thread
// when it returns (the caller blocked or exited).
//
// Kernel context: the SYSCALL entry (IF=0, not nested); it takes klock for every call but
// console writes and the address-space calls, which take vmLock.
func (c *CPU) syscall(f *Frame) {
	if f.RAX == sysKcall {
		f.RAX = c.runKcall(f)
		return
	}
	linux.Count(f.RAX)
	if linux.IsConsoleWrite(f) {
		f.RAX = uint64(writeConsole(f.RSI, f.RDX))
		return
	}
	if linux.IsMemoryCall(f.RAX) {
		vmLock.lock()
		linux.Syscall(c.current, f) // the address-space calls never block or switch
		vmLock.unlock()
		return
	}
	klock.lock()
	switch linux.Syscall(c.current, f) {
	case linux.Switch:
		c.reschedule(f)
	case linux.Yield:
		c.yield(f)
	}
	kickIdleCPUs()
	c.unlockKlock()
}

// kickIdleCPUs sends the wake IPIs package sched asked for since the last call.
//
// Kernel context, klock held.
func kickIdleCPUs() {
	for _, cpu := range sched.TakeKicks() {
		kickIdle(cpu)
	}
}

// vmLock guards the address space: the page tables' runtime part, the frame allocator, and
// package linux's regions. The address-space calls take it instead of klock, so that zeroing a
// large mapping (with interrupts off) holds up no other system call; nothing holds both. Its
// waiters drain cross-CPU calls like klock's, so a TLB shootdown made under it completes.
var vmLock spinlock

// abiHost is the kernel as package linux sees it (linux.Host). Its methods run where
// linux.Syscall does.
type abiHost struct{}

var theHost abiHost

// Nanotime is the kernel's monotonic clock. Kernel context, klock held.
func (*abiHost) Nanotime() int64 { return nanotime() }

// WallBase is the Unix time at the clock's zero. Kernel context, klock held.
func (*abiHost) WallBase() int64 { return wallBase }

// OnlineCPUs is the number of CPUs running threads. Kernel context, klock held.
func (*abiHost) OnlineCPUs() int { return ncpuOnline }

// Commit maps [start, end), zero-filled. Kernel context, vmLock held.
func (*abiHost) Commit(start, end, prot uint64) bool { return commit(start, end, prot, false) }

// MapMissing maps zero-filled pages where [start, end) has none. Kernel context, vmLock
// held.
func (*abiHost) MapMissing(start, end, prot uint64) bool { return commit(start, end, prot, true) }

// Decommit unmaps [start, end). Kernel context, vmLock held.
func (*abiHost) Decommit(start, end uint64) { decommit(start, end) }

// ZeroMapped zeroes the mapped pages of [start, end). Kernel context, vmLock held.
func (*abiHost) ZeroMapped(start, end uint64) {
	kpt.walkMapped(start, end, func(e *uint64, va uint64) { zeroPage(*e & pteAddr) })
}

// ExitGroup ends the run. Kernel context, klock held.
func (*abiHost) ExitGroup(status int) { exitGroup(status) }

// Unimplemented prints one line for a system call answered with -ENOSYS. Kernel context,
// klock held.
func (*abiHost) Unimplemented(nr uint64) {
	var k kbuf
	k.s("tracebed: unimplemented syscall ").dec(int64(nr)).s(", returning -ENOSYS").out()
}

// u32 and u64 view kernel memory (never a system call's argument: see linux/uaccess.go).
func u32(p uint64) *uint32 { return (*uint32)(unsafe.Pointer(uintptr(p))) }

// Trap context allowed.
func u64(p uint64) *uint64 { return (*uint64)(unsafe.Pointer(uintptr(p))) }

// kernelBytes views n bytes of kernel memory at p.
func kernelBytes(p, n uint64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n)
}

// maxConsoleWrite bounds one write(2) to the console: it runs with interrupts off, so a larger
// one returns a short count and the caller writes the rest (Go's os.File does).
const maxConsoleWrite = 64 << 10

// writeConsole writes n bytes of user memory at buf to the console, a chunk at a time through
// the fault-safe copy, under the console lock for the whole write (one write(2) is one piece of
// output, as on a Linux tty); a bad pointer ends it with -EFAULT, or the count already written.
// Kernel context, klock not held: output may be long, and must not hold up other system calls.
func writeConsole(buf, n uint64) int64 {
	if !linux.UserRange(buf, n) {
		return linux.Efault(0)
	}
	n = min(n, maxConsoleWrite)
	var chunk [256]byte
	done := uint64(0)
	held := consoleAcquire()
	for done < n {
		m := min(n-done, uint64(len(chunk)))
		got := uint64(linux.CopyIn(chunk[:m], buf+done))
		if held && consoleMine() { // a fatal report may seize the console mid-write
			consoleRaw(chunk[:got])
		}
		done += got
		if got < m {
			break
		}
		// Progress for the watchdog, of this CPU and of those waiting behind it: at 115200 baud
		// 64 KiB take 5.7 s, all with interrupts off.
		if !noConsoleProgress {
			consoleChunks.Add(1)
			thisCPU().consoleProgress.Add(1)
		}
		drainCalls() // interrupts are off for the whole write: serve cross-CPU calls between chunks
	}
	if held {
		consoleRelease()
	}
	if done < n {
		return linux.Efault(done)
	}
	return int64(n)
}
