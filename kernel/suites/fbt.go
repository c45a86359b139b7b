package suites

import (
	"fmt"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/arch/x86/x86asm"

	"tracebed/amd64"
	"tracebed/fbt"
	"tracebed/fbt/live"
	"tracebed/idt"
	"tracebed/kernel"
	"tracebed/kernel/ktest"
	"tracebed/trap"
)

// FBT proves function boundary tracing in the live kernel: exact hit counts with the right
// arguments and return values in every mode, offset probes on every relocation class the
// kernel's code holds with results equal to an unprobed run, the action's rules (safe mode,
// nested hits dropped, copyinstr of bad pointers), steps with timer interrupts pending and
// with their #DB suppressed, other code's INT3 passed on, and every non-toxic function probed
// under load. The XOL area is far from the text unless fbt.xol=near.
var FBT = ktest.Suite{Name: "fbt", Cases: []ktest.Case{
	{Name: "sites", Run: fbtSites},
	{Name: "wx_text_read_only", Run: fbtWX},
	{Name: "exact_counts_emulate", Run: fbtCounts(live.Emulate)},
	{Name: "exact_counts_boost", Run: fbtCounts(live.Boost)},
	{Name: "exact_counts_step", Run: fbtCounts(live.Step)},
	{Name: "exact_counts_auto", Run: fbtCounts(live.Auto)},
	{Name: "relocation_classes", Run: fbtClassesCase},
	{Name: "copyinstr", Run: fbtCopyIn},
	{Name: "safe_mode_if_off", Run: fbtSafe},
	{Name: "nested_hit_dropped", Run: fbtNestedCase},
	{Name: "foreign_int3_passed_on", Run: fbtForeign},
	{Name: "step_with_timer_pending", Run: fbtStepTimer},
	{Name: "step_db_dropped", Run: fbtDropDB},
	{Name: "probe_cost", Run: fbtCost},
	{Name: "all_probes_under_load", Run: fbtAll},
	{Name: "scale_batched_vs_per_probe", Run: fbtScale},
	{Name: "reap_preempted_in_copy", Run: fbtReap},
	{Name: "teardown_while_running", Run: fbtTeardown},
}}

// FBTReap is the reaper's case alone: the fbt.reap=0 mutation boots it to see it fail.
var FBTReap = ktest.Suite{Name: "fbt_reap", Cases: []ktest.Case{{Name: "reap_preempted_in_copy", Run: fbtReap}}}

// The probed functions. noinline keeps them real calls; fbtCallee gives fbtAdd a frame. fbtAdd
// is nosplit: a function with Go's stack-check prologue runs its first instruction again
// whenever it is entered with a preemption request pending (morestack returns to the entry),
// and its entry probe rightly fires twice, which exact counts cannot allow.

//go:noinline
func fbtCallee(x int) int { return x ^ 0x5a }

//go:noinline
//go:nosplit
func fbtAdd(a, b int) int { return fbtCallee(a) + b + 1 }

//go:noinline
//go:nosplit
func fbtLeaf(a int) int { return a*3 + 1 }

//go:noinline
func fbtStr(p uintptr) int { return int(p & 0xff) }

//go:noinline
func fbtNested() int { return fbtCallee(7) }

// Globals the relocation-class function reads and writes through RIP-relative operands.
var (
	fbtGlobal  int64 = 5
	fbtLimit   int64 = 4
	fbtStore   int64
	fbtTable   = [4]int64{1, 2, 3, 4}
	fbtFuncVar = fbtCallee
)

// fbtClasses holds, in the code Go generates for it, a RIP-relative load, store and lea, a
// compare of memory with an immediate, conditional branches, direct calls, an indirect call
// through a function variable, and a jump table (a dense switch).
//
//go:noinline
func fbtClasses(x int) int {
	r := int(fbtGlobal) // mov rip-relative
	if fbtLimit > 3 {   // cmp [rip], imm; jcc
		r += fbtCallee(x) // call rel32
	}
	fbtStore = int64(r + x) // mov to rip-relative
	switch x & 7 {          // jump table
	case 0:
		r += 11
	case 1:
		r += 13
	case 2:
		r *= 17
	case 3:
		r -= 19
	case 4:
		r ^= 23
	case 5:
		r |= 29
	case 6:
		r += int(fbtTable[x&3]) // lea of a RIP-relative table
	case 7:
		r += fbtFuncVar(x) // indirect call
	}
	return r
}

func fbtName(fn any) string { return runtime.FuncForPC(reflect.ValueOf(fn).Pointer()).Name() }

// fbtSetup makes sure live is initialised (the command line may not have done it).
func fbtSetup(t *ktest.T) bool {
	if err := live.Boot(t.Params, true, new(strings.Builder)); err != nil {
		t.Fatalf("fbt: %v", err)
		return false
	}
	return true
}

// fbtSetupSeconds is fbtSetup for the timed cases, with fbt_seconds (default 3).
func fbtSetupSeconds(t *ktest.T) (int64, bool) {
	if !fbtSetup(t) {
		return 0, false
	}
	secs, err := ktest.Options{Params: t.Params}.IntParam("fbt_seconds", 3)
	if err != nil {
		t.Fatalf("%v", err)
		return 0, false
	}
	return secs, true
}

// fbtPinned enables ids in mode m and pins the calling goroutine's thread to CPU 0; the
// function it returns undoes both. nil when enabling failed (reported).
func fbtPinned(t *ktest.T, ids []int32, m live.Mode) func() {
	if err := live.Enable(ids, m); err != nil {
		t.Fatalf("%v", err)
		return nil
	}
	runtime.LockOSThread()
	kernel.PinCPU(0)
	return func() {
		kernel.UnpinCPU()
		runtime.UnlockOSThread()
		live.Disable(ids)
	}
}

// fbtProbes returns the entry site and every return site of fn.
func fbtProbes(t *ktest.T, fn any) (entry int32, rets []int32) {
	name := fbtName(fn)
	entry, err := live.Find(name, live.Entry, 0)
	if err != nil {
		t.Fatalf("%v", err)
	}
	rets = live.Returns(name)
	if len(rets) == 0 {
		t.Fatalf("%s: no return sites", name)
	}
	return entry, rets
}

func fbtSum(ids []int32) uint64 {
	var n uint64
	for _, id := range ids {
		n += live.Total(id)
	}
	return n
}

func fbtSites(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	t.Diag("functions", live.NumFuncs)
	t.Diag("sites", live.NumSites())
	t.Diag("offset_sites", len(live.OffsetSites()))
	keys := make([]string, 0, len(live.Toxic))
	total := 0
	for k, v := range live.Toxic {
		keys = append(keys, k)
		total += v
	}
	sort.Strings(keys)
	t.Diag("toxic", total)
	for _, k := range keys {
		t.Diag("toxic_"+strings.ReplaceAll(k, " ", "_"), live.Toxic[k])
	}
	for name, want := range map[string]bool{
		"tracebed/trap.Dispatch": true, "tracebed/kernel.kernelEntry": true, "runtime.memmove": true,
		"tracebed/fbt.(*Emu).Run": true, "tracebed/fbt/live.finishStep": true, fbtName(fbtAdd): false,
		"runtime.mallocgc": false, "tracebed/fbt/live.Disable": true, "tracebed/fbt.Relocate": true,
	} {
		why, ok := live.FuncToxic(name)
		if !ok {
			t.Errorf("%s: not in the kernel", name)
		} else if (why != "") != want {
			t.Errorf("%s: toxic %q (%s), want toxic %v", name, why, live.ToxicPath(name), want)
		}
	}
}

