package kernel

import (
	"syscall"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/trap"
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
