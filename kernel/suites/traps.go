package suites

import (
	"fmt"
	"math/rand"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/arch/x86/x86asm"

	"tracebed/amd64"
	"tracebed/idt"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
	"tracebed/trap"
)

// Traps proves the kernel's own IDT on every CPU: breakpoints, single-step (plain, over
// emulated instructions, under STI and MOV SS blocking), hardware breakpoints and watchpoints,
// page faults and #GP with their error codes, fault-safe reads of random addresses, interrupts
// nesting in a trap gate's handler but not an interrupt gate's, traps nested in handlers, and
// RCX/R11 intact across every entry (the point of the idt=pvshim run), and an NMI let in early
// by a fault's IRET inside the NMI handler held until the handler returns. Case names follow
// kvm-unit-tests x86/debug.c where they overlap.
var Traps = ktest.Suite{Name: "traps", Cases: []ktest.Case{
	{Name: "idt_mode", Run: idtMode},
	{Name: "int3", Run: eachCPU(caseInt3)},
	{Name: "icebp", Run: eachCPU(caseICEBP)},
	{Name: "single_step_basic", Run: eachCPU(stepCase(siteStepBasic, stepBasic, 0, 3))},
	{Name: "single_step_emulated_instructions", Run: eachCPU(stepCase(siteStepEmulated, stepEmulated, 0, 8))},
	{Name: "single_step_sti_blocking", Run: eachCPU(stiCase)},
	{Name: "single_step_movss_blocking", Run: eachCPU(stepCase(siteStepMovSS, stepMovSS, 1, 3))},
	{Name: "hw_breakpoint_exec", Run: eachCPU(caseHWExec)},
	{Name: "hw_watchpoint_write", Run: eachCPU(caseHWWatch(amd64.DR7RWWrite))},
	{Name: "hw_watchpoint_read_write", Run: eachCPU(caseHWWatch(amd64.DR7RWRead))},
	{Name: "page_fault_cr2_error_code", Run: eachCPU(casePageFault)},
	{Name: "gp_non_canonical", Run: eachCPU(caseNonCanonical)},
	{Name: "nested_traps_in_bp_handler", Run: eachCPU(caseNested)},
	{Name: "timer_in_bp_trap_gate", Run: eachCPU(caseTimerInBP)},
	{Name: "safe_load_random_100k", Run: caseSafeLoads},
	{Name: "rcx_r11_intact", Run: eachCPU(caseRegsIntact)},
	{Name: "nmi_never_nests", Run: eachCPU(caseNMINest)},
}}

// Routines in traps_amd64.s.
//
// Trap context allowed. (The nested-trap case runs it inside a #BP handler.)
func int3Site()
func icebpSite()
func stepBasic()
func stepEmulated()
func stepSTI()
func stepMovSS()
func execSite()
func loadSite(addr uintptr) uint64
func storeSite(addr uintptr, v uint64)
func bxLoadSite()
func regsAcross(fn, addr, c, r11 uintptr) (rc, rr11 uintptr)
func nmiWait(ready *uint32, count *uint64, old uint64, c, r11 uintptr) (rc, rr11 uintptr)
func trapSites(out *[numSites]uintptr)

const (
	siteInt3 = iota
	siteICEBP
	siteStepBasic
	siteStepEmulated
	siteStepSTI
	siteStepMovSS
	siteExec
	siteLoad
	siteStore
	siteBXLoad
	numSites
)

var sites [numSites]uintptr

// insn is one decoded instruction of a site.
type insn struct {
	addr uintptr
	len  int
	op   x86asm.Op
}

// decodeSite decodes a routine up to its RET.
func decodeSite(s int) ([]insn, error) {
	pc := sites[s]
	var out []insn
	for len(out) < 64 {
		code := unsafe.Slice((*byte)(unsafe.Pointer(pc)), 16)
		in, err := x86asm.Decode(code, 64)
		if err != nil {
			return nil, fmt.Errorf("decode site %d at %#x: %w", s, pc, err)
		}
		out = append(out, insn{pc, in.Len, in.Op})
		if in.Op == x86asm.RET {
			return out, nil
		}
		pc += uintptr(in.Len)
	}
	return nil, fmt.Errorf("site %d: no RET", s)
}

// Per-CPU records the handlers fill (trap context: plain values only).
const maxRecords = 16

type record struct {
	vector, err, rip, cr2, dr6, rcx, r11, rflags uint64
	depth                                        int32
}