var fbtData int64 = 1

// fbtWX checks the kernel's W^X layout: text read-only and executable, rodata read-only and NX,
// data, heap and the XOL area's write alias NX, the XOL area itself read-only; a stray write to
// text or rodata faults and changes nothing, while probes still patch text (through the alias).
func fbtWX(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	heap := new([64]byte)
	xolExec, xolWrite := live.XOL()
	text := reflect.ValueOf(fbtLeaf).Pointer()
	ro := uintptr(unsafe.Pointer(unsafe.StringData("a string constant in .rodata")))
	for _, c := range []struct {
		name        string
		addr        uintptr
		write, exec bool
	}{
		{"text", text, false, true},
		{"rodata", ro, false, false},
		{"data", uintptr(unsafe.Pointer(&fbtData)), true, false},
		{"heap", uintptr(unsafe.Pointer(heap)), true, false},
		{"xol", xolExec, false, true},
		{"xol_write_alias", xolWrite, true, false},
	} {
		w, x, ok := kernel.Protection(c.addr)
		if !ok || w != c.write || x != c.exec {
			t.Errorf("%s %#x: mapped %v writable %v executable %v, want writable %v executable %v",
				c.name, c.addr, ok, w, x, c.write, c.exec)
		}
	}
	for _, c := range []struct {
		name string
		addr uintptr
	}{{"text", text}, {"rodata", ro}} {
		before := *(*byte)(unsafe.Pointer(c.addr))
		f := trap.SafeStore8(c.addr, before^0xff)
		if !f.Failed() {
			t.Errorf("a write to %s at %#x did not fault", c.name, c.addr)
		} else if f.Vector != idt.PageFault || f.Addr != c.addr {
			t.Errorf("a write to %s at %#x: %v, want a #PF there", c.name, c.addr, f)
		}
		if after := *(*byte)(unsafe.Pointer(c.addr)); after != before {
			t.Errorf("%s at %#x changed from %#x to %#x", c.name, c.addr, before, after)
			trap.SafeStore8(c.addr, before) // writable after all (wx=0): put it back
		}
	}
	runtime.KeepAlive(heap)
}

const fbtCalls = 2000

// fbtCounts probes fbtAdd's entry and returns in mode m and calls it fbtCalls times on every
// CPU at once: each CPU must count exactly fbtCalls entries and returns, and its last records
// must hold the last call's arguments and result.
func fbtCounts(m live.Mode) func(t *ktest.T) {
	return func(t *ktest.T) {
		if !fbtSetup(t) {
			return
		}
		entry, rets := fbtProbes(t, fbtAdd)
		ids := append([]int32{entry}, rets...)
		n := kernel.OnlineCPUs()
		before := make([]uint64, n)
		for c := range before {
			before[c] = live.Count(entry, c)
		}
		retBefore := fbtSum(rets)
		if err := live.Enable(ids, m); err != nil {
			t.Fatalf("%v", err)
			return
		}
		t.Diag("entry_way", live.How(entry))
		t.Diag("return_way", live.How(rets[0]))
		st0 := live.TotalStats()
		bad := make([]string, n)
		onCPUs(0, n, func(cpu int, pinned bool) {
			if !pinned {
				bad[cpu] = "cannot pin"
				return
			}
			fbtGrowStack(fbtStackDepth)
			if amd64.Flags()&amd64.RFLAGS_IF == 0 {
				bad[cpu] = "goroutine running with interrupts off"
				return
			}
			for i := 0; i < fbtCalls; i++ {
				if got, want := fbtAdd(i, cpu), (i^0x5a)+cpu+1; got != want {
					bad[cpu] = fmt.Sprintf("fbtAdd(%d, %d) = %d, want %d", i, cpu, got, want)
					return
				}
			}
			// The last two records: the last call's entry, then its return.
			r, _, ok := live.Last(cpu)
			e, ok2 := live.Back(cpu, 1)
			switch {
			case !ok || !ok2:
				bad[cpu] = "no records"
			case r.Site != rets[0] && !contains32(rets, r.Site):
				bad[cpu] = fmt.Sprintf("last record at site %d, not a return", r.Site)
			case int(r.RAX) != ((fbtCalls-1)^0x5a)+cpu+1:
				bad[cpu] = fmt.Sprintf("return record RAX %d, want %d", r.RAX, ((fbtCalls-1)^0x5a)+cpu+1)
			case e.Site != entry || e.RAX != fbtCalls-1 || int(e.RBX) != cpu:
				bad[cpu] = fmt.Sprintf("entry record site %d RAX %d RBX %d, want %d %d %d", e.Site, e.RAX, e.RBX, entry, fbtCalls-1, cpu)
			case r.CPU != int32(cpu):
				bad[cpu] = fmt.Sprintf("record CPU %d", r.CPU)
			}
		})
		if err := live.Disable(ids); err != nil {
			t.Errorf("%v", err)
		}
		st := live.TotalStats()
		t.Diag("emulated", st.Emulated-st0.Emulated)
		t.Diag("boosted", st.Boosted-st0.Boosted)
		t.Diag("steps", st.Steps-st0.Steps)
		for cpu, b := range bad {
			if b != "" {
				t.Errorf("cpu %d: %s", cpu, b)
			}
		}
		for c := 0; c < n; c++ {
			if got := live.Count(entry, c) - before[c]; got != fbtCalls {
				t.Errorf("cpu %d: %d entries, want %d", c, got, fbtCalls)
			}
		}
		if got, want := fbtSum(rets)-retBefore, uint64(fbtCalls*n); got != want {
			t.Errorf("%d returns, want %d", got, want)
		}
		// Disabled: no more hits.
		e0 := live.Total(entry)
		fbtAdd(1, 2)
		if live.Total(entry) != e0 {
			t.Errorf("a disabled probe fired")
		}
	}
}

// fbtCold reports whether in, at pc, is on a path the inputs never take: a jump or call to
// stack growth or a panic (or a jmp back to the function's start after morestack).
func fbtCold(in *x86asm.Inst, pc uintptr) bool {
	rel, ok := in.Args[0].(x86asm.Rel)
	if !ok {
		return false
	}
	target := pc + uintptr(in.Len) + uintptr(int64(rel))
	if fn := runtime.FuncForPC(target); fn != nil {
		n := fn.Name()
		if strings.HasPrefix(n, "runtime.morestack") || strings.HasPrefix(n, "runtime.panic") ||
			strings.HasPrefix(n, "runtime.goPanic") || fn.Entry() == target && fn == runtime.FuncForPC(pc) {
			return true
		}
	}
	return false
}

// fbtGrowStack grows the goroutine's stack ahead of a counted loop: a function entered while
// its stack must grow runs its first instruction twice (the prologue again after
// runtime.morestack), and its entry probe fires twice, correctly.
//
//go:noinline
func fbtGrowStack(depth int) int {
	var pad [512]byte
	pad[depth%512] = byte(depth)
	if depth == 0 {
		return int(pad[0])
	}
	return fbtGrowStack(depth-1) + int(pad[depth%512])
}

const fbtStackDepth = 32 // 16 KiB and more

