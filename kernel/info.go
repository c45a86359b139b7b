package kernel

import "time"

// Read-only views of kernel state for Go code running on the hosted runtime (same address
// space; the values are plain words, read without klock).

// SinceRuntimeStart is how long ago the kernel entered the runtime.
func SinceRuntimeStart() time.Duration { return time.Duration(nanotime() - bootTime.runtime) }

// OnlineCPUs is the number of CPUs running the scheduler.
func OnlineCPUs() int { return ncpuOnline }

// SyscallCount returns how often system call nr has been made.
func SyscallCount(nr int) uint64 {
	if nr < 0 || nr >= maxSyscall {
		return 0
	}
	return syscallCount[nr]
}

// ContextSwitches is the number of times any CPU loaded a thread.
func ContextSwitches() uint64 {
	var n uint64
	for i := range cpus {
		n += cpus[i].switches
	}
	return n
}