type cpuLog struct {
	armed   uint32 // a bit per vector the handlers accept now
	setRF   bool   // set RFLAGS.RF on #DB (execution breakpoints are faults)
	skipRIP uint64 // a #PF/#GP at this RIP resumes skipLen bytes further
	skipLen uint64
	n       int
	recs    [maxRecords]record
	bpMode  uint32 // what the #BP handler does besides recording (bp*)
	// timer_in_bp_trap_gate: what the #BP handler saw while it waited for the timer.
	bpIF, bpNestedTimer bool
	bpWaitNs            int64
	// nested_traps_in_bp_handler
	innerFault [2]trap.Fault
	nmis       uint64 // NMIs recorded (nmiWait spins on it)
	_          [64]byte
}

const (
	bpRecord = iota
	bpWaitTimer
	bpNest
)

var logs [trap.MaxCPUs]cpuLog

// Trap context allowed.
func (l *cpuLog) add(f *trap.Frame, dr6 uint64) {
	if l.n < maxRecords {
		l.recs[l.n] = record{vector: f.Vector, err: f.Err, rip: f.RIP, cr2: f.CR2, dr6: dr6,
			rcx: f.RCX, r11: f.R11, rflags: f.RFLAGS, depth: trap.Depth(kernel.CurrentCPU())}
	}
	l.n++
}

const rflagsRF = 1 << 16

// onDebug records a #DB. Trap context.
func onDebug(f *trap.Frame) bool {
	l := &logs[kernel.CurrentCPU()]
	if l.armed&(1<<idt.Debug) == 0 {
		return pass(f)
	}
	dr6 := amd64.ReadDR6()
	amd64.WriteDR6(amd64.DR6_Reset) // the CPU never clears DR6 itself
	l.add(f, dr6)
	if l.setRF && dr6&0xf != 0 {
		f.RFLAGS |= rflagsRF // resume past the execution breakpoint without re-triggering it
	}
	return true
}

// onBreakpoint records a #BP and does what bpMode asks. Trap context.
func onBreakpoint(f *trap.Frame) bool {
	cpu := kernel.CurrentCPU()
	l := &logs[cpu]
	if l.armed&(1<<idt.Breakpoint) == 0 || uintptr(f.RIP)-1 != sites[siteInt3] {
		return pass(f) // not ours: an FBT probe's, say
	}
	l.add(f, 0)
	switch l.bpMode {
	case bpWaitTimer:
		l.bpIF = amd64.Flags()&amd64.RFLAGS_IF != 0
		fl := amd64.DisableInterrupts()
		before := trap.NestedCount(cpu, kernel.VecTimer)
		kernel.FireTimerIn(500_000)
		amd64.RestoreInterrupts(fl)
		t0 := kernel.Nanotime()
		for kernel.Nanotime()-t0 < 20_000_000 && trap.NestedCount(cpu, kernel.VecTimer) == before {
		}
		l.bpNestedTimer = trap.NestedCount(cpu, kernel.VecTimer) != before
		l.bpWaitNs = kernel.Nanotime() - t0
	case bpNest:
		if trap.Depth(cpu) == 1 {
			_, l.innerFault[0] = trap.SafeLoad64(kernel.UnmappedBase + 0x1230) // #PF at depth 2
			int3Site()                                                         // #BP at depth 2
		} else {
			_, l.innerFault[1] = trap.SafeLoad64(0x8000_0000_0000_0000) // #GP at depth 3
		}
	}
	return true
}

// onFault records a #PF or #GP at the armed RIP and resumes after the instruction. Trap
// context.
//
// Trap context.
func onFault(f *trap.Frame) bool {
	l := &logs[kernel.CurrentCPU()]
	if l.armed&(1<<f.Vector) == 0 || f.RIP != l.skipRIP {
		return pass(f)
	}
	l.add(f, 0)
	f.RIP += l.skipLen
	return true
}

// onUD records a #UD at ICEBP (see caseICEBP) and resumes after it. Trap context.
func onUD(f *trap.Frame) bool {
	l := &logs[kernel.CurrentCPU()]
	if l.armed&(1<<idt.InvalidOpcode) == 0 || f.RIP != uint64(sites[siteICEBP]) {
		return pass(f)
	}
	l.add(f, 0)
	f.RIP++
	return true
}

// onNMI records an NMI while armed (the kernel counts every NMI anyway). Trap context.
func onNMI(f *trap.Frame) bool {
	l := &logs[kernel.CurrentCPU()]
	if l.armed&(1<<idt.NMI) != 0 {
		l.add(f, 0)
		atomic.AddUint64(&l.nmis, 1)
	}
	return true
}

var installOnce sync.Once

// prevHandler is what each vector's handler was before install: a trap these handlers are not
// armed for goes there (FBT's probes share #BP and #DB with them).
var prevHandler [256]trap.Handler

// pass gives f to the handler installed before ours. Trap context.
func pass(f *trap.Frame) bool {
	h := prevHandler[f.Vector]
	return h != nil && h(f)
}