func contains32(s []int32, v int32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// relocClass names the relocation class of an instruction, "" for none of interest.
func relocClass(in *x86asm.Inst) string {
	rip := false
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.RIP {
			rip = true
		}
	}
	_, rel := in.Args[0].(x86asm.Rel)
	switch {
	case in.Op == x86asm.LEA && rip:
		return "lea_rip"
	case in.Op == x86asm.CMP && rip:
		return "cmp_rip_imm"
	case in.Op == x86asm.MOV && rip:
		if _, ok := in.Args[0].(x86asm.Mem); ok {
			return "store_rip"
		}
		return "load_rip"
	case rip && (in.Op == x86asm.CALL || in.Op == x86asm.JMP):
		return "branch_through_rip"
	case rip:
		return "other_rip"
	case in.Op == x86asm.CALL && rel:
		return "call_rel"
	case in.Op == x86asm.CALL:
		return "call_indirect"
	case in.Op == x86asm.JMP && rel:
		return "jmp_rel"
	case in.Op == x86asm.JMP:
		return "jmp_indirect_table"
	case rel:
		return "jcc"
	case in.Op == x86asm.RET:
		return "ret"
	}
	return ""
}

// fbtClassesCase puts an offset probe, in turn, on every instruction of fbtClasses that has a
// relocation class, in each mode, and checks that every input gives the unprobed result and
// global state, and that the probe fired as often as the instruction ran (at least once).
func fbtClassesCase(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	name := fbtName(fbtClasses)
	pc := reflect.ValueOf(fbtClasses).Pointer()
	f := runtime.FuncForPC(pc)
	code := unsafe.Slice((*byte)(unsafe.Pointer(pc)), 4096)
	want := make([][2]int64, 16)
	for x := range want {
		want[x] = [2]int64{int64(fbtClasses(x)), fbtStore}
	}
	classes := map[string]int{}
	refused := map[string]int{}
	for off := 0; off < 4096; {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || runtime.FuncForPC(pc+uintptr(off)) != f {
			break
		}
		cls := relocClass(&in)
		if cls != "" && off != 0 {
			for _, m := range []live.Mode{live.Step, live.Boost, live.Auto} {
				id, err := live.Find(name, live.Offset, off)
				if err != nil {
					t.Errorf("+%#x %v: %v", off, in, err)
					break
				}
				if err := live.Enable([]int32{id}, m); err != nil {
					refused[fmt.Sprintf("%s/%v", cls, m)]++
					t.Logf("+%#x %v in %v: %v", off, in, m, err)
					continue
				}
				h0 := live.Total(id)
				for x := range want {
					got := [2]int64{int64(fbtClasses(x)), fbtStore}
					if got != want[x] {
						t.Errorf("%s +%#x (%v) in %v: fbtClasses(%d) = %v, unprobed %v", cls, off, in, m, x, got, want[x])
					}
				}
				hits := live.Total(id) - h0
				live.Disable([]int32{id})
				if hits == 0 && !fbtCold(&in, pc+uintptr(off)) {
					// Every class instruction of the function runs for some x in [0, 16)
					// but the cold paths: stack growth, bounds-check panics.
					t.Errorf("%s +%#x (%v) in %v: never fired", cls, off, in, m)
				}
				classes[cls]++
			}
		}
		off += in.Len
	}
	keys := make([]string, 0, len(classes))
	for k := range classes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Diag("class_"+k, classes[k])
	}
	t.Diag("refused", live.Counts(refused))
	for _, need := range []string{"load_rip", "store_rip", "cmp_rip_imm", "jcc", "call_rel", "jmp_indirect_table", "call_indirect", "lea_rip"} {
		if classes[need] == 0 {
			t.Errorf("no %s instruction was probed in %s", need, name)
		}
	}
	t.Diag("xol", map[bool]string{false: "far", true: "near"}[t.Params["fbt.xol"] == "near"])
}

func fbtCopyIn(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	entry, _ := fbtProbes(t, fbtStr)
	live.SetCopyIn(entry, true)
	defer live.SetCopyIn(entry, false)
	done := fbtPinned(t, []int32{entry}, live.Auto)
	if done == nil {
		return
	}
	defer done()
	msg := []byte("tracebed copyinstr\x00")
	s0 := live.Stats(0)
	fbtStr(uintptr(unsafe.Pointer(&msg[0])))
	runtime.KeepAlive(msg)
	if _, s, _ := live.Last(0); s != "tracebed copyinstr" {
		t.Errorf("copied %q", s)
	}
	for i := 0; i < 100; i++ { // bad pointers: unmapped, non-canonical, null
		for _, p := range []uintptr{kernel.UnmappedBase + uintptr(i)*4096, 0x8000_0000_0000_0000 + uintptr(i), uintptr(i)} {
			fbtStr(p)
		}
	}
	s1 := live.Stats(0)
	t.Diag("copy_ok", s1.CopyOK-s0.CopyOK)
	t.Diag("copy_faults", s1.CopyFault-s0.CopyFault)
	if s1.CopyOK-s0.CopyOK != 1 || s1.CopyFault-s0.CopyFault != 300 {
		t.Errorf("copies ok %d faulted %d, want 1 and 300", s1.CopyOK-s0.CopyOK, s1.CopyFault-s0.CopyFault)
	}
}

// fbtSafe calls a probed function with interrupts off: in safe mode the hit is counted but no
// action runs; with safe mode off the action runs.
func fbtSafe(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	entry, _ := fbtProbes(t, fbtLeaf)
	done := fbtPinned(t, []int32{entry}, live.Auto)
	if done == nil {
		return
	}
	defer done()
	defer live.SetSafe(!ktest.Options{Params: t.Params}.Off("fbt.safe"))
	for _, safe := range []bool{true, false} {
		live.SetSafe(safe)
		s0 := live.Stats(0)
		fl := amd64.DisableInterrupts()
		r := fbtLeaf(4)
		amd64.RestoreInterrupts(fl)
		s1 := live.Stats(0)
		if r != 13 {
			t.Errorf("fbtLeaf(4) = %d under a probe with IF=0", r)
		}
		skipped, actions := s1.SafeSkipped-s0.SafeSkipped, s1.Actions-s0.Actions
		if safe && (skipped != 1 || actions != 0) || !safe && (skipped != 0 || actions != 1) {
			t.Errorf("safe=%v: %d skipped, %d actions", safe, skipped, actions)
		}
	}
}

// fbtNestedCase makes fbtAdd's action call fbtNested, which is probed too: that hit is
// counted and dropped (no action, no recursion), and both functions work.
func fbtNestedCase(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	outer, _ := fbtProbes(t, fbtAdd)
	inner, _ := fbtProbes(t, fbtNested)
	if err := live.Enable([]int32{outer, inner}, live.Auto); err != nil {
		t.Fatalf("%v", err)
		return
	}
	var ran atomic.Int32
	live.SetNestHook(func() { ran.Add(1); fbtNested() })
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	kernel.PinCPU(0)
	s0 := live.Stats(0)
	i0 := live.Total(inner)
	r := fbtAdd(1, 2)
	live.SetNestHook(nil)
	live.Disable([]int32{outer, inner})
	s1 := live.Stats(0)
	if r != (1^0x5a)+3 {
		t.Errorf("fbtAdd = %d", r)
	}
	// The outer action ran once and called fbtNested, whose hit was dropped.
	if ran.Load() != 1 || live.Total(inner)-i0 != 1 || s1.NestedDropped-s0.NestedDropped != 1 || s1.Actions-s0.Actions != 1 {
		t.Errorf("hook ran %d, inner hits %d, dropped %d, actions %d; want 1 each",
			ran.Load(), live.Total(inner)-i0, s1.NestedDropped-s0.NestedDropped, s1.Actions-s0.Actions)
	}
	t.Diag("nested_dropped", s1.NestedDropped-s0.NestedDropped)
}

