// Package linux is the Linux system-call host: the Go runtime issues SYSCALL exactly as on
// Linux and Syscall answers in ring 0. Arguments follow the x86-64 Linux ABI (RDI, RSI, RDX,
// R10, R8, R9; number in RAX; result or -errno in RAX).
//
// Contract with the kernel. The kernel enters Syscall from its SYSCALL entry with klock held
// (interrupts off, not nested) — or, for the address-space calls (IsMemoryCall), with its VM
// lock held instead — for the running thread (a package sched index), and acts on
// the Action it returns: resume the thread, load another (the thread blocked or exited), or
// yield. Threads block and wake through package sched, whose kicks the kernel sends before it
// releases klock. What only the kernel can do — its clock, the page tables, the end of the run,
// a console line — it provides through Host, given once at boot (Init). Writes to the console
// (fds 0–2) are the kernel's own, made without klock (IsConsoleWrite). User memory is reached
// through the fault-safe copies in uaccess.go: a bad pointer is -EFAULT, never a fatal trap.
//
// Nothing here touches hardware but through Host and package trap's fault-safe copies, so the
// host tests run it all (futex, epoll, mmap) against a Host of their own.

package linux

import (
	"sync/atomic"

	"tracebed/amd64"
	"tracebed/kernel/sched"
	"tracebed/trap"
)

// Host is what the system-call host needs from the kernel. Its methods are called from Syscall
// (kernel context) with klock held, or, for the address-space ones (Commit, Decommit,
// ZeroMapped, MapMissing), with the VM lock held.
type Host interface {
	// Nanotime is the kernel's monotonic clock (ns); WallBase is the Unix time in ns at its
	// zero, so that wall-clock time is WallBase() + Nanotime().
	Nanotime() int64
	WallBase() int64
	// OnlineCPUs is the number of CPUs running threads.
	OnlineCPUs() int
	// Commit maps [start, end) (page-aligned) with prot's access, every page zero-filled
	// (mapped pages are zeroed in place); false when memory ran out.
	Commit(start, end, prot uint64) bool
	// Decommit unmaps [start, end) and frees its frames, every CPU's stale translations
	// flushed before it returns.
	Decommit(start, end uint64)
	// ZeroMapped zeroes the mapped pages of [start, end) in place (MADV_DONTNEED).
	ZeroMapped(start, end uint64)
	// MapMissing maps zero-filled pages where [start, end) has none, keeping those it has;
	// false when memory ran out.
	MapMissing(start, end, prot uint64) bool
	// ExitGroup ends the run with the process's exit status; it does not return.
	ExitGroup(status int)
	// Unimplemented reports a system call answered with -ENOSYS (Syscall calls it once per
	// number).
	Unimplemented(nr uint64)
}

var host Host

// Init gives the system-call host its Host and the state of a fresh process: fds 0–2 are the
// console, and the kernel's part of the address space, [0, UserBase), is never handed out.
//
// Boot, before any other CPU runs (or a host test).
func Init(h Host) {
	host = h
	fds = [maxFDs]fdesc{}
	for i := 0; i < 3; i++ {
		fds[i].kind = fdConsole
	}
	regions = regionSet{}
	regions.add(0, UserBase)
	mmapNext = mmapBase
	warnedENOSYS = [maxSyscall / 64]uint64{}
}

// Action is what the kernel does after Syscall.
type Action uint8

const (
	Resume Action = iota // f.RAX holds the result: resume the thread
	Switch               // the thread blocked or exited: load another thread into f
	Yield                // sched_yield (f.RAX is set): let a queued thread run first
)

// Count counts system call nr (SyscallCount). The kernel counts every call it takes.
//
// Kernel context: the SYSCALL entry, before klock.
func Count(nr uint64) {
	if nr < maxSyscall {
		atomic.AddUint64(&syscallCount[nr], 1) // every CPU counts here at once
	}
}

