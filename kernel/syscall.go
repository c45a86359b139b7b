package kernel

import (
	"sync/atomic"
	"unsafe"

	"tracebed/amd64"
)

// The Linux system-call host: the Go runtime issues SYSCALL exactly as on Linux and these
// handlers answer in ring 0. Arguments follow the x86-64 Linux ABI (RDI, RSI, RDX, R10, R8,
// R9; number in RAX; result or -errno in RAX). The handlers run with klock held.

// Linux x86-64 system-call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
const (
	nrRead           = 0
	nrWrite          = 1
	nrClose          = 3
	nrFstat          = 5
	nrMmap           = 9
	nrMprotect       = 10
	nrMunmap         = 11
	nrBrk            = 12
	nrRtSigaction    = 13
	nrRtSigprocmask  = 14
	nrIoctl          = 16
	nrSchedYield     = 24
	nrMincore        = 27
	nrMadvise        = 28
	nrNanosleep      = 35
	nrGetpid         = 39
	nrClone          = 56
	nrExit           = 60
	nrKill           = 62
	nrUname          = 63
	nrFcntl          = 72
	nrSigaltstack    = 131
	nrPrctl          = 157
	nrArchPrctl      = 158
	nrGettid         = 186
	nrTkill          = 200
	nrFutex          = 202
	nrSchedGetaffin  = 204
	nrClockGettime   = 228
	nrClockGetres    = 229
	nrClockNanosleep = 230
	nrExitGroup      = 231
	nrEpollWait      = 232
	nrEpollCtl       = 233
	nrTgkill         = 234
	nrOpenat         = 257
	nrNewfstatat     = 262
	nrReadlinkat     = 267
	nrEpollPwait     = 281
	nrEventfd        = 284
	nrEventfd2       = 290
	nrEpollCreate1   = 291
	nrPrlimit64      = 302
	nrGetrandom      = 318
	nrRseq           = 334
	nrEpollPwait2    = 441
	maxSyscall       = 512
)

// errno values (asm-generic/errno-base.h, errno.h).
const (
	errEPERM     = 1
	errENOENT    = 2
	errEINTR     = 4
	errEBADF     = 9
	errEAGAIN    = 11
	errENOMEM    = 12
	errEFAULT    = 14
	errEEXIST    = 17
	errENODEV    = 19
	errEINVAL    = 22
	errEMFILE    = 24
	errENOTTY    = 25
	errENOSYS    = 38
	errETIMEDOUT = 110
)

const (
	archSetFS     = 0x1002
	archGetFS     = 0x1003
	futexWait     = 0
	futexWake     = 1
	futexWaitBits = 9
	futexWakeBits = 10
	futexCmdMask  = 0x7f  // strips FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME
	futexRealtime = 0x100 // FUTEX_CLOCK_REALTIME: an absolute timeout is wall-clock time
	cloneVM       = 0x100
	cloneThread   = 0x10000
	cloneSetTLS   = 0x80000
	timerAbstime  = 1
	ssDisable     = 2
	sigsetSize    = 8 // the kernel's sigset_t: rt_sigprocmask takes no other size
	sigSetmask    = 2 // the largest rt_sigprocmask how (SIG_BLOCK 0, SIG_UNBLOCK 1, SIG_SETMASK 2)
	maxSignal     = 64
	sigKill       = 9    // its action cannot be changed
	sigStop       = 19   // nor this one's
	maxGetrandom  = 4096 // bytes per getrandom call (a short count beyond; Linux: 32 MiB - 1)
)

// Counters shown in diagnostics.
var (
	syscallCount [maxSyscall]uint64
	warnedENOSYS [maxSyscall / 64]uint64
	signalsSent  uint64
	ncpuOnline   int
)

// u32 and u64 view kernel memory (never a system call's argument: see usercopy.go).
func u32(p uint64) *uint32 { return (*uint32)(unsafe.Pointer(uintptr(p))) }

// Trap context allowed.
func u64(p uint64) *uint64 { return (*uint64)(unsafe.Pointer(uintptr(p))) }

// kernelBytes views n bytes of kernel memory at p.
func kernelBytes(p, n uint64) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(p))), n)
}