// fbtForeign raises an INT3 that is no probe's while probes are enabled: the traps suite's
// handler (installed before or after live's) gets it.
func fbtForeign(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	install()
	entry, _ := fbtProbes(t, fbtAdd)
	done := fbtPinned(t, []int32{entry}, live.Step)
	if done == nil {
		return
	}
	defer done()
	l := arm(idt.Breakpoint)
	s0 := live.Stats(0)
	int3Site()
	r := fbtAdd(3, 4)
	int3Site()
	s1 := live.Stats(0)
	n := l.n
	arm()
	// Whichever handler comes first in the chain passes the other's trap on.
	if n != 2 || s1.Hits-s0.Hits != 1 || r != (3^0x5a)+5 {
		t.Errorf("the traps handler saw %d INT3s (want 2), the probe %d hits (want 1); fbtAdd = %d", n, s1.Hits-s0.Hits, r)
	}
	t.Diag("passed_on_by_fbt", s1.PassedBP-s0.PassedBP)
}

// fbtStepTimer single-steps probes while the CPU's timer is armed to fire at once: the
// interrupt waits for the step (IF is clear during it), then is taken; no #DB lands anywhere
// but the step copy.
func fbtStepTimer(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	entry, rets := fbtProbes(t, fbtAdd)
	ids := append([]int32{entry}, rets...)
	done := fbtPinned(t, ids, live.Step)
	if done == nil {
		return
	}
	defer done()
	fbtGrowStack(fbtStackDepth)
	t0 := trap.Count(0, kernel.VecTimer)
	s0 := live.Stats(0)
	const n = 500
	for i := 0; i < n; i++ {
		fl := amd64.DisableInterrupts()
		kernel.FireTimerIn(1000)
		amd64.RestoreInterrupts(fl)
		if got := fbtAdd(i, 1); got != (i^0x5a)+2 {
			t.Fatalf("fbtAdd(%d, 1) = %d", i, got)
			return
		}
	}
	s1 := live.Stats(0)
	timers := trap.Count(0, kernel.VecTimer) - t0
	t.Diag("timer_interrupts", timers)
	t.Diag("steps", s1.Steps-s0.Steps)
	if s1.Steps-s0.Steps < 2*n || s1.PassedDB != s0.PassedDB {
		t.Errorf("%d steps (want %d), %d #DB passed on (want 0)", s1.Steps-s0.Steps, 2*n, s1.PassedDB-s0.PassedDB)
	}
	if timers < n/4 {
		t.Errorf("only %d timer interrupts in %d armed steps", timers, n)
	}
}

// fbtDropDB suppresses every third step's trap flag: the guard after the copy catches each,
// the counts stay exact, and nothing runs away.
func fbtDropDB(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	entry, rets := fbtProbes(t, fbtAdd)
	ids := append([]int32{entry}, rets...)
	if err := live.Enable(ids, live.Step); err != nil {
		t.Fatalf("%v", err)
		return
	}
	live.SetDropDB(3)
	st0 := live.TotalStats()
	e0, r0 := live.Total(entry), fbtSum(rets)
	n := kernel.OnlineCPUs()
	var bad atomic.Int32
	onCPUs(0, n, func(cpu int, pinned bool) {
		fbtGrowStack(fbtStackDepth)
		for i := 0; i < 300; i++ {
			if fbtAdd(i, cpu) != (i^0x5a)+cpu+1 {
				bad.Add(1)
			}
		}
	})
	live.SetDropDB(0)
	live.Disable(ids)
	st := live.TotalStats()
	t.Diag("missed_db_caught", st.MissedDB-st0.MissedDB)
	if bad.Load() != 0 {
		t.Errorf("%d wrong results", bad.Load())
	}
	if e, r := live.Total(entry)-e0, fbtSum(rets)-r0; e != uint64(300*n) || r != uint64(300*n) {
		t.Errorf("%d entries, %d returns, want %d each", e, r, 300*n)
	}
	if st.MissedDB-st0.MissedDB < uint64(100*n) {
		t.Errorf("%d missed #DBs caught, want at least %d", st.MissedDB-st0.MissedDB, 100*n)
	}
}

// fbtCost measures a probed call against the same call unprobed, in each mode.
func fbtCost(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	entry, _ := fbtProbes(t, fbtAdd)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer kernel.UnpinCPU()
	kernel.PinCPU(0)
	const n = 20000
	timeCalls := func() float64 {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			fbtAdd(i, 0)
		}
		return float64(time.Since(t0).Nanoseconds()) / n
	}
	base := timeCalls()
	t.Diag("unprobed_ns", fmt.Sprintf("%.0f", base))
	for _, m := range []live.Mode{live.Emulate, live.Boost, live.Step} {
		if err := live.Enable([]int32{entry}, m); err != nil {
			t.Errorf("%v", err)
			continue
		}
		ns := timeCalls()
		live.Disable([]int32{entry})
		t.Diag(m.String()+"_ns", fmt.Sprintf("%.0f", ns-base))
		t.Diag(m.String()+"_ratio", fmt.Sprintf("%.1f", ns/base))
	}
}

// fbtAll probes the entry and every return of every function that may be probed (the runtime
// and the standard library included) while every CPU runs goroutines that allocate, fill
// maps, pass values through channels and collect garbage for fbt_seconds; the workload's
// own checks must pass and probes must fire on every CPU.
func fbtAll(t *ktest.T) {
	secs, ok := fbtSetupSeconds(t)
	if !ok {
		return
	}
	sel, err := live.Resolve(fbtAllSpec)
	if err != nil {
		t.Fatalf("%v", err)
		return
	}
	m := live.Auto
	if v, ok := t.Params["fbt.mode"]; ok {
		m, _ = live.ParseMode(v)
	}
	n := kernel.OnlineCPUs()
	before := make([]uint64, n)
	for c := range before {
		before[c] = live.Stats(c).Hits
	}
	st0 := live.TotalStats()
	b0, _ := live.CheckBuffers() // before the enable: no record offered while it drains
	t0 := time.Now()
	ways, err := live.EnableSelection(sel, m)
	if err != nil {
		t.Fatalf("%v", err)
		return
	}
	t.Diag("enable_ms", time.Since(t0).Milliseconds())
	enabled := 0
	for _, v := range ways {
		enabled += v
	}
	t.Diag("sites_enabled", enabled)
	t.Diag("ways", live.Counts(ways))
	t.Diag("skipped", live.Counts(sel.Skipped))
	bad := make([]string, n)
	deadline := time.Now().Add(time.Duration(secs) * time.Second)
	rounds := make([]int, n)
	stop := make(chan struct{})
	consumed := fbtConsumer(stop)
	onCPUs(0, n, func(cpu int, pinned bool) {
		for time.Now().Before(deadline) {
			if err := fbtWorkload(cpu, rounds[cpu]); err != "" {
				bad[cpu] = err
				return
			}
			rounds[cpu]++
		}
	})
	t1 := time.Now()
	if err := live.Disable(sel.IDs); err != nil {
		t.Errorf("%v", err)
	}
	t.Diag("disable_ms", time.Since(t1).Milliseconds())
	close(stop)
	fbtBuffersChecked(t, b0, <-consumed)
	st := live.TotalStats()
	t.Diag("hits", st.Hits-st0.Hits)
	t.Diag("actions", st.Actions-st0.Actions)
	t.Diag("safe_skipped", st.SafeSkipped-st0.SafeSkipped)
	for c := 0; c < n; c++ {
		t.Diag(fmt.Sprintf("cpu%d_last_safe_skipped", c), live.LastSafeSkipped(c))
	}
	t.Diag("nested_dropped", st.NestedDropped-st0.NestedDropped)
	t.Diag("emulated", st.Emulated-st0.Emulated)
	t.Diag("emulation_fallbacks", st.EmuFallback-st0.EmuFallback)
	t.Diag("boosted", st.Boosted-st0.Boosted)
	t.Diag("steps", st.Steps-st0.Steps)
	fbtRacedDiags(t, st0)
	t.Diag("rounds", fmt.Sprint(rounds))
	t.Diag("workload_if_off", fbtIFOff.Load())
	for c := 0; c < n; c++ {
		if bad[c] != "" {
			t.Errorf("cpu %d: %s", c, bad[c])
		}
		if h := live.Stats(c).Hits - before[c]; h == 0 {
			t.Errorf("cpu %d: no probe fired", c)
		}
	}
	// Goroutines never run with interrupts off: a thread left with IF=0 (as goroutine code
	// that disabled interrupts and was then preempted by the runtime once left them) could not
	// be preempted by the kernel, and its probe hits would all be skipped by safe mode.
	if n := fbtIFOff.Load(); n != 0 {
		t.Errorf("the workload ran %d rounds with interrupts off", n)
	}
	if enabled < 1000 {
		t.Errorf("only %d sites enabled", enabled)
	}
}