func install() {
	installOnce.Do(func() {
		trapSites(&sites)
		for v, h := range map[int]trap.Handler{idt.Debug: onDebug, idt.Breakpoint: onBreakpoint,
			idt.PageFault: onFault, idt.GeneralProtection: onFault, idt.NMI: onNMI, idt.InvalidOpcode: onUD} {
			prevHandler[v] = trap.Register(v, h)
		}
	})
}

// arm resets this CPU's log and accepts the given vectors. Called pinned, so the CPU is fixed.
func arm(vectors ...int) *cpuLog {
	l := &logs[kernel.CurrentCPU()]
	fl := amd64.DisableInterrupts()
	var mask uint32
	for _, v := range vectors {
		mask |= 1 << v
	}
	nmis := l.nmis
	*l = cpuLog{armed: mask, nmis: nmis}
	amd64.RestoreInterrupts(fl)
	return l
}

func disarm(l *cpuLog) {
	fl := amd64.DisableInterrupts()
	l.armed = 0
	amd64.RestoreInterrupts(fl)
}

// eachCPU runs body pinned to every online CPU in turn; a CPU's failures carry its number.
func eachCPU(body func(t *ktest.T, cpu int) error) func(t *ktest.T) {
	return func(t *ktest.T) {
		install()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer kernel.UnpinCPU()
		n := kernel.OnlineCPUs()
		ok := 0
		var skipped error
		for cpu := 0; cpu < n; cpu++ {
			if !kernel.PinCPU(cpu) {
				t.Errorf("cpu %d: cannot pin", cpu)
				continue
			}
			err := body(t, cpu)
			if q, isQuirk := err.(quirk); isQuirk {
				skipped = q
				continue
			}
			if err != nil {
				t.Errorf("cpu %d: %v", cpu, err)
				continue
			}
			ok++
		}
		t.Diag("cpus_passed", fmt.Sprintf("%d/%d", ok, n))
		if skipped != nil && ok == 0 && !t.Failed() {
			t.Skip(skipped.Error())
		}
	}
}

func idtMode(t *ktest.T) {
	t.Diag("hypervisor", kernel.HypervisorName())
	t.Diag("idt", kernel.IDTMode())
	t.Diag("cpus", kernel.OnlineCPUs())
}

func caseInt3(t *ktest.T, cpu int) error {
	l := arm(idt.Breakpoint)
	int3Site()
	disarm(l)
	if l.n != 1 {
		return fmt.Errorf("%d #BP, want 1", l.n)
	}
	if want := uint64(sites[siteInt3] + 1); l.recs[0].rip != want {
		return fmt.Errorf("#BP saved RIP %#x, want %#x (after the INT3)", l.recs[0].rip, want)
	}
	if cpu == 0 {
		t.Diag("bp_rip_offset", l.recs[0].rip-uint64(sites[siteInt3]))
	}
	return nil
}

// quirk is a failure explained by the CPU or emulator, not the kernel: where it is the
// only reason on every CPU, the case reports SKIP with it instead of a verdict.
type quirk string

func (q quirk) Error() string { return string(q) }

const (
	quirkICEBP = quirk("ICEBP (0xf1) raised #UD, not #DB: this CPU model or emulator does not implement it")
	quirkSTI   = quirk("no #DB after STI: QEMU TCG lets STI's interrupt shadow hold back the single-step trap, as only MOV SS may (SDM Vol. 3A, 6.8.3); the other 3 steps were exact")
)

func caseICEBP(t *ktest.T, cpu int) error {
	l := arm(idt.Debug, idt.InvalidOpcode)
	icebpSite()
	disarm(l)
	if l.n != 1 {
		return fmt.Errorf("%d #DB, want 1", l.n)
	}
	r := l.recs[0]
	if r.vector == idt.InvalidOpcode {
		return quirkICEBP
	}
	if want := uint64(sites[siteICEBP] + 1); r.rip != want || r.dr6 != amd64.DR6_Reset {
		return fmt.Errorf("ICEBP #DB at %#x with DR6 %#x, want %#x and %#x", r.rip, r.dr6, want,
			uint64(amd64.DR6_Reset))
	}
	return nil
}