// syscall dispatches the SYSCALL in f and leaves the result in f.RAX (possibly after
// blocking the thread, in which case f holds another thread when it returns).
//
// Kernel context: the SYSCALL entry (IF=0, not nested); it takes klock for every call but
// console writes.
func (c *CPU) syscall(f *Frame) {
	nr := f.RAX
	a0, a1, a2, a3, a4 := f.RDI, f.RSI, f.RDX, f.R10, f.R8
	if nr < maxSyscall {
		atomic.AddUint64(&syscallCount[nr], 1) // every CPU counts here at once
	}
	if nr == nrWrite && a0 <= 2 {
		// The console needs no klock (fds 0-2 are the console for good), and output of any
		// length must not hold up every other system call.
		f.RAX = uint64(writeConsole(a1, a2))
		return
	}
	klock.lock()
	var r int64
	switch nr {
	case nrWrite:
		r = sysWriteFD(int64(a0), a1, a2)
	case nrRead:
		r = sysReadFD(int64(a0), a1, a2)
	case nrClose:
		r = closeFD(int64(a0))
	case nrMmap:
		r = sysMmap(a0, a1, a2, a3)
	case nrMunmap:
		r = sysMunmap(a0, a1)
	case nrMadvise:
		r = sysMadvise(a0, a1, a2)
	case nrMprotect:
		r = sysMprotect(a0, a1, a2)
	case nrArchPrctl:
		switch a0 {
		case archSetFS:
			f.FSBase = a1
		case archGetFS:
			if !putU64(a1, f.FSBase) {
				r = -errEFAULT
			}
		default:
			r = -errEINVAL
		}
	case nrGettid:
		r = int64(threads[c.current].tid)
	case nrGetpid:
		r = 100 // the first thread's TID, as on Linux
	case nrSchedGetaffin:
		r = schedGetaffinity(a1, a2)
	case nrSchedYield:
		f.RAX = 0
		c.yield(f)
		klock.unlock()
		return
	case nrClockGettime:
		r = clockGettime(a0, a1)
	case nrClockGetres:
		if a1 != 0 && !putTimespec(a1, 1) {
			r = -errEFAULT
		}
	case nrNanosleep:
		if d, e := getTimespec(a0); e == 0 {
			r = c.sleepUntil(f, nanotime()+d)
		} else {
			r = -e
		}
	case nrClockNanosleep:
		d, e := getTimespec(a2)
		if e != 0 {
			r = -e
			break
		}
		if a1&timerAbstime != 0 {
			if a0 == 0 { // CLOCK_REALTIME
				d -= wallBase
			}
		} else {
			d += nanotime()
		}
		r = c.sleepUntil(f, d)
	case nrFutex:
		r = c.futex(f, a0, a1, a2, a3)
	case nrClone:
		r = c.clone(f, a0, a1, a4)
	case nrExit:
		threads[c.current].state = thFree
		c.reschedule(f)
		klock.unlock()
		return
	case nrExitGroup:
		exitGroup(int(a0))
	case nrRtSigaction: // (sig, act, oldact, sigsetsize), checked in Linux's order
		var act [32]byte
		switch {
		case a3 != sigsetSize:
			r = -errEINVAL
		case a0 < 1 || a0 > maxSignal || (a1 != 0 && (a0 == sigKill || a0 == sigStop)):
			r = -errEINVAL
		case a1 != 0 && copyIn(act[:], a1) != len(act):
			r = -errEFAULT
		case a2 != 0 && !zeroUser(a2, 32): // struct sigaction without the mask: handler SIG_DFL
			r = -errEFAULT
		}
	case nrRtSigprocmask: // (how, set, oldset, sigsetsize): signals are not delivered here
		switch {
		case a3 != sigsetSize:
			r = -errEINVAL
		case a1 != 0 && !readable(a1):
			r = -errEFAULT
		case a1 != 0 && a0 > sigSetmask:
			r = -errEINVAL
		case a2 != 0 && !zeroUser(a2, a3):
			r = -errEFAULT
		}
	case nrSigaltstack:
		if a1 != 0 && !(zeroUser(a1, 24) && putU32(a1+8, ssDisable)) {
			r = -errEFAULT
		}
	case nrTgkill, nrTkill, nrKill:
		signalsSent++ // signals are not delivered (GODEBUG=asyncpreemptoff=1)
	case nrOpenat, nrNewfstatat, nrReadlinkat:
		r = -errENOENT
	case nrFcntl:
		r = 0
		if a1 == 3 { // F_GETFL
			r = 2 // O_RDWR
		}
	case nrIoctl:
		r = -errENOTTY
	case nrPrctl, nrRseq:
		r = -errEINVAL
	case nrPrlimit64:
		if a3 != 0 && !(putU64(a3, 1024) && putU64(a3+8, 4096)) {
			r = -errEFAULT
		}
	case nrGetrandom:
		r = getrandom(a0, a1)
	case nrEventfd, nrEventfd2:
		r = newEventfd(a0)
	case nrEpollCreate1:
		r = newEpoll()
	case nrEpollCtl:
		r = epollCtl(int64(a0), a1, int64(a2), a3)
	case nrEpollPwait, nrEpollWait:
		r = c.epollWait(f, int64(a0), a1, a2, int64(int32(a3)))
	default:
		if nr < maxSyscall && warnedENOSYS[nr/64]&(1<<(nr%64)) == 0 {
			warnedENOSYS[nr/64] |= 1 << (nr % 64)
			var k kbuf
			k.s("tracebed: unimplemented syscall ").dec(int64(nr)).s(", returning -ENOSYS").out()
		}
		r = -errENOSYS
	}
	if r != blocked {
		f.RAX = uint64(r)
	}
	klock.unlock()
}