var fbtAllSpec, _ = fbt.ParseSpec("all")

// fbtWorkload is one round of the load: a map, a channel pipeline and garbage, checked.
var fbtIFOff atomic.Int64

func fbtWorkload(cpu, round int) string {
	if amd64.Flags()&amd64.RFLAGS_IF == 0 {
		fbtIFOff.Add(1)
	}
	mp := map[int]string{}
	for i := 0; i < 200; i++ {
		mp[i] = fmt.Sprint(i * cpu)
	}
	for i := 0; i < 200; i++ {
		if mp[i] != fmt.Sprint(i*cpu) {
			return fmt.Sprintf("map[%d] = %q", i, mp[i])
		}
	}
	ch := make(chan int, 4)
	done := make(chan int)
	go func() {
		s := 0
		for v := range ch {
			s += v
		}
		done <- s
	}()
	for i := 0; i < 100; i++ {
		ch <- i
	}
	close(ch)
	if s := <-done; s != 4950 {
		return fmt.Sprintf("channel sum %d", s)
	}
	garbage := make([][]byte, 64)
	for i := range garbage {
		garbage[i] = make([]byte, 4096)
		garbage[i][0] = byte(i)
	}
	for i := range garbage {
		if garbage[i][0] != byte(i) {
			return "garbage corrupted"
		}
	}
	if round%20 == 0 {
		runtime.GC()
	}
	return ""
}

// fbtScaleIDs returns up to n sites auto mode can run, prepared (planning is the first enable's
// cost alone, and not what batching saves): every entry and return first, then the offset
// sites Init added.
func fbtScaleIDs(t *ktest.T, n int) []int32 {
	sel, err := live.Resolve(fbtAllSpec)
	if err != nil {
		t.Fatalf("%v", err)
		return nil
	}
	var ids []int32
	for _, id := range append(append([]int32(nil), sel.IDs...), live.OffsetSites()...) {
		if len(ids) == n {
			break
		}
		if live.Plannable(id, live.Auto) {
			ids = append(ids, id)
		}
	}
	return ids
}

// fbtPlannable is the sites of ids mode m can run, prepared.
func fbtPlannable(ids []int32, m live.Mode) []int32 {
	var out []int32
	for _, id := range ids {
		if live.Plannable(id, m) {
			out = append(out, id)
		}
	}
	return out
}

// fbtEnableIn enables ids (sites mode m can run, none enabled yet) in one live.Enable, and
// returns the enabled ids, the time the Enable took and the synchronisations it made. The
// enabled count must have grown by len(ids).
//
// Once Enable returns, every probe is live — in this code too (offset sites lie in the suites'
// functions as well), so a loop over 36,000 ids here ran stepped in step mode: 11 s at 8 CPUs.
// Without an error every id is enabled, and only the error path looks at each.
func fbtEnableIn(t *ktest.T, ids []int32, m live.Mode) ([]int32, time.Duration, uint64) {
	n0 := live.NumEnabled()
	s0 := live.Syncs()
	t0 := time.Now()
	err := live.Enable(ids, m)
	d := time.Since(t0)
	if err == nil {
		if got := live.NumEnabled() - n0; got != len(ids) {
			t.Errorf("enable: %d sites enabled in mode %v, want %d", got, m, len(ids))
		}
		return ids, d, live.Syncs() - s0
	}
	t.Errorf("enable: %v", err)
	var on []int32
	for _, id := range ids {
		if live.Enabled(id) {
			on = append(on, id)
		}
	}
	return on, d, live.Syncs() - s0
}

// fbtScaleRun enables ids in mode m and disables them, batched or one probe at a time, prints
// the figures under name (sites enabled, time and synchronisations of each operation, and
// where the time went: live.Phases), checks the synchronisations made and the text restored,
// and returns the time both operations took.
func fbtScaleRun(t *ktest.T, name string, ids []int32, m live.Mode, batch bool) time.Duration {
	n0 := live.NumEnabled()
	live.SetBatch(batch)
	p0 := live.OpPhases()
	on, de, se := fbtEnableIn(t, ids, m)
	p1 := live.OpPhases()
	s0 := live.Syncs()
	t0 := time.Now()
	if err := live.Disable(on); err != nil {
		t.Errorf("%s: disable: %v", name, err)
	}
	dd, sd := time.Since(t0), live.Syncs()-s0
	t.Diag(name+"_enabled", len(on))
	t.Diag(name+"_enable_ms", de.Milliseconds())
	t.Diag(name+"_disable_ms", dd.Milliseconds())
	t.Diag(name+"_syncs", se+sd)
	fbtPhaseDiags(t, name+"_enable", p1.Sub(p0))
	fbtPhaseDiags(t, name+"_disable", live.OpPhases().Sub(p1))
	if batch && se+sd > 3 {
		t.Errorf("%s: %d synchronisations, want at most 3", name, se+sd)
	}
	if !batch && se+sd != 6*uint64(len(on)) {
		t.Errorf("%s: %d synchronisations, want 6 per probe", name, se+sd)
	}
	if k := live.NumEnabled(); k != n0 {
		t.Errorf("%s: %d sites counted enabled after the disable, %d before the enable", name, k, n0)
	}
	if bad := live.CheckRestored(ids); bad != "" {
		t.Errorf("%s: %s", name, bad)
	}
	return de + dd
}

