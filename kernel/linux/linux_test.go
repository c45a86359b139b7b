package linux

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/kernel/sched"
	"tracebed/trap"
)

// fakeHost is the kernel as the tests play it: a clock they set, and a log of what the
// address-space calls asked for.
type fakeHost struct {
	now, wallBase int64
	cpus          int
	outOfMemory   bool
	calls         []vmCall
	exited        []int
	unimplemented []uint64
}

type vmCall struct {
	op              string
	start, end, prt uint64
}

func (h *fakeHost) Nanotime() int64 { return h.now }
func (h *fakeHost) WallBase() int64 { return h.wallBase }
func (h *fakeHost) OnlineCPUs() int { return h.cpus }
func (h *fakeHost) Commit(start, end, prot uint64) bool {
	h.calls = append(h.calls, vmCall{"commit", start, end, prot})
	return !h.outOfMemory
}
func (h *fakeHost) Decommit(start, end uint64) {
	h.calls = append(h.calls, vmCall{"decommit", start, end, 0})
}
func (h *fakeHost) ZeroMapped(start, end uint64) {
	h.calls = append(h.calls, vmCall{"zero", start, end, 0})
}
func (h *fakeHost) MapMissing(start, end, prot uint64) bool {
	h.calls = append(h.calls, vmCall{"mapmissing", start, end, prot})
	return !h.outOfMemory
}
func (h *fakeHost) ExitGroup(status int)    { h.exited = append(h.exited, status) }
func (h *fakeHost) Unimplemented(nr uint64) { h.unimplemented = append(h.unimplemented, nr) }

// process starts a fresh process of n running threads and returns its host and the threads.
func process(t *testing.T, n int) (*fakeHost, []int32) {
	t.Helper()
	h := &fakeHost{now: 1_000_000, wallBase: 1_700_000_000e9, cpus: 4}
	Init(h)
	sched.Reset()
	var ids []int32
	for i := 0; i < n; i++ {
		id := sched.New()
		require.GreaterOrEqual(t, id, int32(0))
		sched.T(id).State = sched.Running
		sched.T(id).CPU = int32(i)
		ids = append(ids, id)
	}
	sched.TakeKicks()
	return h, ids
}

// sys makes system call nr with args as thread cur and returns the action and RAX as a
// signed result. The frame's RIP tells the calls apart in a blocked thread's saved frame.
func sys(cur int32, nr uint64, args ...uint64) (Action, int64, *trap.Frame) {
	var a [6]uint64
	copy(a[:], args)
	f := &trap.Frame{RAX: nr, RDI: a[0], RSI: a[1], RDX: a[2], R10: a[3], R8: a[4], R9: a[5],
		RIP: 0x400000 + nr}
	act := Syscall(cur, f)
	return act, int64(f.RAX), f
}

// addr is the address of a Go value, as a system call passes it. Go's heap does not move.
func addr[T any](p *T) uint64 { return uint64(uintptr(unsafe.Pointer(p))) }

func errno(e int64) int64 { return -e }

// timespec is a struct timespec in user memory.
type timespec struct{ sec, nsec int64 }

const (
	futexPrivate = 128
	bitsetAny    = 0xffffffff
)

