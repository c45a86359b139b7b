package kernel

import (
	"unsafe"

	"tracebed/amd64"
	"tracebed/apic"
	"tracebed/idt"
	"tracebed/kernel/ktest"
	"tracebed/kernel/linux"
	"tracebed/kernel/sched"
)

// Boot, from the first Go code to the Go runtime's entry point. kmain runs on the boot stack
// with a boot g (boot_amd64.s); nothing here may rely on package initialisers, which only run
// once the runtime has started.

var (
	boot       bootInfo
	hypervisor amd64.Hypervisor // from CPUID (leaf 0x40000000 and up)
	hvLeaf     uint32           // the CPUID leaf that named it, 0 for none
	idtTable   idt.Table
	bootTime   struct{ calibrated, runtime int64 } // ns on the monotonic clock
)

const (
	port8259MasterData = 0x21
	port8259SlaveData  = 0xa1
	userStackBytes     = 256 << 10 // the runtime assumes 64 KiB of g0 stack below its start
	lapicCalibrateNs   = 10_000_000
)

// kmain is called by entry64 with the physical address of hvm_start_info.
func kmain(startInfo uintptr) {
	// The firmware leaves the 8259s unmasked with IRQ0 at vector 8 (a "double fault").
	amd64.Out8(port8259MasterData, 0xff)
	amd64.Out8(port8259SlaveData, 0xff)
	com1.Init()
	var k kbuf
	k.s("tracebed: PVH entry, start_info at ").hex(uint64(startInfo)).out()
	if r := parseStartInfo(uint64(startInfo), &boot); r == startInfoLongCmdline {
		k.s("tracebed: fatal: the command line is longer than ").dec(maxCmdline - 1).s(" bytes").out()
		debugExit(ktest.ExitFatal)
	} else if r != startInfoOK {
		k.s("tracebed: fatal: bad hvm_start_info (").dec(int64(r)).s("): boot through PVH").out()
		debugExit(ktest.ExitFatal)
	}

	lapic.Base = uint32(amd64.RDMSR(amd64.MSR_APIC_BASE) &^ 0xfff)
	if apic.HasX2APIC() {
		lapic.EnableX2APIC()
	}
	c := initCPU(0, lapic.ID())
	loadCPU(c)
	hypervisor, hvLeaf = amd64.DetectHypervisor()
	parseIDTConfig()
	noPreempt = cmdlineFlag("nopreempt")
	if n, ok := cmdlineInt("nmilatch"); ok && n == 0 {
		noNMILatch = true
	}
	if n, ok := cmdlineInt("lockdrain"); ok && n == 0 {
		noLockDrain = true
	}
	if n, ok := cmdlineInt("tlbshootdown"); ok {
		noShootdown = n == 0
		noLazyCatchUp = n == 2
	}
	setupIDT()
	loadIDT(c)
	initMemory()
	initRefetch()
	if n, ok := cmdlineInt("wx"); !ok || n != 0 {
		protectKernel()
	}

	if !calibrateTSC() {
		k.s("tracebed: fatal: the PIT never counted down; cannot calibrate the TSC").out()
		debugExit(ktest.ExitFatal)
	}
	wallBase = readRTC() * 1e9
	bootTime.calibrated = nanotime()
	lapic.Init(vecSpurious)
	lapic.StartCount()
	t0 := nanotime()
	for nanotime()-t0 < lapicCalibrateNs {
	}
	elapsed := nanotime() - t0
	lapicHz = uint64(0xffffffff-lapic.Current()) * 1e9 / uint64(elapsed)
	initSyscalls()
	initXcall(c)
	initWatchdog()
	initConsoleBaud()
	linux.Init(&theHost)
	ncpuOnline = 1
	discoverCPUs(c)
	startAPs()
	protectTrampoline()
	banner()
	startRuntime(c)
}

// idtConfig is the gate type and IST slot of every vector and the stub mode, from the command
// line (idt=, idt.gate=, idt.ist=; package idt documents them).
var idtConfig idt.Config

// Stub sets in stubTable (idt.EntryStubs, written by go generate ./kernel).
const (
	stubsNative = 0
	stubsPV     = 256
	stubsShim   = 512
)