// fbtScale enables and tears down 1,000, 10,000 and 30,000 probes in auto mode, batched and
// one at a time (the per-probe protocol up to fbt_scale_per_probe, default 30,000), prints the
// time, the all-CPU synchronisations and where the time went for each, and the ratio of the
// two protocols' times at each size; then 30,000 (or as many as the mode can run) batched in
// each other mode. Batched, one operation of any size makes at most 3 synchronisations; per
// probe, 6 per probe. Every patched byte is the original again afterwards.
func fbtScale(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	defer live.SetBatch(!ktest.Options{Params: t.Params}.Off("fbt.batch"))
	perProbeMax, err := ktest.Options{Params: t.Params}.IntParam("fbt_scale_per_probe", 30000)
	if err != nil {
		t.Fatalf("%v", err)
		return
	}
	defer fbtRacedDiags(t, live.TotalStats())
	defer fbtSnapshotDiags(t, kernel.Snapshots())
	all := fbtScaleIDs(t, 30000)
	if len(all) < 30000 {
		t.Errorf("only %d sites for 30000 probes (fbt.sites=%s)", len(all), t.Params["fbt.sites"])
		return
	}
	// A site's first enable relocates its boosted copy into an XOL slot; later ones find the
	// copy still there (fbt/live's placeBoost). That is the first enable's cost alone, whatever
	// the protocol, and not what batching saves: it is paid and printed here, once.
	fbtScaleRun(t, "first_n30000", all, live.Auto, true)
	for _, n := range []int{1000, 10000, 30000} {
		ids := all[:n]
		batched := fbtScaleRun(t, fmt.Sprintf("n%d_batched", n), ids, live.Auto, true)
		if int64(n) > perProbeMax {
			continue
		}
		perProbe := fbtScaleRun(t, fmt.Sprintf("n%d_per_probe", n), ids, live.Auto, false)
		if batched > 0 {
			t.Diag(fmt.Sprintf("per_probe_over_batched_at_%d", n), fmt.Sprintf("%.0f", float64(perProbe)/float64(batched)))
		}
	}
	for _, m := range []live.Mode{live.Emulate, live.Boost, live.Step} {
		ids := fbtPlannable(all, m)
		// Of the first 30,000 sites boost and step ran all, emulate 17,583 (4 CPUs).
		if len(ids) < 10000 {
			t.Errorf("mode %v can run only %d of the %d sites", m, len(ids), len(all))
		}
		fbtScaleRun(t, fmt.Sprintf("n30000_%v_batched", m), ids, m, true)
	}
}

// fbtSnapshotDiags prints the thread snapshots taken since sn0 (disables and the reaper), those
// retried because a CPU switched threads before it answered, and those taken holding klock.
func fbtSnapshotDiags(t *ktest.T, sn0 kernel.SnapshotStats) {
	sn := kernel.Snapshots()
	t.Diag("thread_snapshots", sn.Taken-sn0.Taken)
	t.Diag("thread_snapshots_retried", sn.Retried-sn0.Retried)
	t.Diag("thread_snapshots_under_klock", sn.Locked-sn0.Locked)
}

// fbtPhaseDiags prints where an enable or a disable spent its time (live.Phases), in ms.
func fbtPhaseDiags(t *ktest.T, name string, p live.Phases) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/1e6) }
	t.Diag(name+"_phases_ms", fmt.Sprintf("plan=%s poke=%s sync=%s threads=%s release=%s",
		ms(p.Plan), ms(p.Poke), ms(p.Sync), ms(p.Threads), ms(p.Release)))
}

// fbtConsumer drains the per-CPU double buffers every 10 ms until stop is closed, counting
// records per site; the returned channel yields the counts once it has stopped.
func fbtConsumer(stop <-chan struct{}) <-chan map[int32]uint64 {
	out := make(chan map[int32]uint64, 1)
	go func() {
		counts := map[int32]uint64{}
		add := func(cpu int, recs []live.Record) {
			for i := range recs {
				counts[recs[i].Site]++
			}
		}
		for {
			select {
			case <-stop:
				live.Drain(add)
				out <- counts
				return
			case <-time.After(10 * time.Millisecond):
				live.Drain(add)
			}
		}
	}()
	return out
}

// fbtBuffersChecked checks the double buffers once every probe is disabled and prints their
// figures: records consumed, dropped (and the drop rate), and the top functions by records.
func fbtBuffersChecked(t *ktest.T, b0 live.BufStats, counts map[int32]uint64) {
	b, bad := live.CheckBuffers()
	if bad != "" {
		t.Errorf("double buffers: %s", bad)
	}
	offered := b.Offered - b0.Offered
	t.Diag("records_offered", offered)
	t.Diag("records_consumed", b.Consumed-b0.Consumed)
	t.Diag("records_dropped", b.Drops-b0.Drops)
	t.Diag("records_missing", b.Missing-b0.Missing) // sequence numbers never seen: must be the drops
	if offered > 0 {
		t.Diag("drop_rate", fmt.Sprintf("%.4f", float64(b.Drops-b0.Drops)/float64(offered)))
	}
	t.Diag("top_functions", strings.Join(live.TopFuncs(counts, 5), ","))
}

// fbtRacedDiags prints the #BPs taken at sites already disabled since st0 (raced), and those
// of them fetched after the restore for certain (stale_int3: kernel.RefetchText).
func fbtRacedDiags(t *ktest.T, st0 live.CPUStats) {
	st := live.TotalStats()
	t.Diag("raced", st.Raced-st0.Raced)
	t.Diag("stale_int3", st.StaleINT3-st0.StaleINT3)
}

// fbtReapSettled waits (up to 2 s) for the reaper to free what it holds, prints the teardown's
// slot figures since r0 (and u0 uses after free), fails on a slot still pending or leaked,
// and returns the uses after free.
func fbtReapSettled(t *ktest.T, r0 live.ReapStats, u0 uint64) uint64 {
	deadline := time.Now().Add(2 * time.Second)
	for live.Reaping().Pending > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	r, uaf := live.Reaping(), live.TotalStats().UseAfterFree-u0
	t.Diag("deferred_to_reaper", r.Deferred-r0.Deferred)
	t.Diag("reaper_retries", r.Retries-r0.Retries)
	t.Diag("reaped", r.Reaped-r0.Reaped)
	t.Diag("freed_at_once", r.FreedAtOnce-r0.FreedAtOnce)
	t.Diag("use_after_free", uaf)
	t.Diag("slots_pending", r.Pending)
	t.Diag("slots_leaked", r.Leaked)
	if r.Pending != 0 || r.Leaked != 0 {
		t.Errorf("%d slot(s) still pending after 2 s, %d leaked", r.Pending, r.Leaked)
	}
	return uaf
}

// FBTTorture loops { enable every site (entries, returns and offsets: over 30,000) → dwell →
// disable all } for fbt_seconds, while a GC, goroutine and cross-CPU call load runs on every
// CPU throughout, so that every enable and every disable happens under load. The loops take
// the modes in turn (auto, boost, step, emulate: the sites each can run). Every loop must
// leave the text as it was, the workload's checks must pass, and the hits counted per site
// must add up to the hits counted per CPU.
var FBTTorture = ktest.Suite{Name: "fbt_torture", Cases: []ktest.Case{{Name: "enable_load_disable", Run: fbtTorture}}}

// fbtTortureDwell is how long each loop keeps its probes enabled under the load.
const fbtTortureDwell = 500 * time.Millisecond

// fbtTortureMode is one mode's sites and figures in the torture.
type fbtTortureMode struct {
	m                  live.Mode
	ids                []int32
	loops              int
	enable, disable    time.Duration
	syncs, hits        uint64
	enabledFor         time.Duration
	maxEnable, maxDrop time.Duration
	enPh, disPh        live.Phases
}