// FUTEX_WAIT blocks only when the word still holds the expected value, and is refused on a
// misaligned word; FUTEX_WAKE wakes at most n waiters of that word, oldest index first, each
// with result 0, and kicks their CPUs.
func TestFutexWaitAndWake(t *testing.T) {
	_, th := process(t, 4)
	words := new([2]uint32)
	w0, w1 := addr(&words[0]), addr(&words[1])
	words[0] = 5

	act, r, _ := sys(th[0], nrFutex, w0, futexWait|futexPrivate, 4)
	assert.Equal(t, Resume, act)
	assert.Equal(t, errno(errEAGAIN), r, "the word changed before the wait")
	_, r, _ = sys(th[0], nrFutex, w0+1, futexWait, 5)
	assert.Equal(t, errno(errEINVAL), r, "misaligned")

	for _, i := range th[:2] {
		act, _, _ = sys(i, nrFutex, w0, futexWait|futexPrivate, 5)
		require.Equal(t, Switch, act)
		assert.Equal(t, uint32(sched.Blocked), sched.T(i).State)
		assert.Equal(t, uint32(sched.WaitFutex), sched.T(i).Wait)
		assert.Equal(t, uint64(0x400000+nrFutex), sched.T(i).Frame.RIP, "the caller's frame is saved")
		assert.Zero(t, sched.T(i).Deadline, "no timeout")
	}
	act, _, _ = sys(th[2], nrFutex, w1, futexWait, 0)
	require.Equal(t, Switch, act)

	_, r, _ = sys(th[3], nrFutex, w0, futexWake|futexPrivate, 1)
	assert.Equal(t, int64(1), r)
	assert.Equal(t, int32(1), sched.Queued())
	assert.Equal(t, uint32(sched.Runnable), sched.T(th[0]).State, "the first waiter")
	assert.Equal(t, uint64(0), sched.T(th[0]).Frame.RAX)
	assert.Equal(t, []int32{0}, sched.TakeKicks(), "its CPU is kicked")
	assert.Equal(t, uint32(sched.Blocked), sched.T(th[1]).State)

	_, r, _ = sys(th[3], nrFutex, w0, futexWake, 100)
	assert.Equal(t, int64(1), r, "only waiters of that word")
	assert.Equal(t, uint32(sched.Blocked), sched.T(th[2]).State)
	_, r, _ = sys(th[3], nrFutex, w0, futexWake, 1)
	assert.Equal(t, int64(0), r)
	_, r, _ = sys(th[3], nrFutex, w1+2, futexWake, 1)
	assert.Equal(t, errno(errEINVAL), r, "misaligned wake")
}

// Timeouts: FUTEX_WAIT's is relative, FUTEX_WAIT_BITSET's absolute (on the monotonic clock, or
// with FUTEX_CLOCK_REALTIME on the wall clock); the deadline wakes the waiter with -ETIMEDOUT,
// and one already past fails at once. An empty bitset is refused.
func TestFutexTimeouts(t *testing.T) {
	h, th := process(t, 3)
	word := new(uint32)
	ts := new(timespec)

	*ts = timespec{0, 5_000_000}
	act, _, _ := sys(th[0], nrFutex, addr(word), futexWait, 0, addr(ts))
	require.Equal(t, Switch, act)
	assert.Equal(t, h.now+5_000_000, sched.T(th[0]).Deadline, "relative")

	*ts = timespec{0, 7_000_000}
	act, _, _ = sys(th[1], nrFutex, addr(word), futexWaitBits, 0, addr(ts), 0, bitsetAny)
	require.Equal(t, Switch, act)
	assert.Equal(t, int64(7_000_000), sched.T(th[1]).Deadline, "absolute, monotonic")

	*ts = timespec{h.wallBase/1e9 + 1, 0}
	act, _, _ = sys(th[2], nrFutex, addr(word), futexWaitBits|futexRealtime, 0, addr(ts), 0, bitsetAny)
	require.Equal(t, Switch, act)
	assert.Equal(t, int64(1e9), sched.T(th[2]).Deadline, "absolute, wall clock")

	sched.WakeExpired(h.now + 5_000_000)
	assert.Equal(t, uint32(sched.Runnable), sched.T(th[0]).State)
	assert.Equal(t, errno(errETIMEDOUT), int64(sched.T(th[0]).Frame.RAX))
	assert.Equal(t, uint32(sched.Blocked), sched.T(th[1]).State)

	sched.Reset()
	_, th = process(t, 1)
	*ts = timespec{0, 1}
	act, r, _ := sys(th[0], nrFutex, addr(word), futexWaitBits, 0, addr(ts), 0, bitsetAny)
	assert.Equal(t, Resume, act)
	assert.Equal(t, errno(errETIMEDOUT), r, "a deadline already past")
	_, r, _ = sys(th[0], nrFutex, addr(word), futexWaitBits, 0, 0, 0, 0)
	assert.Equal(t, errno(errEINVAL), r, "an empty bitset")
	*ts = timespec{0, 1e9}
	_, r, _ = sys(th[0], nrFutex, addr(word), futexWait, 0, addr(ts))
	assert.Equal(t, errno(errEINVAL), r, "tv_nsec out of range")
}