// parseIDTConfig reads the idt parameters; a bad one is fatal, in one line.
func parseIDTConfig() {
	idtConfig = idt.DefaultConfig()
	e := idt.ParseOK
	if v, ok := cmdlineValue("idt"); ok {
		idtConfig.Mode, e = idt.ParseMode(v)
	}
	if v, ok := cmdlineValue("idt.gate"); ok && e == idt.ParseOK {
		e = idtConfig.ParseGates(v)
	}
	if v, ok := cmdlineValue("idt.ist"); ok && e == idt.ParseOK {
		e = idtConfig.ParseISTs(v)
	}
	if e != idt.ParseOK {
		var k kbuf
		k.s("tracebed: fatal: ").s(e.Error()).out()
		debugExit(ktest.ExitFatal)
	}
	if e, v := idtConfig.Check(); e != idt.ParseOK {
		var k kbuf
		k.s("tracebed: fatal: ").s(e.Error()).s(" (vector ").dec(int64(v)).s(")").out()
		debugExit(ktest.ExitFatal)
	}
	if idtConfig.Mode == idt.XenPV && hypervisor != amd64.HVXen {
		var k kbuf
		k.s("tracebed: fatal: idt=xenpv needs Xen to build PV exception frames, but CPUID reports ").
			s(string(hypervisor)).s("; use idt=pvshim to run the PV stubs here").out()
		debugExit(ktest.ExitFatal)
	}
}

// setupIDT fills the shared IDT from idtConfig.
func setupIDT() {
	for v := 0; v < 256; v++ {
		setGate(v, idtConfig.Type[v], idtConfig.IST[v])
	}
}

// setGate points vector v's gate at the stub idtConfig.Mode selects for it.
func setGate(v int, typ, ist uint8) {
	stub := stubAddr(stubsNative + v)
	switch {
	case idtConfig.Mode == idt.PVShim && idt.IsPV(v):
		stub = stubAddr(stubsShim + v)
	case idtConfig.Mode == idt.XenPV && idt.IsPV(v):
		stub = stubAddr(stubsPV + v)
	}
	idtTable[v].Set(uint64(stub), selCode, ist, typ, 0)
}

// loadIDT makes the running CPU use the shared IDT.
func loadIDT(c *CPU) {
	amd64.LIDT(pseudoDescriptor(&c.desc, uintptr(unsafe.Pointer(&idtTable)), idt.Limit))
}

func initSyscalls() {
	amd64.WRMSR(amd64.MSR_STAR, uint64(selCode)<<32)
	amd64.WRMSR(amd64.MSR_LSTAR, uint64(syscallEntryAddr()))
	amd64.WRMSR(amd64.MSR_SFMASK, amd64.RFLAGS_IF|amd64.RFLAGS_TF|amd64.RFLAGS_DF|amd64.RFLAGS_AC)
}

func initMemory() {
	pmem.init(0, pmemBits[:], identityTop/pageSize)
	for i := 0; i < boot.nmem; i++ {
		if r := boot.mem[i]; r.typ == memRAM {
			pmem.release(r.base, r.size)
		}
	}
	pmem.reserve(0, 1<<20) // real-mode area, firmware, the future AP trampoline
	img := uint64(kernelStart()) &^ (1<<20 - 1)
	pmem.reserve(img, uint64(kernelEnd())-img)
	kpt = pageTable{root: amd64.ReadCR3() & pteAddr, alloc: &pmem}
	unmapNullPage()
	if n, ok := cmdlineInt("stackguard"); !ok || n != 0 {
		unmapStackGuards()
	}
}

// unmapNullPage leaves page 0 unmapped, so that a nil pointer dereference faults (a fatal trap
// with CR2 near 0) instead of reading the firmware's data there, and a NULL system-call pointer
// gets EFAULT. The boot tables map it inside a 2 MiB page, which is split first. Boot.
func unmapNullPage() {
	if r := kpt.splitHuge(0); r != ptOK {
		var k kbuf
		k.s("tracebed: fatal: cannot split the first 2 MiB page (").dec(int64(r)).s(")").out()
		debugExit(ktest.ExitFatal)
	}
	kpt.unmapPage(0)
	invlpg(0)
}

