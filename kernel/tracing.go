package kernel

import (
	"sync/atomic"
	"syscall"
	"unsafe"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/kernel/sched"
	"tracebed/trap"
	"tracebed/xcall"
)

// What the in-kernel suites that exercise traps need from the kernel: running on a chosen CPU,
// switching a gate's type, a timer interrupt on demand, and facts about the address space.
// All of it is called from goroutine code.

// PinCPU makes the calling thread run on CPU n only, and returns once it does. Call it with
// the goroutine locked to its thread (runtime.LockOSThread). false if n is not online.
func PinCPU(n int) bool {
	if n < 0 || n >= ncpuOnline {
		return false
	}
	setPin(int32(n))
	for thisCPU().id != n {
		syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
	}
	return true
}

// UnpinCPU lets the calling thread run anywhere again.
func UnpinCPU() { setPin(-1) }

// setPin sets the calling thread's pin in a kernel call: see kcall.go for why goroutine code
// never takes klock itself.
func setPin(n int32) { kcall(kcPin, uintptr(n), 0) }

// SetGateType makes vector v's gate an interrupt gate (idt.TypeInterrupt) or a trap gate
// (idt.TypeTrap) on every CPU (the IDT is shared) and returns the type it had.
func SetGateType(v int, typ uint8) uint8 {
	g := &idtTable[v]
	prev := g.Type()
	setGate(v, typ, g.IST())
	return prev
}

// IDTMode is the entry-stub mode chosen at boot (idt=).
func IDTMode() idt.Mode { return idtConfig.Mode }

// HypervisorName is what CPUID reports (amd64.DetectHypervisor).
func HypervisorName() amd64.Hypervisor { return hypervisor }

// FireTimerIn arms this CPU's timer to interrupt in about ns nanoseconds; the timer
// interrupt re-arms it for the scheduler as usual. Call with interrupts off, or from trap
// context, so that the CPU is known.
//
// Trap context allowed (or kernel code with interrupts off).
func FireTimerIn(ns int64) { timerIn(ns) }

// PreemptSoon ends this CPU's time slice and raises its timer interrupt at once (a self-IPI):
// it is taken as soon as interrupts are on again — for a trap handler, before the instruction
// it returns to — and the scheduler switches to the next thread queued for this CPU, if any.
// How a suite gets a thread preempted at a chosen instruction.
//
// Trap context allowed (interrupts off).
func PreemptSoon() {
	c := thisCPU()
	c.sliceEnd = 0
	lapic.Self(vecTimer)
}

// SyncThreads is SyncCPUs that also takes a snapshot of where every thread is: it fills out
// with the saved RIP of each thread that is queued or blocked, and the interrupted RIP of each
// thread running on any CPU (read there by the serialising call itself, after any trap handler
// that CPU was running has returned — unless the handler runs on a trap gate and the call is
// drained from a lock wait nested in it, which idt.gate= can configure and fbt does not
// survive), as exact as if taken at one instant (syncThreads says why). It returns how many RIPs it stored (at most len(out)) and false if a CPU
// did not answer (the snapshot then lacks that CPU's thread).
//
// Goroutine code (a kernel call).
func SyncThreads(out []uint64) (int, bool) {
	if len(out) == 0 {
		return 0, SyncCPUs()
	}
	r := kcall(kcSyncThreads, uintptr(unsafe.Pointer(&out[0])), uintptr(len(out)))
	return int(r >> 1), r&1 != 0
}

// snapshotTries is how many times syncThreads takes its snapshot without klock before it
// takes one holding klock throughout.
const snapshotTries = 4

// SnapshotStats are SyncThreads' figures: snapshots taken, those retried because a CPU
// switched threads before it answered, and those that fell back to holding klock.
type SnapshotStats struct{ Taken, Retried, Locked uint64 }

var snapshotStats struct{ taken, retried, locked atomic.Uint64 }

// Snapshots is SyncThreads' figures so far. Goroutine code.
func Snapshots() SnapshotStats {
	return SnapshotStats{snapshotStats.taken.Load(), snapshotStats.retried.Load(), snapshotStats.locked.Load()}
}

// threadAnswers is what each CPU answers syncThreads with: the interrupted RIP of its current
// thread (0 if none), and its currentSeq then.
type threadAnswers struct{ rip, seq [MaxCPUs]uint64 }