func fbtTorture(t *ktest.T) {
	secs, ok := fbtSetupSeconds(t)
	if !ok {
		return
	}
	start := time.Now()
	defer fbtSnapshotDiags(t, kernel.Snapshots())
	ids := fbtScaleIDs(t, 1<<30)
	modes := []*fbtTortureMode{{m: live.Auto, ids: ids}, {m: live.Boost}, {m: live.Step}, {m: live.Emulate}}
	for _, md := range modes[1:] {
		md.ids = fbtPlannable(ids, md.m)
	}
	n := kernel.OnlineCPUs()
	r0, u0 := live.Reaping(), live.TotalStats().UseAfterFree
	b0, _ := live.CheckBuffers()
	stT0 := live.TotalStats()
	all := map[int32]uint64{}
	stop := make(chan struct{})
	consumed := fbtConsumer(stop)
	// The load, on every CPU for the whole run.
	bad := make([]string, n)
	rounds := make([]uint64, n)
	var loadStop atomic.Bool
	var started atomic.Int32
	loadDone := make(chan struct{})
	go func() {
		onCPUs(0, n, func(cpu int, pinned bool) {
			started.Add(1)
			if !pinned {
				bad[cpu] = "the load's worker could not be pinned to its CPU"
				return
			}
			for r := 0; !loadStop.Load(); r++ {
				if e := fbtWorkload(cpu, r); e != "" {
					bad[cpu] = e
					return
				}
				if cpu%2 == 1 && !kernel.SyncCPUs() { // cross-CPU calls to every CPU
					bad[cpu] = "a CPU did not answer a cross-CPU call"
					return
				}
				rounds[cpu]++
			}
		})
		close(loadDone)
	}()
	for w := time.Now(); started.Load() < int32(n) && time.Since(w) < 10*time.Second; {
		time.Sleep(time.Millisecond) // every worker on its CPU before the first enable
	}
	if k := started.Load(); k < int32(n) {
		t.Errorf("only %d of %d load workers started in 10 s", k, n)
	}
	t.Diag("setup_ms", time.Since(start).Milliseconds()) // planning every site in every mode
	start = time.Now()
	deadline := start.Add(time.Duration(secs) * time.Second)
	loops := 0
	for loops < len(modes) || time.Now().Before(deadline) {
		md := modes[loops%len(modes)]
		st0 := live.TotalStats()
		sum0 := fbtSum(md.ids)
		p0 := live.OpPhases()
		on, de, se := fbtEnableIn(t, md.ids, md.m)
		p1 := live.OpPhases()
		md.enPh = md.enPh.Add(p1.Sub(p0))
		l0, h0 := time.Now(), live.TotalStats().Hits
		time.Sleep(fbtTortureDwell)
		t0 := time.Now()
		md.enabledFor += t0.Sub(l0)
		md.hits += live.TotalStats().Hits - h0
		s0 := live.Syncs()
		if err := live.Disable(on); err != nil {
			t.Errorf("loop %d (%v): disable: %v", loops, md.m, err)
		}
		dd := time.Since(t0)
		p2 := live.OpPhases()
		md.disPh = md.disPh.Add(p2.Sub(p1))
		md.loops++
		md.enable += de
		md.disable += dd
		if sy := se + live.Syncs() - s0; sy > 3 {
			t.Errorf("loop %d (%v): %d synchronisations, want at most 3", loops, md.m, sy)
		} else {
			md.syncs += sy
		}
		md.maxEnable, md.maxDrop = max(md.maxEnable, de), max(md.maxDrop, dd)
		st := live.TotalStats()
		if len(on) != len(md.ids) {
			t.Errorf("loop %d (%v): %d of %d sites enabled", loops, md.m, len(on), len(md.ids))
		}
		if b := live.CheckRestored(md.ids); b != "" {
			t.Errorf("loop %d (%v): %s", loops, md.m, b)
		}
		// Hits on sites outside ids (the suite's own) would break the sum: there are none here.
		if got, want := fbtSum(md.ids)-sum0, st.Hits-st0.Hits; got != want {
			t.Errorf("loop %d (%v): %d hits counted per site, %d per CPU", loops, md.m, got, want)
		}
		loops++
		if t.Failed() {
			break
		}
	}
	t.Diag("loops_ms", time.Since(start).Milliseconds())
	start = time.Now()
	loadStop.Store(true)
	<-loadDone
	t.Diag("load_stop_ms", time.Since(start).Milliseconds())
	close(stop)
	for id, c := range <-consumed {
		all[id] += c
	}
	for c, b := range bad {
		if b != "" {
			t.Errorf("cpu %d: %s", c, b)
		}
	}
	var hits uint64
	var enabledFor time.Duration
	for _, md := range modes {
		if md.loops == 0 {
			continue
		}
		k := md.m.String()
		t.Diag(k+"_sites", len(md.ids))
		t.Diag(k+"_loops", md.loops)
		t.Diag(k+"_enable_ms_per_loop", (md.enable / time.Duration(md.loops)).Milliseconds())
		t.Diag(k+"_disable_ms_per_loop", (md.disable / time.Duration(md.loops)).Milliseconds())
		t.Diag(k+"_enable_ms_max", md.maxEnable.Milliseconds())
		t.Diag(k+"_disable_ms_max", md.maxDrop.Milliseconds())
		fbtPhaseDiags(t, k+"_enable", md.enPh)
		fbtPhaseDiags(t, k+"_disable", md.disPh)
		t.Diag(k+"_syncs_per_loop", fmt.Sprintf("%.1f", float64(md.syncs)/float64(md.loops)))
		t.Diag(k+"_fires_per_second", fmt.Sprintf("%.0f", float64(md.hits)/md.enabledFor.Seconds()))
		if md.hits == 0 {
			t.Errorf("%v: no probe fired in %d loops under load", md.m, md.loops)
		}
		hits += md.hits
		enabledFor += md.enabledFor
	}
	t.Diag("sites", len(ids))
	t.Diag("loops", loops)
	t.Diag("hits", hits)
	t.Diag("fires_per_second_under_load", fmt.Sprintf("%.0f", float64(hits)/enabledFor.Seconds()))
	reportPerCPU(t, "load_rounds", rounds)
	fbtRacedDiags(t, stT0)
	fbtBuffersChecked(t, b0, all)
	if uaf := fbtReapSettled(t, r0, u0); uaf != 0 {
		t.Errorf("%d use(s) of a freed XOL slot", uaf)
	}
	if fbtIFOff.Load() != 0 {
		t.Errorf("the workload ran %d rounds with interrupts off", fbtIFOff.Load())
	}
	if len(ids) < 30000 {
		t.Errorf("only %d sites", len(ids))
	}
}

//go:noinline
//go:nosplit
func fbtReapTarget(x int) int { return x*3 + 1 }