// unmapStackGuards unmaps the guard page below every stack of every CPU (percpu.go), so that
// overflowing one faults. stackguard=0 on the command line leaves them mapped: a mutation
// under which the fault_guard suite must fail. Boot, before any other CPU runs.
func unmapStackGuards() {
	for i := 0; i < MaxCPUs; i++ {
		for _, g := range stackRegion(i).guardPages() {
			va := uint64(g)
			if r := kpt.splitHuge(va); r != ptOK {
				var k kbuf
				k.s("tracebed: fatal: cannot split the 2 MiB page at ").hex(va).s(" (").dec(int64(r)).s(")").out()
				debugExit(ktest.ExitFatal)
			}
			kpt.unmapPage(va)
			invlpg(va)
		}
	}
}

// startRuntime builds the initial process stack the Linux ABI promises (argc, argv, envp,
// auxv: SysV ABI AMD64 3.4.1) and enters _rt0_amd64_linux as the first thread.
func startRuntime(c *CPU) {
	base := linux.Mmap(0, userStackBytes, linux.ProtRead|linux.ProtWrite, linux.MapPrivate|linux.MapAnonymous)
	if base < 0 {
		var k kbuf
		k.s("tracebed: fatal: no memory for the initial stack").out()
		debugExit(ktest.ExitFatal)
	}
	sp := uint64(base) + userStackBytes
	push := func(s string) uint64 {
		sp -= uint64(len(s) + 1)
		b := kernelBytes(sp, uint64(len(s)+1))
		copy(b, s)
		b[len(s)] = 0
		return sp
	}
	var argv [64]uint64
	nwords := 0
	cmdlineWords(func(string) bool { nwords++; return true })
	if nwords > len(argv)-2 {
		// Words past argv would reach the kernel's own lookups but never the validation of
		// ktest.ParseCmdline.
		var k kbuf
		k.s("tracebed: fatal: the command line has ").dec(int64(nwords)).s(" words; at most ").
			dec(int64(len(argv) - 2)).s(" reach the test runner").out()
		debugExit(ktest.ExitFatal)
	}
	argc := 0
	argv[argc] = push("tracebed")
	argc++
	cmdlineWords(func(w string) bool {
		argv[argc] = push(w)
		argc++
		return argc < len(argv)-1
	})
	env := push("GODEBUG=asyncpreemptoff=1")
	sp -= 16
	random := sp
	linux.Getrandom(random, 16)
	const (
		atNull   = 0
		atPagesz = 6
		atRandom = 25
	)
	words := [...]uint64{atPagesz, pageSize, atRandom, random, atNull, 0}
	n := 1 + argc + 1 + 2 + len(words)
	sp = (sp - uint64(n)*8) &^ 15
	w := sp
	put := func(v uint64) { *u64(w) = v; w += 8 }
	put(uint64(argc))
	for i := 0; i < argc; i++ {
		put(argv[i])
	}
	put(0)
	put(env)
	put(0)
	for _, v := range words {
		put(v)
	}

	i := sched.New()
	t := sched.T(i)
	t.Frame = Frame{RIP: uint64(rt0Addr()), CS: selCode, SS: selData, RSP: sp,
		RFLAGS: amd64.RFLAGS_IF | 2}
	initFX(&t.Frame)
	f := (*Frame)(unsafe.Pointer(c.kstack - unsafe.Sizeof(Frame{})))
	bootTime.runtime = nanotime()
	watchdog.running.Store(true)
	klock.lock()
	c.resume(i, f)
	c.armTimer()
	c.unlockKlock()
	enterFrame(f)
}

// initFX gives a new thread the FPU/SSE state after FNINIT: FCW 0x37f, MXCSR 0x1f80 (all
// exceptions masked; SDM Vol. 1, 10.5.1).
func initFX(f *Frame) {
	f.FX[0], f.FX[1] = 0x7f, 0x03
	f.FX[24], f.FX[25] = 0x80, 0x1f
}
