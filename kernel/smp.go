package kernel

import (
	"sync/atomic"
	"tracebed/xcall"
	"unsafe"

	"tracebed/acpi"
	"tracebed/amd64"
	"tracebed/kernel/ktest"
)

// SMP: CPU discovery from the ACPI MADT, AP start-up, and the IPIs the scheduler and the
// memory code send.
//
// Start-up (SDM Vol. 3A, 8.4.4.1): the boot CPU starts the APs one at a time, in MADT order:
// it writes the AP's stack and CPU block into the trampoline page, sends INIT, waits 10 ms,
// sends SIPI twice 200 µs apart, then waits up to apStartTimeout for the AP to mark itself
// online. An AP that does not is reported and the boot ends with the fatal exit code: a test
// bed that silently ran on fewer CPUs than asked would give verdicts about the wrong machine.
//
// Every AP runs apMain: its own GDT, TSS and IST stacks (loadCPU), the shared IDT, the
// SYSCALL MSRs, its local APIC, and then the scheduler's idle loop on its kernel stack, where
// it waits for threads like the boot CPU does. The runtime starts only after all CPUs are
// online, so sched_getaffinity, runtime.NumCPU and GOMAXPROCS all see every CPU.

const (
	apStartTimeout = 2_000_000_000 // ns; a TCG vCPU thread on a busy host can take a while
	initDelay      = 10_000_000    // ns between INIT and the first SIPI
	sipiDelay      = 200_000       // ns between the two SIPIs
)

var (
	acpiInfo   acpi.Info
	acpiStatus acpi.Error
	ncpuFound  int // enabled CPUs the MADT lists (1 without ACPI)
	ncpuOnline int // CPUs running the scheduler: cpus[:ncpuOnline]
)

// physMemory reads the identity-mapped low 4 GiB for the ACPI parser.
func physMemory(addr uint64, n int) []byte {
	if n <= 0 || addr == 0 || addr+uint64(n) > identityTop || addr+uint64(n) < addr {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(uintptr(addr))), n)
}

// discoverCPUs parses the MADT and prepares a CPU block for each enabled CPU, the boot CPU
// first. It ends the boot when the machine has more CPUs than MaxCPUs.
func discoverCPUs(bsp *CPU) {
	var k kbuf
	ncpuFound = 1
	if boot.rsdp == 0 {
		k.s("tracebed: acpi: no RSDP in hvm_start_info; running on the boot CPU only").out()
		return
	}
	acpiStatus = acpi.Parse(physMemory, boot.rsdp, &acpiInfo)
	if cmdlineFlag("acpidump") {
		acpiDump()
	}
	if acpiStatus != acpi.OK {
		k.s("tracebed: ").s(acpiStatus.Error()).s("; running on the boot CPU only").out()
		return
	}
	if acpiInfo.NCPU > MaxCPUs {
		k.s("tracebed: fatal: the MADT lists ").dec(int64(acpiInfo.NCPU)).
			s(" CPUs; this kernel drives at most ").dec(MaxCPUs).s(" (kernel.MaxCPUs)").out()
		debugExit(ktest.ExitFatal)
	}
	n := 1
	for i := 0; i < acpiInfo.NCPU; i++ {
		if id := acpiInfo.CPUs[i].APICID; id != bsp.apicID {
			initCPU(n, id)
			n++
		}
	}
	if n != acpiInfo.NCPU {
		k.s("tracebed: acpi: the boot CPU (APIC ID ").dec(int64(bsp.apicID)).
			s(") is not in the MADT; starting the ").dec(int64(n - 1)).s(" listed APs").out()
	}
	ncpuFound = n
}

// acpiDump prints every table the root table lists, as hex, for capture into test images:
// "tracebed: acpi <address> <bytes>".
func acpiDump() {
	acpi.Walk(physMemory, boot.rsdp, func(addr uint64, b []byte) {
		consoleLock.lock()
		var k kbuf
		k.s("tracebed: acpi ").hex(addr).c(' ')
		consoleRaw(k.b[:k.n])
		for len(b) > 0 {
			k.n = 0
			for len(b) > 0 && k.n+2 <= len(k.b) {
				k.c("0123456789abcdef"[b[0]>>4]).c("0123456789abcdef"[b[0]&15])
				b = b[1:]
			}
			consoleRaw(k.b[:k.n])
		}
		consoleRaw([]byte{'\n'})
		consoleLock.unlock()
	})
}

