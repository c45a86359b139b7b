package kernel

import (
	"sync/atomic"
	"unsafe"

	"tracebed/idt"
	"tracebed/trap"
)

// Per-CPU state. Each CPU's GS base points at its CPU block for good (Go code uses FS, never
// GS, so no SWAPGS is needed). While the CPU is in the kernel its FS base points at CPU.tls, so
// that Go's g (loaded from FS:-8) is CPU.g: a g that carries only stack bounds covering this
// CPU's kernel stacks. Go code in the kernel may therefore use ordinary (splittable) functions:
// their prologue compares SP with g.stackguard0, which lies kstackReserve above the bottom of
// the kernel stack, so they never call morestack unless the kernel stack overflows — and then
// morestack dereferences g.m, which is nil, and faults at once instead of corrupting memory; the
// fault's entry sees an RSP below CPU.kstkMin and reports a stack overflow.
//
// Rules for kernel Go code (it runs outside the runtime's knowledge): no allocation, no
// pointer stores into the heap or globals after the runtime has started (no write barriers),
// no blocking on runtime primitives, no panics. State is held in fixed arrays of plain values.

// MaxCPUs bounds the CPUs the kernel drives (package trap keeps per-CPU state for as many).
const MaxCPUs = trap.MaxCPUs

// Kernel stack sizes. The kernel stack holds every frame and every handler (trap handlers
// nest on it, each below the one it interrupted); an IST stack holds an entry for the few
// instructions that move it, and the handlers of traps that interrupt those instructions (an
// interrupt inside a trap gate's move, say), hence a few KiB each rather than a few words.
//
// Every stack starts on a page boundary above an unmapped guard page, so that code overflowing
// it faults instead of writing into its neighbour. The kernel stack's lowest kstackReserve
// bytes are a second, software guard: Go's stack check (the kernel g's stackguard0) stops Go
// code above them (NOSPLIT chains and small frames may still go up to about 928 bytes below),
// and an entry whose interrupted RSP lies below the lowest kentryReserve bytes — below
// anything Go code reaches legitimately — is not nested further (commonEntry builds it where
// the CPU delivered it) but reported as a stack overflow. Between the two limits an entry
// nests, and its handler's first Go call faults in morestack; that fault's entry lies lower,
// and so on until one is below the entry limit: the report says overflow either way.
const (
	guardBytes    = pageSize
	kstackBytes   = 96 << 10
	kstackReserve = 4 << 10
	kentryReserve = 1 << 10
	istBytes      = 8 << 10
	dfBytes       = 16 << 10 // the double fault's handler runs on its IST stack
)

// cpuStacks is one CPU's stack region, [CPU.stkLo, CPU.stkHi); its size is a multiple of the
// page size.
type cpuStacks struct {
	kguard  [guardBytes]byte
	kstack  [kstackBytes]byte
	ist     [idt.NumIST - 1]istStack // IST slots other than ISTDF
	dfGuard [guardBytes]byte
	df      [dfBytes]byte
}

type istStack struct {
	guard [guardBytes]byte
	stack [istBytes]byte
}

// A cpuStacks is a whole number of pages, so that every guard page is one (unmapStackGuards
// unmaps them by page): this fails to compile otherwise.
var _ [0]struct{} = [unsafe.Sizeof(cpuStacks{}) % pageSize]struct{}{}

// stackMem holds every CPU's cpuStacks, from its first page boundary on (stackRegion).
var stackMem [MaxCPUs*unsafe.Sizeof(cpuStacks{}) + pageSize]byte

// stackRegion returns CPU i's stacks.
//
// Trap context allowed.
func stackRegion(i int) *cpuStacks {
	base := unsafe.Pointer(&stackMem[0])
	pad := -uintptr(base) & (pageSize - 1)
	return (*cpuStacks)(unsafe.Add(base, pad+uintptr(i)*unsafe.Sizeof(cpuStacks{})))
}

// istSlot returns IST slot n's stack (1 <= n <= idt.NumIST) and the guard page below it.
//
// Trap context allowed.
func (s *cpuStacks) istSlot(n int) (guard *[guardBytes]byte, stack []byte) {
	if n == idt.ISTDF {
		return &s.dfGuard, s.df[:]
	}
	j := n - 1
	if n > idt.ISTDF {
		j--
	}
	return &s.ist[j].guard, s.ist[j].stack[:]
}

// guardPages returns the start of the guard page below each of the region's stacks: index 0
// is the kernel stack's, index N (1..idt.NumIST) IST slot N's.
//
// Trap context allowed.
func (s *cpuStacks) guardPages() (g [idt.NumIST + 1]uintptr) {
	g[0] = uintptr(unsafe.Pointer(&s.kguard))
	for n := 1; n <= idt.NumIST; n++ {
		guard, _ := s.istSlot(n)
		g[n] = uintptr(unsafe.Pointer(guard))
	}
	return g
}