// epoll and eventfd as the runtime's netpoller uses them: a thread parked in epoll_pwait on an
// eventfd is woken by a write to it, with the event written to its buffer.
func TestEpollWaitIsWokenByEventfd(t *testing.T) {
	h, th := process(t, 2)
	_, efd, _ := sys(th[0], nrEventfd2, 0, 0)
	_, epfd, _ := sys(th[0], nrEpollCreate1, 0)
	require.Equal(t, int64(3), efd)
	require.Equal(t, int64(4), epfd)

	ev := new([12]byte)
	binary.LittleEndian.PutUint32(ev[0:], epollIn)
	binary.LittleEndian.PutUint64(ev[4:], 0xabcdef)
	_, r, _ := sys(th[0], nrEpollCtl, uint64(epfd), epollCtlAdd, uint64(efd), addr(ev))
	require.Equal(t, int64(0), r)

	out := new([4 * epollEvSize]byte)
	act, r, _ := sys(th[0], nrEpollPwait, uint64(epfd), addr(out), 4, 0)
	assert.Equal(t, Resume, act)
	assert.Equal(t, int64(0), r, "nothing ready, timeout 0")

	act, _, _ = sys(th[0], nrEpollPwait, uint64(epfd), addr(out), 4, uint64(1<<32-1)) // timeout -1
	require.Equal(t, Switch, act)
	assert.Equal(t, uint32(sched.WaitEpoll), sched.T(th[0]).Wait)
	assert.Zero(t, sched.T(th[0]).Deadline, "no timeout")

	one := new(uint64)
	*one = 1
	_, r, _ = sys(th[1], nrWrite, uint64(efd), addr(one), 8)
	assert.Equal(t, int64(8), r)
	assert.Equal(t, uint32(sched.Runnable), sched.T(th[0]).State, "the write woke the waiter")
	assert.Equal(t, uint64(1), sched.T(th[0]).Frame.RAX, "one event")
	assert.Equal(t, uint32(epollIn), binary.LittleEndian.Uint32(out[0:]))
	assert.Equal(t, uint64(0xabcdef), binary.LittleEndian.Uint64(out[4:]))

	got := new(uint64)
	_, r, _ = sys(th[1], nrRead, uint64(efd), addr(got), 8)
	assert.Equal(t, int64(8), r)
	assert.Equal(t, uint64(1), *got)
	_, r, _ = sys(th[1], nrRead, uint64(efd), addr(got), 8)
	assert.Equal(t, errno(errEAGAIN), r, "the counter was read to zero")

	// A timed wait ends at its deadline with no events.
	sched.Reset()
	_, th = process(t, 1)
	_, efd, _ = sys(th[0], nrEventfd2, 0, 0)
	_, epfd, _ = sys(th[0], nrEpollCreate1, 0)
	sys(th[0], nrEpollCtl, uint64(epfd), epollCtlAdd, uint64(efd), addr(ev))
	act, _, _ = sys(th[0], nrEpollPwait, uint64(epfd), addr(out), 4, 10)
	require.Equal(t, Switch, act)
	assert.Equal(t, h.now+10_000_000, sched.T(th[0]).Deadline)
	sched.WakeExpired(h.now + 10_000_000)
	assert.Equal(t, uint64(0), sched.T(th[0]).Frame.RAX)
}

// epoll_ctl's answers, in Linux's terms.
func TestEpollCtlErrors(t *testing.T) {
	_, th := process(t, 1)
	_, epfd, _ := sys(th[0], nrEpollCreate1, 0)
	ev := new([12]byte)
	binary.LittleEndian.PutUint32(ev[0:], epollIn)
	var efds []int64
	for i := 0; i < maxWatches+1; i++ {
		_, fd, _ := sys(th[0], nrEventfd2, 0, 0)
		require.Greater(t, fd, int64(0))
		efds = append(efds, fd)
	}
	ctl := func(op uint64, fd int64) int64 {
		_, r, _ := sys(th[0], nrEpollCtl, uint64(epfd), op, uint64(fd), addr(ev))
		return r
	}
	assert.Equal(t, errno(errENOENT), ctl(epollCtlMod, efds[0]), "not watched")
	assert.Equal(t, errno(errENOENT), ctl(epollCtlDel, efds[0]), "not watched")
	for _, fd := range efds[:maxWatches] {
		require.Equal(t, int64(0), ctl(epollCtlAdd, fd))
	}
	assert.Equal(t, errno(errEEXIST), ctl(epollCtlAdd, efds[0]))
	assert.Equal(t, errno(errENOMEM), ctl(epollCtlAdd, efds[maxWatches]), "the set is full")
	assert.Equal(t, int64(0), ctl(epollCtlMod, efds[1]))
	assert.Equal(t, int64(0), ctl(epollCtlDel, efds[1]))
	assert.Equal(t, int64(0), ctl(epollCtlAdd, efds[maxWatches]), "a freed watch is reused")
	assert.Equal(t, errno(errEBADF), ctl(epollCtlAdd, 60), "a free fd")
	_, r, _ := sys(th[0], nrEpollCtl, uint64(efds[0]), epollCtlAdd, uint64(efds[1]), addr(ev))
	assert.Equal(t, errno(errEBADF), r, "not an epoll fd")
	_, r, _ = sys(th[0], nrClose, uint64(efds[0]))
	assert.Equal(t, int64(0), r)
	_, r, _ = sys(th[0], nrClose, uint64(efds[0]))
	assert.Equal(t, errno(errEBADF), r, "closed twice")
	_, r, _ = sys(th[0], nrClose, 1)
	assert.Equal(t, int64(0), r, "closing the console is allowed")
	_, r, _ = sys(th[0], nrRead, 1, addr(ev), 8)
	assert.Equal(t, int64(0), r, "and it stays the console (no input)")
}

