package kernel

import (
	"time"
	"tracebed/kernel/linux"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/trap"
)

// Read-only views of kernel state for Go code running on the hosted runtime (same address
// space; the values are plain words, read without klock).

// SinceRuntimeStart is how long ago the kernel entered the runtime.
func SinceRuntimeStart() time.Duration { return time.Duration(nanotime() - bootTime.runtime) }

// OnlineCPUs is the number of CPUs running the scheduler.
func OnlineCPUs() int { return ncpuOnline }

// SyscallCount returns how often system call nr has been made.
func SyscallCount(nr int) uint64 { return linux.SyscallCount(nr) }

// ContextSwitches is the number of times any CPU loaded a thread.
func ContextSwitches() uint64 {
	var n uint64
	for i := range cpus {
		n += cpus[i].switches
	}
	return n
}

// CurrentCPU is the index of the CPU running the caller (it may move right after).
//
// Trap context allowed.
func CurrentCPU() int { return thisCPU().id }

// FoundCPUs is the number of enabled CPUs the ACPI MADT lists (1 without ACPI).
func FoundCPUs() int { return ncpuFound }

// Nanotime is the kernel's monotonic clock in ns (the TSC; no system call).
//
// Trap context allowed.
func Nanotime() int64 { return nanotime() }

// CPUStats are one CPU's counters.
type CPUStats struct {
	APICID         uint32
	StartNs        int64 // INIT to online (APs)
	Ticks          uint64
	Switches       uint64
	Idles          uint64
	WakeIPIs       uint64 // received
	WakeIPIsSent   uint64
	TLBFlushes     uint64 // run for other CPUs' shootdowns
	Shootdowns     uint64
	TLBLazySkips   uint64 // idle CPUs this CPU's shootdowns skipped
	TLBLazyFlushes uint64 // flushes on waking for shootdowns skipped while idle
	StarvedLocks   uint64 // kernel locks taken by a claim after waiting 50 ms
	TestIPIs       uint64
	NMIs           uint64
}

// CPUStat returns CPU i's counters (read without locks: each is a word its CPU updates; the
// per-vector ones come from package trap, which counts every entry).
func CPUStat(i int) CPUStats {
	if i < 0 || i >= ncpuOnline {
		return CPUStats{}
	}
	c := &cpus[i]
	return CPUStats{
		APICID: c.apicID, StartNs: c.startNs, Ticks: trap.Count(i, vecTimer), Switches: c.switches,
		Idles: c.idles, WakeIPIs: trap.Count(i, vecWake), WakeIPIsSent: c.wakeIPIsSent,
		TLBFlushes: c.tlbFlushes, Shootdowns: c.shootdowns,
		TLBLazySkips: c.tlbLazySkips, TLBLazyFlushes: c.tlbLazyFlushes, StarvedLocks: c.starvedLocks,
		TestIPIs: trap.Count(i, vecTest), NMIs: trap.Count(i, idt.NMI),
	}
}

// IPI kinds a test can send (SendTestIPI).
const (
	IPIFixed      = iota // vecTest to one CPU
	IPINMI               // NMI to one CPU
	IPISelf              // vecTest to the sender
	IPIAllButSelf        // vecTest to every other CPU
)

// SendTestIPI sends an IPI of the given kind (to CPU to, for IPIFixed and IPINMI) with
// interrupts off, so the sender is known, and returns the sending CPU. false if the target is
// not online or the local APIC did not accept the command.
func SendTestIPI(kind, to int) (from int, ok bool) {
	fl := amd64.DisableInterrupts()
	defer amd64.RestoreInterrupts(fl)
	from = thisCPU().id
	switch kind {
	case IPIFixed, IPINMI:
		if to < 0 || to >= ncpuOnline {
			return from, false
		}
		if kind == IPINMI {
			return from, sendNMI(&cpus[to])
		}
		return from, lapic.IPI(cpus[to].apicID, vecTest)
	case IPISelf:
		return from, lapic.Self(vecTest)
	case IPIAllButSelf:
		return from, lapic.AllButSelf(vecTest)
	}
	return from, false
}