// CPU is the per-CPU block. The first seven fields are read by assembly (frame_amd64.h).
type CPU struct {
	self    uintptr // CPU_SELF
	kstack  uintptr // CPU_KSTACK: top of the kernel stack, where a thread's frame is built
	scratch uintptr // CPU_SCRATCH: the interrupted RSP during SYSCALL entry
	ktls    uintptr // CPU_KTLS: FS base while in the kernel
	stkLo   uintptr // CPU_STKLO, CPU_STKHI: this CPU's stack region (kernel and IST stacks)
	stkHi   uintptr
	kstkMin uintptr // CPU_KSTKMIN: an entry from below this finds the kernel stack overflowed

	id          int
	apicID      uint32
	current     int32        // the thread running here (a package sched index); -1 while idle
	online      uint32       // set by the CPU itself once it runs the scheduler
	idling      bool         // halted in the idle loop, klock released (guarded by klock)
	kicked      bool         // a wake IPI is on its way (guarded by klock)
	inNMI       bool         // running the NMI handler (cross-CPU calls are refused)
	nmiLatched  bool         // an NMI arrived while inNMI: run it when the handler ends
	nmiExpected atomic.Int32 // NMIs the kernel sent here and the handler has not yet seen
	lockWait    uint32       // spinning for a kernel lock (InLockWait)

	watchdogPolled int64 // when a lock wait of this CPU last looked for stuck CPUs (ns)
	startNs        int64 // how long the AP took from INIT to online

	sliceEnd int64 // when the running thread's time slice ends (ns)

	// LAPIC writes decided under klock and made after it is released (unlockKlock): under
	// TCG each takes QEMU's global lock, and with 32 vCPUs on 2 host cores holding klock
	// through them starved its waiters for over a second.
	timerSet   bool  // the timer is to be programmed
	timerDelta int64 // ns from when it was decided; 0 stops the timer
	nkicks     int   // wake IPIs to send
	kickAPIC   [MaxCPUs]uint32

	// Counters, written only by this CPU. Entries by vector (timer, IPIs, NMIs) are counted
	// by package trap (trap.Count).
	switches     uint64        // threads loaded
	currentSeq   atomic.Uint64 // bumped whenever current changes (klock held): SyncThreads' check
	idles        uint64        // halts in the idle loop
	wakeIPIsSent uint64
	shootdowns   uint64 // TLB shootdowns initiated
	tlbFlushes   uint64 // TLB flushes run for other CPUs' shootdowns

	tlbLazy        atomic.Bool // halted in the idle loop: shootdowns skip this CPU (lazy TLB)
	tlbSeen        uint64      // the shootdown generation this CPU's TLB is clean of
	tlbLazySkips   uint64      // CPUs this CPU's shootdowns skipped as idle
	tlbLazyFlushes uint64      // flushes made on waking for skipped shootdowns
	starvedLocks   uint64      // locks taken by a starvation claim (spinlock.lock)

	consoleSeen     uint64        // consoleChunks when this CPU's console-lock wait last looked
	consoleProgress atomic.Uint64 // console chunks written by or waited behind (watchdog progress)

	g   [32]uintptr // the kernel g: stack.lo, stack.hi, stackguard0, stackguard1, zero rest
	tls [2]uintptr  // tls[0] = &g; ktls = &tls[1]

	gdt  [gdtEntries]uint64
	tss  tss
	desc [10]byte // pseudo-descriptor scratch for LGDT
}

var cpus [MaxCPUs]CPU

// thisCPU returns the CPU block of the running CPU (GS:0).
//
// Trap context allowed.
func thisCPU() *CPU

// initCPU prepares CPU i's block and stacks; the CPU loads them with loadCPU.
func initCPU(i int, apicID uint32) *CPU {
	c := &cpus[i]
	s := stackRegion(i)
	c.self = uintptr(unsafe.Pointer(c))
	c.id = i
	c.apicID = apicID
	c.current = -1
	c.kstack = top(s.kstack[:])
	c.stkLo = uintptr(unsafe.Pointer(s))
	c.stkHi = c.stkLo + unsafe.Sizeof(*s)
	c.kstkMin = uintptr(unsafe.Pointer(&s.kstack[0])) + kentryReserve
	c.g[0] = uintptr(unsafe.Pointer(&s.kstack[0]))
	c.g[1] = c.stkHi
	c.g[2] = c.g[0] + kstackReserve
	c.g[3] = c.g[2]
	c.tls[0] = uintptr(unsafe.Pointer(&c.g[0]))
	c.ktls = uintptr(unsafe.Pointer(&c.tls[1]))
	for n := 1; n <= idt.NumIST; n++ {
		_, stack := s.istSlot(n)
		c.tss.setIST(n, top(stack))
	}
	c.tss.setRSP0(c.kstack)
	return c
}

// top returns the 16-byte aligned end of a stack.
func top(b []byte) uintptr {
	return (uintptr(unsafe.Pointer(&b[0])) + uintptr(len(b))) &^ 15
}
