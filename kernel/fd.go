package kernel

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

func initFDs() {
	for i := 0; i < 3; i++ {
		fds[i].kind = fdConsole
	}
}

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

// maxConsoleWrite bounds one write(2) to the console: it runs with interrupts off, so a larger
// one returns a short count and the caller writes the rest (Go's os.File does).
const maxConsoleWrite = 64 << 10

// writeConsole writes n bytes of user memory at buf to the console, a chunk at a time through
// the fault-safe copy, under the console lock for the whole write (one write(2) is one piece of
// output, as on a Linux tty); a bad pointer ends it with -EFAULT, or the count already written.
// Kernel context, klock not held: output may be long, and must not hold up other system calls.
func writeConsole(buf, n uint64) int64 {
	if !userRange(buf, n) {
		return -errEFAULT
	}
	n = min(n, maxConsoleWrite)
	var chunk [256]byte
	done := uint64(0)
	held := consoleAcquire()
	for done < n {
		m := min(n-done, uint64(len(chunk)))
		got := uint64(copyIn(chunk[:m], buf+done))
		if held && consoleMine() { // a fatal report may seize the console mid-write
			consoleRaw(chunk[:got])
		}
		done += got
		if got < m {
			break
		}
		drainTLB() // interrupts are off and this is no spin wait: serve shootdowns between chunks
	}
	if held {
		consoleRelease()
	}
	if done < n {
		return efault(done)
	}
	return int64(n)
}

// sysWriteFD is write(2) for the fds other than the console (see syscall). Kernel context, klock held.
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
				return efault(n)
			}
			n++
		}
	}
	return int64(n)
}

// Kernel context, klock held.
func (c *CPU) epollWait(f *Frame, epfd int64, buf, max uint64, timeoutMs int64) int64 {
	n := epollReady(epfd, buf, max)
	if n != 0 || timeoutMs == 0 {
		return n
	}
	var deadline int64
	if timeoutMs > 0 {
		deadline = nanotime() + timeoutMs*1e6
	}
	threads[c.current].epfd = int32(epfd)
	c.block(f, waitEpoll, deadline, 0)
	return blocked
}

// eventfdReady wakes threads in epoll_pwait on an epoll set that watches fd.
//
// Kernel context, klock held.
func eventfdReady(fd int64) {
	for i := int32(0); i < nthreads; i++ {
		t := &threads[i]
		if t.state != thBlocked || t.wait != waitEpoll {
			continue
		}
		// Ready events, or -EFAULT for a bad buffer; an epoll fd closed meanwhile (-EBADF) keeps
		// the waiter waiting, as on Linux.
		if n := epollReady(int64(t.epfd), t.frame.RSI, t.frame.RDX); n > 0 || n == -errEFAULT {
			wake(i, uint64(n))
		}
	}
}