// startAPs brings every discovered AP online, in order; see the file comment.
func startAPs() {
	page := (*[4096]byte)(unsafe.Pointer(uintptr(trampolineBase)))
	trampolineCode(page[:], trampolineBase)
	copy((*[4096]byte)(unsafe.Pointer(uintptr(stuckBase)))[:], stuckCode[:])
	stuck, _ := cmdlineInt("ap_stuck")
	var k kbuf
	for i := 1; i < ncpuFound; i++ {
		c := &cpus[i]
		trampolineData(page[:], uint32(kpt.root), uint64(c.kstack-unsafe.Sizeof(Frame{})),
			uint64(c.self), uint64(apEntryAddr()))
		vector := uint8(trampolineBase >> 12)
		if int64(i) == stuck {
			vector = stuckBase >> 12
			k.s("tracebed: ap_stuck=").dec(stuck).s(": cpu ").dec(int64(i)).
				s(" is sent to a page that halts").out()
		}
		t0 := nanotime()
		ok := lapic.INIT(c.apicID)
		spinFor(initDelay)
		ok = ok && lapic.SIPI(c.apicID, vector)
		spinFor(sipiDelay)
		ok = ok && lapic.SIPI(c.apicID, vector)
		for ok && atomic.LoadUint32(&c.online) == 0 && nanotime()-t0 < apStartTimeout {
			amd64.Pause()
		}
		if !ok || atomic.LoadUint32(&c.online) == 0 {
			k.s("tracebed: fatal: cpu ").dec(int64(i)).s(" (APIC ID ").dec(int64(c.apicID)).
				s(") did not come online within ").dec(apStartTimeout / 1e6).s(" ms")
			if !ok {
				k.s(" (the local APIC never accepted the INIT/SIPI)")
			}
			k.out()
			debugExit(ktest.ExitFatal)
		}
		c.startNs = nanotime() - t0
		ncpuOnline = i + 1
	}
}

func spinFor(ns int64) {
	for t := nanotime(); nanotime()-t < ns; {
		amd64.Pause()
	}
}

// apMain is where each AP's Go code starts (apEntry sets FS and GS for c first). It runs on
// the AP's kernel stack below the Frame the scheduler fills, and never returns.
func apMain(c *CPU) {
	loadCPU(c)
	loadIDT(c)
	initSyscalls()
	if lapic.X2 {
		lapic.EnableX2APIC()
	}
	lapic.Init(vecSpurious)
	xcall.SetOnline(c.id, c.apicID)
	atomic.StoreUint32(&c.online, 1)
	f := (*Frame)(unsafe.Pointer(c.kstack - unsafe.Sizeof(Frame{})))
	klock.lock()
	c.reschedule(f)
	c.unlockKlock()
	enterFrame(f)
}

// kickIdle sends a wake IPI to one idle CPU so it picks up the thread just queued: the
// thread's previous CPU when that one idles (its caches are warm), else the first idle one.
// A CPU already kicked and not yet awake is not kicked again. Called with klock held.
//
// Kernel context, klock held.
func kickIdle(prefer int32) {
	self := thisCPU()
	if prefer >= 0 && prefer < int32(ncpuOnline) && kick(&cpus[prefer], self) {
		return
	}
	for i := 0; i < ncpuOnline; i++ {
		if kick(&cpus[i], self) {
			return
		}
	}
}

// Kernel context, klock held.
func kick(c, self *CPU) bool {
	if c == self || !c.idling || c.kicked {
		return false
	}
	c.kicked = true
	self.wakeIPIsSent++
	self.kickAPIC[self.nkicks] = c.apicID // sent by unlockKlock
	self.nkicks++
	return true
}

// Lazy TLB, as Linux does it: a CPU halted in the idle loop runs no thread and touches no
// user mapping (kernel code and data are mapped once, at boot), so a shootdown skips it and it
// flushes its TLB itself, before it runs anything, if a shootdown happened while it idled.
// Waking 31 halted vCPUs for every munmap made a shootdown at 32 CPUs under TCG take long
// enough to starve vmLock's waiters past the watchdog's second.
//
// The handshake is Dekker's, on sequentially consistent atomics: the shooter bumps tlbGen and
// then reads each CPU's tlbLazy; a CPU leaving idle clears tlbLazy and then reads tlbGen. Either
// the shooter sees the CPU awake and calls it, or the CPU sees the new generation and flushes.
var tlbGen atomic.Uint64