// stepCase single-steps routine s by calling run: after the POPFQ that sets TF, skip instructions do not
// trap (MOV SS blocking) and the next n each end in a #DB with DR6.BS, at the next
// instruction's address.
func stepCase(s int, run func(), skip, n int) func(t *ktest.T, cpu int) error {
	return func(t *ktest.T, cpu int) error {
		ins, err := decodeSite(s)
		if err != nil {
			return err
		}
		p := -1
		for i, in := range ins {
			if in.op == x86asm.POPFQ {
				p = i
				break
			}
		}
		if p < 0 || p+1+skip+n > len(ins) {
			return fmt.Errorf("site %d: no POPFQ followed by %d instructions", s, skip+n)
		}
		var want []uint64
		for _, in := range ins[p+1+skip : p+1+skip+n] {
			want = append(want, uint64(in.addr)+uint64(in.len))
		}
		l := arm(idt.Debug)
		run()
		disarm(l)
		var got []string
		bad := l.n != n
		for i := 0; i < l.n && i < maxRecords; i++ {
			r := l.recs[i]
			got = append(got, fmt.Sprintf("+%d/%#x", r.rip-uint64(sites[s]), r.dr6))
			if i < n && (r.rip != want[i] || r.dr6 != amd64.DR6_Reset|amd64.DR6_BS) {
				bad = true
			}
		}
		if cpu == 0 {
			t.Diag("steps", l.n)
			t.Diag("rip_offset_dr6", strings.Join(got, ","))
		}
		if bad {
			var w []string
			for _, x := range want {
				w = append(w, fmt.Sprintf("+%d", x-uint64(sites[s])))
			}
			return fmt.Errorf("got %d #DB %s, want %d at %s each with DR6 %#x", l.n,
				strings.Join(got, ","), n, strings.Join(w, ","), uint64(amd64.DR6_Reset|amd64.DR6_BS))
		}
		return nil
	}
}

// stiCase is stepCase for STI blocking, which tells a TCG quirk from a kernel failure: under
// TCG, the #DB after STI goes missing while the three after it are exact.
func stiCase(t *ktest.T, cpu int) error {
	err := stepCase(siteStepSTI, stepSTI, 0, 4)(t, cpu)
	if err == nil || kernel.HypervisorName() != amd64.HVTCG {
		return err
	}
	if stepCase(siteStepSTI, stepSTI, 1, 3)(t, -1) == nil {
		return quirkSTI
	}
	return err
}

// withDR runs fn with breakpoint registers loaded, on this CPU, interrupts off (so no other
// thread runs here while they are armed), and clears them after.
func withDR(addr [4]uint64, dr7 uint64, fn func()) {
	fl := amd64.DisableInterrupts()
	amd64.WriteDR6(amd64.DR6_Reset)
	amd64.WriteDR0to3(addr[0], addr[1], addr[2], addr[3])
	amd64.WriteDR7(dr7 | amd64.DR7_GE)
	fn()
	amd64.WriteDR7(0)
	amd64.RestoreInterrupts(fl)
}

func caseHWExec(t *ktest.T, cpu int) error {
	l := arm(idt.Debug)
	l.setRF = true
	target := uint64(sites[siteExec]) + 1 // the second NOP
	withDR([4]uint64{target}, amd64.DR7Breakpoint(0, amd64.DR7RWExec, 1), execSite)
	disarm(l)
	if l.n != 1 {
		return fmt.Errorf("%d #DB, want 1", l.n)
	}
	r := l.recs[0]
	// An execution breakpoint is a fault: RIP is the instruction itself; B0 set, BS clear.
	if r.rip != target || r.dr6 != amd64.DR6_Reset|amd64.DR6_B0 {
		return fmt.Errorf("#DB at %#x DR6 %#x, want %#x DR6 %#x", r.rip, r.dr6, target,
			uint64(amd64.DR6_Reset|amd64.DR6_B0))
	}
	return nil
}

var watched [4]uint64

func caseHWWatch(rw uint64) func(t *ktest.T, cpu int) error {
	return func(t *ktest.T, cpu int) error {
		addr := uintptr(unsafe.Pointer(&watched[1]))
		ins, err := decodeSite(siteLoad)
		if err != nil {
			return err
		}
		loadEnd := uint64(ins[1].addr) + uint64(ins[1].len)
		ins, err = decodeSite(siteStore)
		if err != nil {
			return err
		}
		storeEnd := uint64(ins[2].addr) + uint64(ins[2].len)
		l := arm(idt.Debug)
		dr7 := amd64.DR7Breakpoint(1, rw, 8)
		withDR([4]uint64{0, uint64(addr)}, dr7, func() {
			loadSite(addr)
			storeSite(addr, 42)
			loadSite(addr + 8) // the next word: outside the watched 8 bytes
		})
		disarm(l)
		// A data breakpoint is a trap: RIP is after the access; B1 set, BS clear.
		want := []uint64{storeEnd}
		if rw == amd64.DR7RWRead {
			want = []uint64{loadEnd, storeEnd}
		}
		if l.n != len(want) {
			return fmt.Errorf("%d #DB, want %d", l.n, len(want))
		}
		for i, w := range want {
			if r := l.recs[i]; r.rip != w || r.dr6 != amd64.DR6_Reset|2 {
				return fmt.Errorf("#DB %d at %#x DR6 %#x, want %#x DR6 %#x", i, r.rip, r.dr6, w,
					uint64(amd64.DR6_Reset|2))
			}
		}
		if watched[1] != 42 {
			return fmt.Errorf("the watched store did not happen")
		}
		return nil
	}
}