// IsMemoryCall reports whether system call nr is one of the address-space calls (mmap, munmap,
// madvise, mprotect). They touch nothing but the address space (the regions here, the pages
// through Host), so the kernel runs them under its VM lock instead of klock: zeroing a large
// mapping then holds up no other system call.
//
// Kernel context: the SYSCALL entry, before either lock.
func IsMemoryCall(nr uint64) bool {
	return nr == nrMmap || nr == nrMunmap || nr == nrMadvise || nr == nrMprotect
}

// IsConsoleWrite reports whether f is a write(2) to the console (fds 0–2, for good), which the
// kernel makes itself without klock: output of any length must not hold up every other system
// call.
//
// Kernel context: the SYSCALL entry, before klock.
func IsConsoleWrite(f *trap.Frame) bool { return f.RAX == nrWrite && f.RDI <= 2 }

// SyscallCount returns how often system call nr has been made.
func SyscallCount(nr int) uint64 {
	if nr < 0 || nr >= maxSyscall {
		return 0
	}
	return atomic.LoadUint64(&syscallCount[nr])
}

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
)

// Syscall answers the system call in f for thread cur (its number in RAX) and says what the
// kernel does next. Every call but a console write (IsConsoleWrite) comes here.
//
// Kernel context, klock held.
func Syscall(cur int32, f *trap.Frame) Action {
	nr := f.RAX
	a0, a1, a2, a3, a4 := f.RDI, f.RSI, f.RDX, f.R10, f.R8
	var r int64
	switch nr {
	case nrWrite:
		r = sysWriteFD(int64(a0), a1, a2)
	case nrRead:
		r = sysReadFD(int64(a0), a1, a2)
	case nrClose:
		r = closeFD(int64(a0))
	case nrMmap:
		r = Mmap(a0, a1, a2, a3)
	case nrMunmap:
		r = munmap(a0, a1)
	case nrMadvise:
		r = madvise(a0, a1, a2)
	case nrMprotect:
		r = mprotect(a0, a1, a2)
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
		r = int64(sched.T(cur).TID)
	case nrGetpid:
		r = sched.FirstTID // the first thread's TID, as on Linux
	case nrSchedGetaffin:
		r = schedGetaffinity(a1, a2)
	case nrSchedYield:
		f.RAX = 0
		return Yield
	case nrClockGettime:
		r = clockGettime(a0, a1)
	case nrClockGetres:
		if a1 != 0 && !putTimespec(a1, 1) {
			r = -errEFAULT
		}
	case nrNanosleep:
		if d, e := getTimespec(a0); e == 0 {
			r = sleepUntil(cur, f, host.Nanotime()+d)
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
				d -= host.WallBase()
			}
		} else {
			d += host.Nanotime()
		}
		r = sleepUntil(cur, f, d)
	case nrFutex:
		r = futex(cur, f, a0, a1, a2, a3)
	case nrClone:
		r = clone(f, a0, a1, a4)
	case nrExit:
		sched.T(cur).State = sched.Free
		return Switch
	case nrExitGroup:
		host.ExitGroup(int(a0))
	case nrRtSigaction: // (sig, act, oldact, sigsetsize), checked in Linux's order
		var act [32]byte
		switch {
		case a3 != sigsetSize:
			r = -errEINVAL
		case a0 < 1 || a0 > maxSignal || (a1 != 0 && (a0 == sigKill || a0 == sigStop)):
			r = -errEINVAL
		case a1 != 0 && CopyIn(act[:], a1) != len(act):
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
		r = Getrandom(a0, a1)
	case nrEventfd, nrEventfd2:
		r = newEventfd(a0)
	case nrEpollCreate1:
		r = newEpoll()
	case nrEpollCtl:
		r = epollCtl(int64(a0), a1, int64(a2), a3)
	case nrEpollPwait, nrEpollWait:
		r = epollWait(cur, f, int64(a0), a1, a2, int64(int32(a3)))
	default:
		if nr < maxSyscall && warnedENOSYS[nr/64]&(1<<(nr%64)) == 0 {
			warnedENOSYS[nr/64] |= 1 << (nr % 64)
			host.Unimplemented(nr)
		}
		r = -errENOSYS
	}
	if r == blocked {
		return Switch
	}
	f.RAX = uint64(r)
	return Resume
}

