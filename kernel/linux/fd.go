package linux

import (
	"tracebed/kernel/sched"
	"tracebed/trap"
)

// File descriptors: 0–2 are the serial console; eventfd and epoll exist for the runtime's
// netpoller, which parks an idle thread in epoll_pwait with a timer's timeout and breaks it
// out with a write to an eventfd (runtime/netpoll_epoll.go). Nothing else is a file here.

const (
	maxFDs      = 64
	maxWatches  = 8
	epollIn     = 0x1
	epollCtlAdd = 1
	epollCtlDel = 2
	epollCtlMod = 3
	epollEvSize = 12 // struct epoll_event is packed on x86-64
)

const (
	fdFree = iota
	fdConsole
	fdEventfd
	fdEpoll
)

type watch struct {
	fd     int32
	events uint32
	data   uint64
}

type fdesc struct {
	kind    uint8
	count   uint64 // eventfd counter
	watches [maxWatches]watch
	nwatch  int
}

var fds [maxFDs]fdesc

// Kernel context, klock held.
func allocFD(kind uint8) int64 {
	for i := range fds {
		if fds[i].kind == fdFree {
			fds[i] = fdesc{kind: kind}
			return int64(i)
		}
	}
	return -errEMFILE
}

// Kernel context, klock held.
func fdOf(fd int64, kind uint8) *fdesc {
	if fd < 0 || fd >= maxFDs || fds[fd].kind != kind {
		return nil
	}
	return &fds[fd]
}

// Kernel context, klock held.
func closeFD(fd int64) int64 {
	if fd < 0 || fd >= maxFDs || fds[fd].kind == fdFree {
		return -errEBADF
	}
	if fd > 2 {
		fds[fd].kind = fdFree
	}
	return 0
}

// sysWriteFD is write(2) for the fds other than the console (IsConsoleWrite).
//
// Kernel context, klock held.
func sysWriteFD(fd int64, buf, n uint64) int64 {
	if f := fdOf(fd, fdEventfd); f != nil {
		if n < 8 {
			return -errEINVAL
		}
		v, ok := getU64(buf)
		if !ok {
			return -errEFAULT
		}
		f.count += v
		eventfdReady(fd)
		return 8
	}
	return -errEBADF
}

// Kernel context, klock held.
func sysReadFD(fd int64, buf, n uint64) int64 {
	if f := fdOf(fd, fdEventfd); f != nil {
		if n < 8 {
			return -errEINVAL
		}
		if f.count == 0 {
			return -errEAGAIN // the runtime's eventfd is EFD_NONBLOCK
		}
		if !putU64(buf, f.count) {
			return -errEFAULT
		}
		f.count = 0
		return 8
	}
	if fdOf(fd, fdConsole) != nil {
		return 0 // no console input
	}
	return -errEBADF
}

// Kernel context, klock held.
func newEventfd(initval uint64) int64 {
	fd := allocFD(fdEventfd)
	if fd >= 0 {
		fds[fd].count = initval
	}
	return fd
}

// Kernel context, klock held.
func newEpoll() int64 { return allocFD(fdEpoll) }

// Kernel context, klock held.
func epollCtl(epfd int64, op uint64, fd int64, ev uint64) int64 {
	ep := fdOf(epfd, fdEpoll)
	if ep == nil || fd < 0 || fd >= maxFDs || fds[fd].kind == fdFree {
		return -errEBADF
	}
	for i := 0; i < ep.nwatch; i++ {
		w := &ep.watches[i]
		if w.fd != int32(fd) {
			continue
		}
		switch op {
		case epollCtlAdd:
			return -errEEXIST
		case epollCtlMod:
			nw, ok := getEpollEvent(ev)
			if !ok {
				return -errEFAULT
			}
			w.events, w.data = nw.events, nw.data
			return 0
		case epollCtlDel:
			ep.watches[i] = ep.watches[ep.nwatch-1]
			ep.nwatch--
			return 0
		}
	}
	if op != epollCtlAdd {
		return -errENOENT
	}
	if ep.nwatch == maxWatches {
		return -errENOMEM
	}
	nw, ok := getEpollEvent(ev)
	if !ok {
		return -errEFAULT
	}
	nw.fd = int32(fd)
	ep.watches[ep.nwatch] = nw
	ep.nwatch++
	return 0
}

// getEpollEvent reads a struct epoll_event (packed: u32 events, u64 data) from user memory.
//
// Trap context allowed.
func getEpollEvent(ev uint64) (watch, bool) {
	events, ok1 := getU32(ev)
	data, ok2 := getU64(ev + 4)
	return watch{events: events, data: data}, ok1 && ok2
}

// epollReady writes up to max ready events of epfd to buf and returns how many (-EFAULT when
// buf is bad before the first).
//
// Kernel context, klock held.
func epollReady(epfd int64, buf, max uint64) int64 {
	ep := fdOf(epfd, fdEpoll)
	if ep == nil {
		return -errEBADF
	}
	n := uint64(0)
	for i := 0; i < ep.nwatch && n < max; i++ {
		w := &ep.watches[i]
		if f := fdOf(int64(w.fd), fdEventfd); f != nil && f.count > 0 && w.events&epollIn != 0 {
			e := buf + n*epollEvSize
			if !putU32(e, epollIn) || !putU64(e+4, w.data) {
				return Efault(n)
			}
			n++
		}
	}
	return int64(n)
}

// epollWait returns epfd's ready events, or blocks thread cur until there are some or until
// the timeout (ms; negative: none) runs out.
//
// Kernel context, klock held.
func epollWait(cur int32, f *trap.Frame, epfd int64, buf, max uint64, timeoutMs int64) int64 {
	n := epollReady(epfd, buf, max)
	if n != 0 || timeoutMs == 0 {
		return n
	}
	var deadline int64
	if timeoutMs > 0 {
		deadline = host.Nanotime() + timeoutMs*1e6
	}
	sched.T(cur).Epfd = int32(epfd)
	sched.Block(cur, f, sched.WaitEpoll, deadline, 0)
	return blocked
}

// eventfdReady wakes threads in epoll_pwait on an epoll set that watches fd.
//
// Kernel context, klock held.
func eventfdReady(fd int64) {
	for i := int32(0); i < sched.Count(); i++ {
		t := sched.T(i)
		if t.State != sched.Blocked || t.Wait != sched.WaitEpoll {
			continue
		}
		// Ready events, or -EFAULT for a bad buffer; an epoll fd closed meanwhile (-EBADF) keeps
		// the waiter waiting, as on Linux.
		if n := epollReady(int64(t.Epfd), t.Frame.RSI, t.Frame.RDX); n > 0 || n == -errEFAULT {
			sched.Wake(i, uint64(n))
		}
	}
}