// faultAt runs site s (loadSite or storeSite) on addr with the #PF/#GP handler armed to skip
// the access, and returns what it recorded.
func faultAt(s int, addr uintptr) (record, int, error) {
	ins, err := decodeSite(s)
	if err != nil {
		return record{}, 0, err
	}
	access := ins[1]
	if s == siteStore {
		access = ins[2]
	}
	l := arm(idt.PageFault, idt.GeneralProtection)
	l.skipRIP, l.skipLen = uint64(access.addr), uint64(access.len)
	if s == siteStore {
		storeSite(addr, 1)
	} else {
		loadSite(addr)
	}
	disarm(l)
	return l.recs[0], l.n, nil
}

// Page-fault error code bits (SDM Vol. 3A, 4.7).
const (
	pfPresent = 1 << 0
	pfWrite   = 1 << 1
)

func casePageFault(t *ktest.T, cpu int) error {
	r := rand.New(rand.NewSource(t.Seed + int64(cpu)))
	unmapped := uintptr(kernel.UnmappedBase) + uintptr(r.Int63n(1<<46))&^7
	for _, c := range []struct {
		site int
		addr uintptr
		err  uint64
		cr2  uintptr
	}{
		{siteLoad, unmapped, 0, unmapped},
		{siteStore, unmapped, pfWrite, unmapped},
	} {
		rec, n, err := faultAt(c.site, c.addr)
		if err != nil {
			return err
		}
		if n != 1 || rec.vector != idt.PageFault || rec.err != c.err || rec.cr2 != uint64(c.cr2) {
			return fmt.Errorf("access to %#x: %d faults, vector %d error %#x CR2 %#x; want 1 #PF error %#x CR2 %#x",
				c.addr, n, rec.vector, rec.err, rec.cr2, c.err, c.cr2)
		}
	}
	// A load across the end of a mapped page: CR2 is the first byte of the unmapped one.
	page, _, errno := syscall.Syscall6(syscall.SYS_MMAP, 0, 2*4096,
		syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON, ^uintptr(0), 0)
	if errno != 0 {
		return fmt.Errorf("mmap: %v", errno)
	}
	defer syscall.Syscall(syscall.SYS_MUNMAP, page, 4096, 0)
	if _, _, errno := syscall.Syscall(syscall.SYS_MUNMAP, page+4096, 4096, 0); errno != 0 {
		return fmt.Errorf("munmap: %v", errno)
	}
	rec, n, err := faultAt(siteLoad, page+4096-4)
	if err != nil {
		return err
	}
	if n != 1 || rec.vector != idt.PageFault || rec.err != 0 || rec.cr2 != uint64(page+4096) {
		return fmt.Errorf("load across a page end: %d faults, vector %d error %#x CR2 %#x; want #PF error 0 CR2 %#x",
			n, rec.vector, rec.err, rec.cr2, page+4096)
	}
	if cpu == 0 {
		t.Diag("unmapped_read_cr2", fmt.Sprintf("%#x", unmapped))
		t.Diag("page_crossing_cr2", fmt.Sprintf("%#x", rec.cr2))
	}
	return nil
}

func caseNonCanonical(t *ktest.T, cpu int) error {
	r := rand.New(rand.NewSource(t.Seed + int64(cpu)))
	for i := 0; i < 8; i++ {
		addr := nonCanonical(r)
		for _, s := range []int{siteLoad, siteStore} {
			rec, n, err := faultAt(s, addr)
			if err != nil {
				return err
			}
			if n != 1 || rec.vector != idt.GeneralProtection || rec.err != 0 {
				return fmt.Errorf("access to %#x: %d faults, vector %d error %#x; want one #GP(0)",
					addr, n, rec.vector, rec.err)
			}
		}
	}
	return nil
}

// nonCanonical returns an address whose bits 63:47 are not all equal.
func nonCanonical(r *rand.Rand) uintptr {
	for {
		a := uintptr(r.Uint64())
		if !amd64.Canonical(uint64(a)) {
			return a
		}
	}
}