// blocked is returned by handlers that switched f to another thread: the sleeper's result is
// set when it wakes.
const blocked = -1 << 62

// sleepUntil blocks thread cur until deadline, unless it has passed.
//
// Kernel context, klock held.
func sleepUntil(cur int32, f *trap.Frame, deadline int64) int64 {
	if deadline <= host.Nanotime() {
		return 0
	}
	sched.Block(cur, f, sched.WaitSleep, deadline, 0)
	return blocked
}

// futex implements FUTEX_WAIT, FUTEX_WAKE and their _BITSET forms (the bitset must not be
// empty, and is otherwise ignored: the runtime uses FUTEX_BITSET_MATCH_ANY).
//
// Kernel context, klock held.
func futex(cur int32, f *trap.Frame, addr, op, val, timeout uint64) int64 {
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
				deadline -= host.WallBase() // on the kernel's monotonic clock
			}
		}
		if addr%4 != 0 {
			return -errEINVAL
		}
		word, ok := getU32(addr)
		if !ok {
			return -errEFAULT
		}
		if word != uint32(val) {
			return -errEAGAIN
		}
		if timeout != 0 {
			if cmd == futexWait { // relative; FUTEX_WAIT_BITSET's is absolute
				deadline += host.Nanotime()
			}
			if deadline <= host.Nanotime() {
				return -errETIMEDOUT
			}
		}
		sched.T(cur).Futex = addr
		sched.Block(cur, f, sched.WaitFutex, deadline, negErrno(errETIMEDOUT))
		return blocked
	case futexWake, futexWakeBits:
		if addr%4 != 0 {
			return -errEINVAL
		}
		n := int64(0)
		for i := int32(0); i < sched.Count() && n < int64(int32(val)); i++ {
			t := sched.T(i)
			if t.State == sched.Blocked && t.Wait == sched.WaitFutex && t.Futex == addr {
				sched.Wake(i, 0)
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
func clone(f *trap.Frame, flags, stack, tls uint64) int64 {
	if flags&(cloneVM|cloneThread) != cloneVM|cloneThread {
		return -errEINVAL
	}
	i := sched.New()
	if i < 0 {
		return -errEAGAIN
	}
	t := sched.T(i)
	t.Frame = *f
	t.Frame.RAX = 0
	t.Frame.RSP = stack
	if flags&cloneSetTLS != 0 {
		t.Frame.FSBase = tls
	}
	sched.Enqueue(i)
	sched.Kick(-1)
	return int64(t.TID)
}

// Kernel context, klock held.
func schedGetaffinity(size, mask uint64) int64 {
	const bytes = 8
	if size < bytes {
		return -errEINVAL
	}
	var bits uint64
	for i := 0; i < host.OnlineCPUs(); i++ {
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
		ns = host.WallBase() + host.Nanotime()
	case 1, 2, 3, 4, 6, 7, 9: // MONOTONIC(+RAW, COARSE), BOOTTIME, CPU-time clocks
		ns = host.Nanotime()
	default:
		return -errEINVAL
	}
	if !putTimespec(ts, ns) {
		return -errEFAULT
	}
	return 0
}

var randState uint64 = 0x9e3779b97f4a7c15

// Getrandom fills buf from splitmix64 seeded by the TSC: good enough for the runtime's hash
// seeds, not for cryptography.
//
// Kernel context, klock held (or boot, filling AT_RANDOM before any other CPU runs).
func Getrandom(buf, n uint64) int64 {
	n = min(n, maxGetrandom) // klock is held: a short count, as Linux may give
	if !UserRange(buf, n) {
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
			return Efault(i)
		}
	}
	return int64(n)
}

// negErrno is -e as a register value.
//
// Trap context allowed.
func negErrno(e int64) uint64 { return uint64(-e) }