// mmap places non-hinted mappings downward from mmapBase, honours MAP_FIXED and
// MAP_FIXED_NOREPLACE inside the runtime's part of the address space, and asks the kernel to
// commit, decommit or zero exactly the pages concerned.
func TestMmapFamily(t *testing.T) {
	h, th := process(t, 1)
	rw := uint64(ProtRead | ProtWrite)
	anon := uint64(MapPrivate | MapAnonymous)

	_, a, _ := sys(th[0], nrMmap, 0, 3*pageSize+1, rw, anon)
	assert.Equal(t, int64(mmapBase-4*pageSize), a, "rounded up to pages, below mmapBase")
	_, b, _ := sys(th[0], nrMmap, 0, pageSize, 0, anon)
	assert.Equal(t, a-pageSize, b, "placed below the last")
	assert.Equal(t, []vmCall{{"commit", uint64(a), uint64(a) + 4*pageSize, rw}, {"decommit", uint64(b), uint64(a), 0}},
		h.calls, "PROT_NONE reserves without committing")
	h.calls = nil

	fixed := uint64(UserBase + 16*pageSize)
	_, r, _ := sys(th[0], nrMmap, fixed, pageSize, rw, anon|MapFixed)
	assert.Equal(t, int64(fixed), r)
	_, r, _ = sys(th[0], nrMmap, fixed, pageSize, rw, anon|mapFixedNoreplace)
	assert.Equal(t, errno(errEEXIST), r)
	_, r, _ = sys(th[0], nrMmap, fixed, pageSize, rw, anon)
	assert.Equal(t, int64(b)-pageSize, r, "a hint that overlaps is ignored")
	_, r, _ = sys(th[0], nrMmap, UserBase-pageSize, pageSize, rw, anon|MapFixed)
	assert.Equal(t, errno(errEINVAL), r, "the kernel's identity map")
	_, r, _ = sys(th[0], nrMmap, UserTop-pageSize, 2*pageSize, rw, anon|MapFixed)
	assert.Equal(t, errno(errEINVAL), r, "past the lower half")
	_, r, _ = sys(th[0], nrMmap, fixed+1, pageSize, rw, anon|MapFixed)
	assert.Equal(t, errno(errEINVAL), r, "unaligned")
	_, r, _ = sys(th[0], nrMmap, 0, pageSize, rw, MapPrivate)
	assert.Equal(t, errno(errENODEV), r, "a file mapping")
	_, r, _ = sys(th[0], nrMmap, 0, 0, rw, anon)
	assert.Equal(t, errno(errEINVAL), r, "empty")
	_, r, _ = sys(th[0], nrMmap, 0, mmapBase, rw, anon)
	assert.Equal(t, errno(errENOMEM), r, "more than is left below mmapBase")

	h.calls = nil
	_, r, _ = sys(th[0], nrMunmap, fixed, pageSize+1)
	assert.Equal(t, int64(0), r)
	_, r, _ = sys(th[0], nrMmap, fixed, pageSize, rw, anon|mapFixedNoreplace)
	assert.Equal(t, int64(fixed), r, "munmap freed the range")
	_, r, _ = sys(th[0], nrMadvise, fixed, pageSize, madvDontneed)
	assert.Equal(t, int64(0), r)
	_, r, _ = sys(th[0], nrMprotect, fixed, pageSize, ProtRead)
	assert.Equal(t, int64(0), r)
	assert.Equal(t, []vmCall{{"decommit", fixed, fixed + 2*pageSize, 0}, {"commit", fixed, fixed + pageSize, rw},
		{"zero", fixed, fixed + pageSize, 0}, {"mapmissing", fixed, fixed + pageSize, ProtRead}}, h.calls)

	h.outOfMemory = true
	_, r, _ = sys(th[0], nrMmap, 0, pageSize, rw, anon)
	assert.Equal(t, errno(errENOMEM), r)
	_, r, _ = sys(th[0], nrMprotect, fixed, pageSize, rw)
	assert.Equal(t, errno(errENOMEM), r)
}

