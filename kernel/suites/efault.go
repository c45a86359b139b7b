package suites

import (
	"syscall"
	"unsafe"

	"tracebed/kernel/ktest"
)

// efaultCases: system calls given bad pointers answer -EFAULT, as on Linux, and the kernel goes
// on (before, the system-call host dereferenced them directly: a fatal #PF under klock, or a
// hang when it happened inside a console write).
func efaultCases(t *ktest.T) {
	const nonCanonical = 0x8000_0000_0000_0000
	bad := []uintptr{unmapped, nonCanonical, 0xffff_0000_0000_0000, 0} // page 0 is unmapped
	calls, efaults := 0, 0
	expect := func(what string, ptr uintptr, errno syscall.Errno) {
		calls++
		if errno == syscall.EFAULT {
			efaults++
		} else {
			t.Errorf("%s(%#x): errno %d (%v), want EFAULT", what, ptr, int(errno), errno)
		}
	}
	for _, p := range bad {
		_, _, e := syscall.Syscall(syscall.SYS_WRITE, 1, p, 16)
		expect("write", p, e)
		_, _, e = syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, p, 0)
		expect("clock_gettime", p, e)
		_, _, e = syscall.Syscall(syscall.SYS_NANOSLEEP, p, 0, 0)
		expect("nanosleep", p, e)
		_, _, e = syscall.Syscall6(syscall.SYS_FUTEX, p, 0 /* FUTEX_WAIT */, 0, 0, 0, 0)
		expect("futex(addr)", p, e)
		_, _, e = syscall.Syscall(syscall.SYS_SCHED_GETAFFINITY, 0, 8, p)
		expect("sched_getaffinity", p, e)
		_, _, e = syscall.Syscall(318 /* getrandom */, p, 16, 0)
		expect("getrandom", p, e)
		if p == 0 {
			continue // NULL is valid below: no timeout (the wait would block for good), no mask
		}
		var word uint32
		_, _, e = syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), 0, 0, p, 0, 0)
		expect("futex(timeout)", p, e)
		_, _, e = syscall.Syscall6(syscall.SYS_RT_SIGPROCMASK, 0, 0, p, 8, 0, 0)
		expect("rt_sigprocmask(oldset)", p, e)
		_, _, e = syscall.Syscall6(syscall.SYS_RT_SIGPROCMASK, 0, p, 0, 8, 0, 0)
		expect("rt_sigprocmask(set)", p, e)
	}
	// A range that wraps past 2^64 (its end would be mapped low memory).
	_, _, werr := syscall.Syscall(syscall.SYS_WRITE, 1, ^uintptr(0)-7, 64)
	expect("write(wrapping)", ^uintptr(0)-7, werr)
	t.Diag("bad_pointer_calls", calls)
	t.Diag("efault_returns", efaults)

	// Well-formed pointers to bad values get EINVAL, as on Linux.
	badTime := [2]int64{0, 2_000_000_000} // tv_nsec out of range
	if _, _, e := syscall.Syscall(syscall.SYS_NANOSLEEP, uintptr(unsafe.Pointer(&badTime)), 0, 0); e != syscall.EINVAL {
		t.Errorf("nanosleep with tv_nsec 2e9: errno %v, want EINVAL", e)
	}
	var words [2]uint32
	odd := uintptr(unsafe.Pointer(&words[0])) + 1
	if _, _, e := syscall.Syscall6(syscall.SYS_FUTEX, odd, 0, 0, 0, 0, 0); e != syscall.EINVAL {
		t.Errorf("futex on an unaligned word: errno %v, want EINVAL", e)
	}
	var set uint64
	if _, _, e := syscall.Syscall6(syscall.SYS_RT_SIGPROCMASK, 7, uintptr(unsafe.Pointer(&set)), 0, 8, 0, 0); e != syscall.EINVAL {
		t.Errorf("rt_sigprocmask with how 7: errno %v, want EINVAL", e)
	}

	// A buffer that runs off the end of a mapping: write(2) writes what it could read. (Raw
	// mmap/munmap: syscall.Munmap unmaps only whole mappings.)
	const page = 4096
	base, _, e := syscall.Syscall6(syscall.SYS_MMAP, 0, 2*page, syscall.PROT_READ|syscall.PROT_WRITE,
		syscall.MAP_ANON|syscall.MAP_PRIVATE, ^uintptr(0), 0)
	if e != 0 {
		t.Errorf("mmap: %v", e)
		return
	}
	defer syscall.Syscall(syscall.SYS_MUNMAP, base, page, 0)
	if _, _, e := syscall.Syscall(syscall.SYS_MUNMAP, base+page, page, 0); e != 0 {
		t.Errorf("munmap of the second page: %v", e)
		return
	}
	line := "# efault: partial write\n"
	start := base + page - uintptr(len(line))
	copy(unsafe.Slice((*byte)(unsafe.Pointer(start)), len(line)), line)
	r, _, e := syscall.Syscall(syscall.SYS_WRITE, 1, start, uintptr(len(line)+64))
	t.Diag("partial_write_bytes", int64(r))
	if e != 0 || int(r) != len(line) {
		t.Errorf("write across the end of a mapping: %d bytes, errno %v; want %d bytes", int64(r), e, len(line))
	}
}