func caseNested(t *ktest.T, cpu int) error {
	l := arm(idt.Breakpoint)
	l.bpMode = bpNest
	trap.ResetMaxDepth(cpu) // the depth this case's own traps reach, not an earlier NMI's
	int3Site()
	disarm(l)
	if l.n != 2 {
		return fmt.Errorf("%d #BP, want 2 (one nested)", l.n)
	}
	outer, inner := l.recs[0], l.recs[1]
	if outer.rip != uint64(sites[siteInt3]+1) || inner.rip != uint64(sites[siteInt3]+1) {
		return fmt.Errorf("#BP RIPs %#x, %#x; want both %#x", outer.rip, inner.rip, sites[siteInt3]+1)
	}
	if outer.depth != 1 || inner.depth != 2 {
		return fmt.Errorf("depths %d, %d; want 1, 2", outer.depth, inner.depth)
	}
	if f := l.innerFault[0]; f.Vector != idt.PageFault || f.Addr != kernel.UnmappedBase+0x1230 {
		return fmt.Errorf("safe load in the #BP handler: %+v, want a #PF at %#x", f, uint64(kernel.UnmappedBase+0x1230))
	}
	if f := l.innerFault[1]; f.Vector != idt.GeneralProtection {
		return fmt.Errorf("safe load in the nested #BP handler: %+v, want a #GP", f)
	}
	d := trap.CPUStats(cpu).MaxDepth
	if cpu == 0 {
		t.Diag("max_depth", d)
	}
	if d < 3 { // #BP, the nested #BP, and the #GP of its safe load
		return fmt.Errorf("max trap depth %d since the case began, want at least 3", d)
	}
	return nil
}

func caseTimerInBP(t *ktest.T, cpu int) error {
	for _, typ := range []uint8{idt.TypeTrap, idt.TypeInterrupt} {
		l := arm(idt.Breakpoint)
		l.bpMode = bpWaitTimer
		ticks := trap.Count(cpu, kernel.VecTimer)
		prev := kernel.SetGateType(idt.Breakpoint, typ)
		int3Site()
		kernel.SetGateType(idt.Breakpoint, prev)
		disarm(l)
		// The timer the handler armed must arrive: nested, or right after the IRET.
		t0 := time.Now()
		for trap.Count(cpu, kernel.VecTimer) == ticks && time.Since(t0) < time.Second {
		}
		name := "trap"
		if typ == idt.TypeInterrupt {
			name = "interrupt"
		}
		if cpu == 0 {
			t.Diag(name+"_gate_if_in_handler", l.bpIF)
			t.Diag(name+"_gate_timer_nested", l.bpNestedTimer)
			t.Diag(name+"_gate_wait_us", l.bpWaitNs/1000)
		}
		if l.n != 1 {
			return fmt.Errorf("%s gate: %d #BP, want 1", name, l.n)
		}
		if trap.Count(cpu, kernel.VecTimer) == ticks {
			return fmt.Errorf("%s gate: the timer armed in the handler never fired", name)
		}
		wantNested := typ == idt.TypeTrap
		if l.bpIF != wantNested || l.bpNestedTimer != wantNested {
			return fmt.Errorf("%s gate: IF in the handler %v, timer taken inside it %v; want %v, %v",
				name, l.bpIF, l.bpNestedTimer, wantNested, wantNested)
		}
	}
	return nil
}

// caseSafeLoads reads 100,000 random addresses through trap.SafeLoad*, split over every CPU
// at once, and checks each result against what the address is.
func caseSafeLoads(t *ktest.T) {
	install()
	const total = 100_000
	n := kernel.OnlineCPUs()
	heap := make([]byte, 1<<20)
	for i := range heap {
		heap[i] = byte(i * 7)
	}
	imgLo, imgHi := kernel.KernelText()
	type tally struct {
		ok, pf, gp, wrong int
		first             string
	}
	results := make([]tally, n)
	recoveredBefore := make([]uint64, n)
	for i := range recoveredBefore {
		recoveredBefore[i] = trap.CPUStats(i).Recovered
	}
	start := time.Now()
	onCPUs(0, n, func(cpu int, pinned bool) {
		res := &results[cpu]
		if !pinned {
			res.wrong++
			res.first = "cannot pin"
			return
		}
		r := rand.New(rand.NewSource(t.Seed*1000 + int64(cpu)))
		bad := func(format string, args ...any) {
			res.wrong++
			if res.first == "" {
				res.first = fmt.Sprintf(format, args...)
			}
		}
		for i := cpu; i < total; i += n {
			size := 1 << r.Intn(4)
			var addr uintptr
			class := r.Intn(5)
			switch class {
			case 0: // kernel text: mapped for good, never written
				addr = imgLo + uintptr(r.Int63n(int64(imgHi-imgLo-8)))
			case 1: // a heap object the test holds
				addr = uintptr(unsafe.Pointer(&heap[0])) + uintptr(r.Intn(len(heap)-8))
			case 2: // never mapped
				addr = kernel.UnmappedBase + uintptr(r.Int63n(1<<46-8))
			case 3:
				addr = nonCanonical(r)
			case 4: // anything at all
				addr = uintptr(r.Uint64())
			}
			v, f := safeLoad(addr, size)
			switch {
			case f.Vector == idt.PageFault:
				res.pf++
			case f.Vector == idt.GeneralProtection:
				res.gp++
			case !f.Failed():
				res.ok++
			default:
				bad("%#x: vector %d", addr, f.Vector)
				continue
			}
			canonical := amd64.Canonical(uint64(addr))
			switch class {
			case 0, 1:
				if f.Failed() || v != direct(addr, size) {
					bad("%#x (mapped, %d bytes): %v value %#x, direct %#x", addr, size, f, v, direct(addr, size))
				}
			case 2:
				if f.Vector != idt.PageFault || f.Addr < addr || f.Addr >= addr+uintptr(size) {
					bad("%#x (unmapped): %+v, want #PF inside the access", addr, f)
				}
			case 3:
				if f.Vector != idt.GeneralProtection || f.Addr != addr {
					bad("%#x (non-canonical): %+v, want #GP", addr, f)
				}
			case 4:
				last := addr + uintptr(size) - 1
				if !canonical && f.Vector != idt.GeneralProtection ||
					canonical && f.Vector == idt.GeneralProtection && amd64.Canonical(uint64(last)) {
					bad("%#x (random): %+v", addr, f)
				}
			}
		}
	})
	elapsed := time.Since(start)
	var ok, pf, gp, wrong int
	var perCPU []string
	for cpu, res := range results {
		ok, pf, gp, wrong = ok+res.ok, pf+res.pf, gp+res.gp, wrong+res.wrong
		perCPU = append(perCPU, fmt.Sprint(trap.CPUStats(cpu).Recovered-recoveredBefore[cpu]))
		if res.first != "" {
			t.Errorf("cpu %d: %d wrong, first: %s", cpu, res.wrong, res.first)
		}
	}
	t.Diag("reads", ok+pf+gp+wrong)
	t.Diag("ok", ok)
	t.Diag("page_faults", pf)
	t.Diag("gp_faults", gp)
	t.Diag("misclassified", wrong)
	t.Diag("recovered_per_cpu", strings.Join(perCPU, ","))
	t.Diag("ns_per_read", elapsed.Nanoseconds()/int64(total))
	if ok+pf+gp+wrong != total {
		t.Errorf("%d reads classified, want %d", ok+pf+gp+wrong, total)
	}
	runtime.KeepAlive(heap)
}