// enterLazyTLB marks this CPU idle for shootdowns. Kernel context, about to halt.
//
// It must not take the current generation as clean: a shootdown that bumped tlbGen before
// this CPU read it, and read tlbLazy after the store below, would be skipped although this
// CPU's TLB still holds what the thread it just ran touched. tlbSeen only moves when the CPU
// flushes, to the generation read before the flush (every shootdown up to it had edited the
// page tables before bumping tlbGen).
func (c *CPU) enterLazyTLB() { c.tlbLazy.Store(true) }

// leaveLazyTLB ends the idle mark, flushing if a shootdown skipped this CPU. Kernel context.
func (c *CPU) leaveLazyTLB() {
	c.tlbLazy.Store(false)
	c.catchUpTLB()
}

// catchUpTLB flushes this CPU's TLB if a shootdown has happened since it last looked: before
// a lazy CPU runs cross-CPU calls (which may touch user memory), and when it leaves idle.
//
// Trap context.
func (c *CPU) catchUpTLB() {
	if noLazyCatchUp {
		return
	}
	if g := tlbGen.Load(); g != c.tlbSeen {
		c.tlbSeen = g
		amd64.WriteCR3(amd64.ReadCR3())
		c.tlbLazyFlushes++
	}
}

// runCalls runs the cross-CPU calls posted to this CPU, first catching up on skipped
// shootdowns if it is idle. Trap context.
func (c *CPU) runCalls() {
	if c.tlbLazy.Load() {
		c.catchUpTLB()
	}
	xcall.Drain(c.id)
}

// tlbShootdown makes every other online CPU that is not idle flush its TLB (idle ones catch up
// when they wake: lazy TLB above) and waits until each has: called with vmLock held after
// page-table entries were removed, before their frames can be reused.
// It is a cross-CPU call (xcall.Broadcast): running CPUs take the call IPI, a CPU
// spinning for klock or vmLock runs the flush from its lock wait, and one in a long stretch with
// interrupts off (a console write) drains between chunks. A CPU that does none of these is
// stuck, and the watchdog reports it.
//
// Kernel context, vmLock held.
func tlbShootdown() {
	self := thisCPU()
	if ncpuOnline < 2 || noShootdown {
		return
	}
	self.shootdowns++
	tlbGen.Add(1)
	others := uint64(0)
	for i := 0; i < ncpuOnline; i++ {
		if i == self.id {
			continue
		}
		if cpus[i].tlbLazy.Load() {
			self.tlbLazySkips++
			continue
		}
		others |= 1 << i
	}
	if others == 0 {
		return
	}
	if e := xcall.Broadcast(self.id, others, tlbFlushCall, 0); e != xcall.OK {
		var k kbuf // cannot happen: the function is registered and this CPU online
		k.s("tracebed: fatal: TLB shootdown refused: ").s(e.Error()).out()
		debugExit(ktest.ExitFatal)
	}
}

// noShootdown (tlbshootdown=0 on the command line) leaves other CPUs' TLBs stale after munmap:
// a mutation under which the xcall suite's tlb_shootdown_no_stale_reads must fail.
var noShootdown bool

// noLazyCatchUp (tlbshootdown=2) keeps skipping idle CPUs in shootdowns but drops their
// catch-up flush on waking: a mutation under which tlb_shootdown_no_stale_reads must fail
// (its readers block between reads, so their CPUs idle through the munmap).
var noLazyCatchUp bool

// tlbFlushCall names flushTLB for cross-CPU calls (initXcall).
var tlbFlushCall xcall.Func

// flushTLB flushes this CPU's TLB, for another CPU's shootdown.
//
// Trap context (run by xcall).
func flushTLB(uintptr) {
	c := thisCPU()
	g := tlbGen.Load()
	amd64.WriteCR3(amd64.ReadCR3())
	c.tlbSeen = g
	c.tlbFlushes++
}