// fbtReap gets a thread preempted inside a boosted copy and disables the probe while the thread
// is descheduled there. Two threads share the last CPU: A calls the probed function in a loop;
// B, queued behind it, arms the probe's action to end A's time slice, so that the timer
// interrupt comes right after the handler, at the copy's first instruction, and B runs while A
// waits in the copy. B disables the probe: the disable's snapshot must find A inside and leave
// the slot to the reaper, which frees it once A has left; A's results stay right. With
// fbt.reap=0 the slot is freed (filled with INT3) at once, A resumes in it, and the case fails
// with the use after free counted. An attempt in which A was not caught inside (another
// thread ran first) is repeated, up to 20 times; never catching it is a failure too.
func fbtReap(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	entry, err := live.Find(fbtName(fbtReapTarget), live.Entry, 0)
	if err != nil {
		t.Fatalf("%v", err)
		return
	}
	cpu := kernel.OnlineCPUs() - 1
	// A and B each hold a P while they share one CPU (A's loop has no preemption point and
	// would keep the only P at one CPU), and the reaper and the runtime get another.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(kernel.OnlineCPUs() + 2))
	var arm, fired atomic.Bool
	live.SetNestHook(func() {
		if arm.Load() && kernel.CurrentCPU() == cpu {
			arm.Store(false)
			fired.Store(true)
			kernel.PreemptSoon()
		}
	})
	defer live.SetNestHook(nil)
	r0, u0 := live.Reaping(), live.TotalStats().UseAfterFree
	attempts, caught := 0, false
	var bad atomic.Int64
	for attempts < 20 && !caught && live.TotalStats().UseAfterFree == u0 {
		attempts++
		if err := live.Enable([]int32{entry}, live.Boost); err != nil {
			t.Fatalf("%v", err)
			return
		}
		d0 := live.Reaping().Deferred
		arm.Store(false)
		fired.Store(false)
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { // A
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer kernel.UnpinCPU()
			kernel.PinCPU(cpu)
			for i := 0; !stop.Load(); i++ {
				if fbtReapTarget(i) != 3*i+1 {
					bad.Add(1)
				}
			}
		}()
		func() { // B, on this goroutine
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer kernel.UnpinCPU()
			kernel.PinCPU(cpu)
			arm.Store(true)
			deadline := time.Now().Add(2 * time.Second)
			for !fired.Load() && time.Now().Before(deadline) {
				syscall.Syscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
			}
			arm.Store(false)
			if err := live.Disable([]int32{entry}); err != nil {
				t.Errorf("disable: %v", err)
			}
			caught = live.Reaping().Deferred > d0
			stop.Store(true)
		}()
		wg.Wait()
	}
	t.Diag("attempts", attempts)
	uaf := fbtReapSettled(t, r0, u0)
	switch {
	case uaf != 0:
		t.Errorf("a thread resumed in a freed XOL slot %d time(s): the slot was freed while it was inside (fbt.reap=%s)", uaf, t.Params["fbt.reap"])
	case !caught:
		t.Errorf("in %d attempts no thread was caught inside the copy at the disable: the case proved nothing", attempts)
	}
	if bad.Load() != 0 {
		t.Errorf("%d wrong results from the probed function", bad.Load())
	}
}

// fbtTeardownIDs are the sites the teardown case enables: every instruction of fbtClasses
// (offset probes on every relocation class it holds), the entries and returns of fbtClasses,
// fbtCallee and fbtAdd, and the kernel's first 1,000 plannable sites.
func fbtTeardownIDs(t *ktest.T) []int32 {
	name := fbtName(fbtClasses)
	pc := reflect.ValueOf(fbtClasses).Pointer()
	f := runtime.FuncForPC(pc)
	code := unsafe.Slice((*byte)(unsafe.Pointer(pc)), 4096)
	var ids []int32
	for off := 0; off < 4096; {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || runtime.FuncForPC(pc+uintptr(off)) != f {
			break
		}
		if off != 0 && in.Op != x86asm.RET {
			if id, err := live.Find(name, live.Offset, off); err == nil {
				ids = append(ids, id)
			}
		}
		off += in.Len
	}
	for _, fn := range []any{fbtClasses, fbtCallee, fbtAdd} {
		entry, rets := fbtProbes(t, fn)
		ids = append(append(ids, entry), rets...)
	}
	for _, id := range fbtScaleIDs(t, 1000) {
		if !contains32(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// fbtTeardown disables probes while the functions they probe run, from three contexts: a
// goroutine on another CPU, a timer callback (time.AfterFunc's goroutine), and a goroutine on
// another CPU while every worker also broadcasts cross-CPU calls (an all-to-all storm). Workers
// on every other CPU call fbtClasses and fbtAdd in a loop and check every result against the
// unprobed one, before, during and after the teardown; with more than one CPU they must have
// run during it. (At one CPU the workers and the teardown take turns.) Each context runs once per mode (boost,
// step, auto). The text must be the original again, every teardown must have found probes
// firing, the reaper must settle and no freed slot may be used.
func fbtTeardown(t *ktest.T) {
	if !fbtSetup(t) {
		return
	}
	ids := fbtTeardownIDs(t)
	var want [16]int
	for x := range want {
		want[x] = fbtClasses(x)
	}
	wantAdd := fbtAdd(3, 4)
	n := kernel.OnlineCPUs()
	workers, tearer := n-1, n-1 // workers on CPUs 0..n-2, the teardown on the last
	if n == 1 {
		workers = 1 // one CPU: the workers and the teardown take turns on it
	}
	r0, u0 := live.Reaping(), live.TotalStats().UseAfterFree
	st0 := live.TotalStats()
	t.Diag("sites", len(ids))
	for _, ctx := range []string{"other_cpu", "timer_callback", "xcall_storm"} {
		var hits, during uint64
		for _, m := range []live.Mode{live.Boost, live.Step, live.Auto} {
			sel := &live.Selection{IDs: ids, Strict: make([]bool, len(ids)), Skipped: map[string]int{}}
			if _, err := live.EnableSelection(sel, m); err != nil {
				t.Errorf("%s/%v: enable: %v", ctx, m, err)
				live.Disable(ids) // what it enabled before failing
				return
			}
			var stop atomic.Bool
			var calls atomic.Uint64
			bad := make([]string, workers)
			done := make(chan struct{})
			go func() {
				defer close(done)
				onCPUs(0, workers, func(cpu int, pinned bool) {
					for !stop.Load() && bad[cpu] == "" {
						for x := range want {
							if got := fbtClasses(x); got != want[x] {
								bad[cpu] = fmt.Sprintf("fbtClasses(%d) = %d, unprobed %d", x, got, want[x])
							}
						}
						if got := fbtAdd(3, 4); got != wantAdd {
							bad[cpu] = fmt.Sprintf("fbtAdd(3, 4) = %d, unprobed %d", got, wantAdd)
						}
						if ctx == "xcall_storm" && !kernel.SyncCPUs() {
							bad[cpu] = "a CPU did not answer a cross-CPU call"
						}
						calls.Add(1)
					}
				})
			}()
			h0 := fbtSum(ids)
			time.Sleep(20 * time.Millisecond) // the workers run probed code
			c0 := calls.Load()
			var err error
			switch ctx {
			case "timer_callback":
				errc := make(chan error, 1)
				time.AfterFunc(time.Millisecond, func() { errc <- live.Disable(ids) })
				err = <-errc
			default:
				onCPUs(tearer, tearer+1, func(int, bool) { err = live.Disable(ids) })
			}
			during += calls.Load() - c0
			hits += fbtSum(ids) - h0
			time.Sleep(10 * time.Millisecond) // and the restored text
			stop.Store(true)
			<-done
			if err != nil {
				t.Errorf("%s/%v: disable: %v", ctx, m, err)
			}
			if b := live.CheckRestored(ids); b != "" {
				t.Errorf("%s/%v: %s", ctx, m, b)
			}
			for cpu, b := range bad {
				if b != "" {
					t.Errorf("%s/%v: cpu %d: %s", ctx, m, cpu, b)
				}
			}
			if fbtSum(ids) == h0 {
				t.Errorf("%s/%v: no probe fired while the workers ran", ctx, m)
			}
		}
		t.Diag(ctx+"_hits", hits)
		t.Diag(ctx+"_worker_rounds_during_teardown", during)
		if n > 1 && during == 0 {
			t.Errorf("%s: no worker ran a round while the probes were torn down", ctx)
		}
	}
	fbtRacedDiags(t, st0)
	if uaf := fbtReapSettled(t, r0, u0); uaf != 0 {
		t.Errorf("%d use(s) of a freed XOL slot", uaf)
	}
}