func safeLoad(addr uintptr, size int) (uint64, trap.Fault) {
	switch size {
	case 1:
		v, f := trap.SafeLoad8(addr)
		return uint64(v), f
	case 2:
		v, f := trap.SafeLoad16(addr)
		return uint64(v), f
	case 4:
		v, f := trap.SafeLoad32(addr)
		return uint64(v), f
	}
	return trap.SafeLoad64(addr)
}

// direct reads mapped memory the ordinary way, for comparison.
func direct(addr uintptr, size int) uint64 {
	p := unsafe.Pointer(addr)
	switch size {
	case 1:
		return uint64(*(*uint8)(p))
	case 2:
		return uint64(*(*uint16)(p))
	case 4:
		return uint64(*(*uint32)(p))
	}
	return *(*uint64)(p)
}

// caseRegsIntact traps with known values in RCX and R11 through every PV vector (#BP, #DB by
// ICEBP and by single-step, #PF, #GP, NMI) and checks the handler saw them and they came back.
// Native stubs must keep them as any register; the pvshim's stubs clobber both after pushing
// them, so only a PV stub that restores them from the Xen frame passes.
func caseRegsIntact(t *ktest.T, cpu int) error {
	r := rand.New(rand.NewSource(t.Seed + int64(cpu)))
	check := func(name string, l *cpuLog, wantTraps int, c, r11, gotC, gotR11 uintptr) error {
		if gotC != c || gotR11 != r11 {
			return fmt.Errorf("%s: RCX %#x R11 %#x after the trap, want %#x %#x", name, gotC, gotR11, c, r11)
		}
		if l.n != wantTraps {
			return fmt.Errorf("%s: %d traps recorded, want %d", name, l.n, wantTraps)
		}
		for i := 0; i < l.n && i < maxRecords; i++ {
			if rec := l.recs[i]; rec.rcx != uint64(c) || rec.r11 != uint64(r11) {
				return fmt.Errorf("%s: the handler saw RCX %#x R11 %#x, want %#x %#x", name, rec.rcx, rec.r11, c, r11)
			}
		}
		return nil
	}
	bx, err := decodeSite(siteBXLoad)
	if err != nil {
		return err
	}
	kinds := []struct {
		name  string
		site  int
		addr  uintptr
		vec   []int
		traps int
	}{
		{"int3", siteInt3, 0, []int{idt.Breakpoint}, 1},
		{"icebp", siteICEBP, 0, []int{idt.Debug, idt.InvalidOpcode}, 1},
		{"single_step", siteStepBasic, 0, []int{idt.Debug}, 3},
		{"page_fault", siteBXLoad, kernel.UnmappedBase + 0x4000, []int{idt.PageFault}, 1},
		{"gp", siteBXLoad, nonCanonical(r), []int{idt.GeneralProtection}, 1},
	}
	for _, k := range kinds {
		c, r11 := uintptr(r.Uint64()), uintptr(r.Uint64())
		l := arm(k.vec...)
		l.skipRIP, l.skipLen = uint64(bx[0].addr), uint64(bx[0].len)
		gotC, gotR11 := regsAcross(sites[k.site], k.addr, c, r11)
		disarm(l)
		if err := check(k.name, l, k.traps, c, r11, gotC, gotR11); err != nil {
			return err
		}
	}
	// NMI: another CPU sends it while this one spins with the values in RCX and R11.
	n := kernel.OnlineCPUs()
	if n < 2 {
		if cpu == 0 {
			t.Diag("nmi", "skipped: needs a second CPU to send it")
		}
		return nil
	}
	c, r11 := uintptr(r.Uint64()), uintptr(r.Uint64())
	l := arm(idt.NMI)
	var ready uint32
	sent := make(chan bool, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		defer kernel.UnpinCPU()
		kernel.PinCPU((cpu + 1) % n)
		for atomic.LoadUint32(&ready) == 0 {
		}
		_, ok := kernel.SendTestIPI(kernel.IPINMI, cpu)
		sent <- ok
	}()
	old := atomic.LoadUint64(&l.nmis)
	fl := amd64.DisableInterrupts()
	gotC, gotR11 := nmiWait(&ready, &l.nmis, old, c, r11)
	amd64.RestoreInterrupts(fl)
	disarm(l)
	if !<-sent {
		return fmt.Errorf("nmi: the NMI IPI was not accepted")
	}
	return check("nmi", l, 1, c, r11, gotC, gotR11)
}