// blocked is returned by handlers that switched f to another thread: the sleeper's result is
// set when it wakes.
const blocked = -1 << 62

// Kernel context, klock held.
func (c *CPU) sleepUntil(f *Frame, deadline int64) int64 {
	if deadline <= nanotime() {
		return 0
	}
	c.block(f, waitSleep, deadline, 0)
	return blocked
}

// Kernel context, klock held.
func (c *CPU) futex(f *Frame, addr, op, val, timeout uint64) int64 {
	cmd := op & futexCmdMask
	if (cmd == futexWaitBits || cmd == futexWakeBits) && uint32(f.R9) == 0 {
		return -errEINVAL // an empty bitset (val3)
	}
	switch cmd {
	case futexWait, futexWaitBits:
		// As Linux: the timeout is read first, the word must be aligned (one load, atomic).
		var deadline int64
		if timeout != 0 {
			var e int64
			if deadline, e = getTimespec(timeout); e != 0 {
				return -e
			}
			if cmd == futexWaitBits && op&futexRealtime != 0 {
				deadline -= wallBase // on the kernel's monotonic clock
			}
		}
		if addr%4 != 0 {
			return -errEINVAL
		}
		cur, ok := getU32(addr)
		if !ok {
			return -errEFAULT
		}
		if cur != uint32(val) {
			return -errEAGAIN
		}
		if timeout != 0 {
			if cmd == futexWait { // relative; FUTEX_WAIT_BITSET's is absolute
				deadline += nanotime()
			}
			if deadline <= nanotime() {
				return -errETIMEDOUT
			}
		}
		threads[c.current].futex = addr
		c.block(f, waitFutex, deadline, negErrno(errETIMEDOUT))
		return blocked
	case futexWake, futexWakeBits:
		if addr%4 != 0 {
			return -errEINVAL
		}
		n := int64(0)
		for i := int32(0); i < nthreads && n < int64(int32(val)); i++ {
			t := &threads[i]
			if t.state == thBlocked && t.wait == waitFutex && t.futex == addr {
				wake(i, 0)
				n++
			}
		}
		return n
	}
	return -errENOSYS
}

// clone creates a thread sharing everything (the runtime's newosproc): it resumes at the
// same RIP with RAX=0, RSP=stack and, with CLONE_SETTLS, FS base = tls.
//
// Kernel context, klock held.
func (c *CPU) clone(f *Frame, flags, stack, tls uint64) int64 {
	if flags&(cloneVM|cloneThread) != cloneVM|cloneThread {
		return -errEINVAL
	}
	i := newThread()
	if i < 0 {
		return -errEAGAIN
	}
	t := &threads[i]
	t.frame = *f
	t.frame.RAX = 0
	t.frame.RSP = stack
	if flags&cloneSetTLS != 0 {
		t.frame.FSBase = tls
	}
	t.state = thRunnable
	enqueue(i)
	kickIdle(-1)
	return int64(t.tid)
}

// Kernel context, klock held.
func schedGetaffinity(size, mask uint64) int64 {
	const bytes = 8
	if size < bytes {
		return -errEINVAL
	}
	var bits uint64
	for i := 0; i < ncpuOnline; i++ {
		bits |= 1 << i
	}
	if !putU64(mask, bits) {
		return -errEFAULT
	}
	return bytes
}

// Kernel context, klock held.
func clockGettime(clk, ts uint64) int64 {
	var ns int64
	switch clk {
	case 0, 5, 8: // REALTIME, REALTIME_COARSE, REALTIME_ALARM
		ns = walltime()
	case 1, 2, 3, 4, 6, 7, 9: // MONOTONIC(+RAW, COARSE), BOOTTIME, CPU-time clocks
		ns = nanotime()
	default:
		return -errEINVAL
	}
	if !putTimespec(ts, ns) {
		return -errEFAULT
	}
	return 0
}

var randState uint64 = 0x9e3779b97f4a7c15

// getrandom fills buf from splitmix64 seeded by the TSC: good enough for the runtime's hash
// seeds, not for cryptography.
//
// Kernel context, klock held (or boot, filling AT_RANDOM before any other CPU runs).
func getrandom(buf, n uint64) int64 {
	n = min(n, maxGetrandom) // klock is held: a short count, as Linux may give
	if !userRange(buf, n) {
		return -errEFAULT
	}
	for i := uint64(0); i < n; i++ {
		if i%8 == 0 {
			randState += 0x9e3779b97f4a7c15 ^ amd64.RDTSC()
		}
		z := randState + i
		z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
		z = (z ^ z>>27) * 0x94d049bb133111eb
		if !putU8(buf+i, byte(z^z>>31)) {
			return efault(i)
		}
	}
	return int64(n)
}

// negErrno is -e as a register value.
//
// Trap context allowed.
func negErrno(e int64) uint64 { return uint64(-e) }