// syncThreads is SyncThreads in the kernel: the result is n<<1 | ok.
//
// The queued and blocked threads are read with klock held, with every CPU's currentSeq, and
// klock is released before the serialising call: it is taken again only when the snapshot is
// retried too often. Holding klock across the call (as this once did) made every CPU woken
// from its idle halt by the call spin for klock right after answering; under TCG, on a 2-core
// host, those spinning vCPUs kept the host's cores from the caller and from the CPUs still to
// answer, and each such call took 5-7 ms instead of 0.1 (every per-probe disable, and every
// reaper snapshot). Read without klock, the snapshot is still exact when no CPU changed its
// current thread between the queue read and its answer: a thread missing from both halves
// would have to have left a CPU before that CPU answered (and not be queued at the read) or
// be queued after the read — only a thread that left a CPU, or a new one, whose RIP is no
// probe's copy. Queued threads' saved RIPs do not change until they run. A CPU that switched
// afterwards is no matter: a thread it loads then was read from the queue, one it saves had
// been answered for. Otherwise the snapshot is taken again.
//
// Kernel context (a kernel call).
func (c *CPU) syncThreads(out []uint64) uint64 {
	snapshotStats.taken.Add(1)
	for try := 0; ; try++ {
		locked := try == snapshotTries
		var ans threadAnswers
		var seq0 [MaxCPUs]uint64
		klock.lock()
		n := 0
		for i := int32(0); i < sched.Count() && n < len(out); i++ {
			if t := sched.T(i); t.State == sched.Runnable || t.State == sched.Blocked {
				out[n] = t.Frame.RIP
				n++
			}
		}
		for i := 0; i < ncpuOnline; i++ {
			seq0[i] = cpus[i].currentSeq.Load()
		}
		if locked {
			snapshotStats.locked.Add(1)
		} else {
			c.unlockKlock()
		}
		ok := CrossBroadcast(1<<uint(ncpuOnline)-1, syncThreadCall, uintptr(unsafe.Pointer(&ans))) == xcall.OK
		if !locked && ans.seq != seq0 {
			snapshotStats.retried.Add(1)
			continue
		}
		for i := 0; i < ncpuOnline && n < len(out); i++ {
			if ans.rip[i] != 0 && i != c.id { // this CPU's thread is the caller
				out[n] = ans.rip[i]
				n++
			}
		}
		if locked {
			c.unlockKlock()
		}
		return uint64(n)<<1 | b2u(ok)
	}
}

// syncThreadCall is syncThread, registered.
var syncThreadCall xcall.Func

// syncThread serialises this CPU (as serialize) and stores the interrupted RIP of the thread
// running on it (0 if none) and its currentSeq in the threadAnswers at arg. The thread's registers are at
// the top of the kernel stack whenever this CPU is in the kernel with a thread current: the
// call runs from the call IPI (the thread or the idle loop interrupted) or from a lock wait,
// never between a change of current and the frame's load (those run with klock held and
// interrupts off, and take no lock meanwhile).
//
// Trap context (a cross-CPU call).
func syncThread(arg uintptr) {
	amd64.CPUID(0, 0)
	c := thisCPU()
	var rip uint64
	if c.current >= 0 {
		rip = (*Frame)(unsafe.Pointer(c.kstack - unsafe.Sizeof(Frame{}))).RIP
	}
	a := (*threadAnswers)(unsafe.Pointer(arg))
	a.rip[c.id] = rip
	a.seq[c.id] = c.currentSeq.Load()
}

// KernelText is the kernel's text: mapped for good, and never written.
func KernelText() (start, end uintptr) { return kernelStart(), kernelTextEnd() }

// VecTimer is the vector of the LAPIC timer interrupt (counted by package trap).
const VecTimer = vecTimer

// UnmappedBase is the start of an address range the kernel never maps: the first quarter of
// the upper canonical half, 2^46 bytes of canonical addresses whose reads fault with #PF
// (tracing maps its areas higher up: textpoke.go).
const UnmappedBase = 0xffff_8000_0000_0000

// PVPoison is what the pvshim stubs leave in RCX and R11 (frame_amd64.h: PV_POISON).
const PVPoison = 0x7e57dead0000c0de

// KernelStackGuard is the guard page below CPU cpu's kernel stack: unmapped, unless the
// command line says stackguard=0.
//
// Trap context allowed.
func KernelStackGuard(cpu int) uintptr { return stackRegion(cpu).guardPages()[0] }

// Table is the kernel's own pclntab (function names and extents).
//
// Trap context allowed.
func Table() trap.Table { return kernelTable() }