// nmiNest is the state of nmi_never_nests: the CPU under test, whether its handler is armed,
// and what the handler saw.
var nmiNest struct {
	cpu      atomic.Int32
	armed    atomic.Bool
	depth    atomic.Int32
	maxDepth atomic.Int32
	entries  atomic.Int32
	faulted  atomic.Bool
}

// onNestNMI, on the CPU under test, sends that CPU a second NMI from inside the first one's
// handler (the CPU holds it), then takes a page fault whose IRET lets it in early. The kernel
// must latch it and run it after this handler returns, never inside it. Trap context (NMI).
func onNestNMI(f *trap.Frame) bool {
	if !nmiNest.armed.Load() || int32(kernel.CurrentCPU()) != nmiNest.cpu.Load() {
		return false
	}
	d := nmiNest.depth.Add(1)
	if d > nmiNest.maxDepth.Load() {
		nmiNest.maxDepth.Store(d)
	}
	if nmiNest.entries.Add(1) == 1 {
		kernel.SelfNMI()
		pause(20000) // the second NMI is pending, held back by this one
		_, fl := trap.SafeLoad64(unmapped)
		nmiNest.faulted.Store(fl.Failed())
		pause(20000) // had the #PF's IRET let it nest, it would have run by now
	}
	nmiNest.depth.Add(-1)
	return true
}

// pause executes n PAUSEs. Trap context allowed.
func pause(n int) {
	for i := 0; i < n; i++ {
		amd64.Pause()
	}
}

// caseNMINest: the second NMI runs once, after the first, at depth 1.
func caseNMINest(t *ktest.T, cpu int) error {
	prev := trap.Register(idt.NMI, onNestNMI)
	defer trap.Register(idt.NMI, prev)
	nmiNest.cpu.Store(int32(cpu))
	nmiNest.depth.Store(0)
	nmiNest.maxDepth.Store(0)
	nmiNest.entries.Store(0)
	nmiNest.faulted.Store(false)
	nmiNest.armed.Store(true)
	if _, ok := kernel.SendTestIPI(kernel.IPINMI, cpu); !ok {
		nmiNest.armed.Store(false)
		return fmt.Errorf("cannot send an NMI")
	}
	for t0 := time.Now(); nmiNest.entries.Load() < 2 && time.Since(t0) < time.Second; {
		time.Sleep(time.Millisecond)
	}
	nmiNest.armed.Store(false)
	if cpu == 0 {
		t.Diag("nmi_handler_entries", nmiNest.entries.Load())
		t.Diag("nmi_max_depth", nmiNest.maxDepth.Load())
	}
	switch {
	case !nmiNest.faulted.Load():
		return fmt.Errorf("the read of %#x in the NMI handler did not fault", unmapped)
	case nmiNest.maxDepth.Load() != 1:
		return fmt.Errorf("an NMI nested in the NMI handler (depth %d): it must be latched until the handler returns", nmiNest.maxDepth.Load())
	case nmiNest.entries.Load() != 2:
		return fmt.Errorf("%d NMI handler runs, want 2 (the second NMI latched, then run)", nmiNest.entries.Load())
	}
	return nil
}