// Threads: clone makes a queued thread that resumes at the caller's RIP with RAX 0, its stack
// and TLS, and asks for any idle CPU; exit frees the caller; sched_yield yields; gettid and
// getpid answer as Linux does.
func TestThreadCalls(t *testing.T) {
	_, th := process(t, 1)
	act, tid, f := sys(th[0], nrClone, cloneVM|cloneThread|cloneSetTLS, 0x7000, 0, 0, 0x8000)
	assert.Equal(t, Resume, act)
	require.Equal(t, int64(sched.FirstTID+1), tid)
	assert.Equal(t, []int32{-1}, sched.TakeKicks())
	n := sched.Dequeue(3)
	require.GreaterOrEqual(t, n, int32(0))
	c := sched.T(n)
	assert.Equal(t, f.RIP, c.Frame.RIP)
	assert.Equal(t, uint64(0), c.Frame.RAX)
	assert.Equal(t, uint64(0x7000), c.Frame.RSP)
	assert.Equal(t, uint64(0x8000), c.Frame.FSBase)
	_, r, _ := sys(th[0], nrClone, cloneVM, 0x7000)
	assert.Equal(t, errno(errEINVAL), r, "a process, not a thread")

	_, r, _ = sys(n, nrGettid)
	assert.Equal(t, tid, r)
	_, r, _ = sys(n, nrGetpid)
	assert.Equal(t, int64(sched.FirstTID), r)
	act, r, _ = sys(n, nrSchedYield)
	assert.Equal(t, Yield, act)
	assert.Equal(t, int64(0), r)
	act, _, _ = sys(n, nrExit, 0)
	assert.Equal(t, Switch, act)
	assert.Equal(t, uint32(sched.Free), c.State)
}

// Clocks, affinity, exit_group and an unknown call.
func TestMiscCalls(t *testing.T) {
	h, th := process(t, 1)
	ts := new(timespec)
	_, r, _ := sys(th[0], nrClockGettime, 1, addr(ts))
	assert.Equal(t, int64(0), r)
	assert.Equal(t, timespec{0, h.now}, *ts, "CLOCK_MONOTONIC")
	sys(th[0], nrClockGettime, 0, addr(ts))
	assert.Equal(t, timespec{(h.wallBase + h.now) / 1e9, (h.wallBase + h.now) % 1e9}, *ts, "CLOCK_REALTIME")
	_, r, _ = sys(th[0], nrClockGettime, 99, addr(ts))
	assert.Equal(t, errno(errEINVAL), r)

	*ts = timespec{0, 500}
	act, _, _ := sys(th[0], nrNanosleep, addr(ts))
	require.Equal(t, Switch, act)
	assert.Equal(t, uint32(sched.WaitSleep), sched.T(th[0]).Wait)
	assert.Equal(t, h.now+500, sched.T(th[0]).Deadline)
	sched.T(th[0]).State = sched.Running

	mask := new(uint64)
	_, r, _ = sys(th[0], nrSchedGetaffin, 0, 8, addr(mask))
	assert.Equal(t, int64(8), r)
	assert.Equal(t, uint64(0b1111), *mask, "the online CPUs")
	_, r, _ = sys(th[0], nrSchedGetaffin, 0, 4, addr(mask))
	assert.Equal(t, errno(errEINVAL), r)

	sys(th[0], nrExitGroup, 3)
	assert.Equal(t, []int{3}, h.exited)

	_, r, _ = sys(th[0], 400)
	assert.Equal(t, errno(errENOSYS), r)
	sys(th[0], 400)
	assert.Equal(t, []uint64{400}, h.unimplemented, "reported once")

	buf := new([64]byte)
	_, r, _ = sys(th[0], nrGetrandom, addr(buf), 64)
	assert.Equal(t, int64(64), r)
	assert.NotEqual(t, [64]byte{}, *buf)
}
