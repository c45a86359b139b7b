// Package live is function boundary tracing in the running kernel: probe sites found in the
// kernel's own pclntab, the functions that must never be probed computed from its call graph,
// INT3 patched into the text through a writable alias, and the #BP and #DB handlers that run a
// probe's action and then the displaced instruction — emulated, boosted out of line, or
// single-stepped out of line.
//
// # Sites
//
// Init decodes every function (x86asm, linearly: Go keeps no data in its text) and records an
// entry site at its first instruction and a return site at every RET, sorted by address in a
// table that never changes afterwards. Offset sites (FUNC+OFF, any instruction boundary) are
// appended to a fixed array as they are asked for. Neither is ever freed or moved, so the #BP
// handler looks a site up by address with a binary search and a short scan, with no lock and
// no allocation.
//
// A function is never probed ("toxic") when the probe path could run it: everything reachable
// by direct calls (callgraph) from the kernel's own packages (trap entry, scheduler, the Linux
// ABI host: all run with interrupts off or in trap context), the CPU and device packages, the
// #BP/#DB handlers of this package, and the handlers the suites register for traps (which the
// call graph cannot see: they are called through trap's table). Assembly functions are skipped
// too (their frames and stack use are not the compiler's), as are functions that do not decode.
//
// # Patching (the cross-modifying-code protocol)
//
// Enabling a site: its plan (emulation, boosted copy, step copy) is prepared and the boosted
// copy written into the XOL area through the area's writable alias; the site is marked enabled;
// then one byte, INT3, is stored over the instruction's first byte through a temporary
// writable alias of the text page (kernel.PokeTexts: the text mapping stays read-only). A CPU
// fetching the instruction concurrently sees either the old byte — the unprobed instruction,
// which is still correct — or INT3, which the handler finds enabled with its plan ready.
// After a batch, every CPU serialises (kernel.SyncCPUs) before Enable returns.
//
// Disabling: the original byte is stored back and the site marked disabled, then every CPU
// serialises (after which no CPU can fetch the INT3, and none is still inside a handler that
// began before: handlers run with interrupts off and the serialising call waits for them). A
// #BP raised by the INT3 whose handler finds the site disabled sees the original byte back and
// re-executes it: RIP = the site.
//
// Plans (emulation, step copy) are kept for the kernel's lifetime. A boosted copy's XOL slot is
// not: the disable's serialisation also snapshots every thread's RIP (kernel.SyncThreads), and
// the slot is freed at once when no thread is inside it, or later by the reaper (slots.go).
//
// # The #BP path
//
// onBreakpoint: a #BP at an enabled site counts the hit per CPU, runs the action (unless the
// interrupted code had IF=0 in safe mode, or this CPU is already inside an action: counted,
// never recursed), and continues the displaced instruction by the site's way:
//   - emulate: fbt.Emu applied to the frame; nothing runs out of line. (When its memory access
//     would fault, or it would push onto the CPU stack the frame itself lies on, the site's
//     boosted copy or step runs it instead, and faults as the original would.)
//   - boost: RIP = the site's fbt.Relocate copy in its own XOL slot, which ends by jumping back.
//   - step: the fbt.PlanStep copy is written into this CPU's step slot followed by two INT3
//     guards, the scratch register (if any) saved and loaded, and the frame resumed at the
//     slot with TF set and IF clear — no interrupt can be taken, so the thread is neither
//     preempted nor migrated while its copy sits in a per-CPU slot. The #DB after the one
//     instruction (onDebug) restores the scratch register, fixes a call's pushed return
//     address, maps RIP back through Step.Resume, and restores IF and TF as they were; code
//     that was itself being single-stepped gets its own #DB passed on. If the #DB never comes
//     (single-step not delivered, as seen under Xen, or fbt.drop_db), execution runs into the
//     guard INT3 right after the copy (or at the branch marker): onBreakpoint finishes the step
//     as the #DB would have, and counts it.
//
// A #BP or #DB that is not a probe's goes to the handler registered before this package's.
package live

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/arch/x86/x86asm"

	"tracebed/amd64"
	"tracebed/callgraph"
	"tracebed/fbt"
	"tracebed/idt"
	"tracebed/kernel"
	"tracebed/trap"
)

// Mode is how a probe runs the instruction its INT3 displaced.
type Mode uint8

const (
	Auto    Mode = iota // emulate, else boost, else step
	Step                // single-step a copy in a per-CPU XOL slot
	Boost               // run a relocated copy that jumps back, in a per-site XOL slot
	Emulate             // apply the instruction's effect in the handler
)

var modeNames = [...]string{"auto", "step", "boost", "emulate"}

func (m Mode) String() string { return modeNames[m] }

// ParseMode reads fbt.mode=.
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if n == s {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("fbt.mode=%q: want auto, step, boost or emulate", s)
}

// Kind is what a site probes.
type Kind uint8

const (
	Entry Kind = iota + 1
	Return
	Offset
)

// how a site continues after its action (the plan chosen for its mode).
const (
	howEmulate = iota + 1
	howBoost
	howStep
)

const (
	opcodeINT3 = 0xcc
	slotSize   = 64   // one XOL slot: a copy and its guards
	stepStride = 4096 // CPU i's step slot is at i*stepStride: a page of its own (see stepExec)
	stepArea   = trap.MaxCPUs * stepStride
	xolSize    = 4 << 20 // the XOL area: step slots for every CPU, then boost slots
	maxOffsets = 1024    // offset sites that can be added after Init
	ringSize   = 256     // records per CPU
	maxStr     = 64      // bytes copyinstr keeps
	rflagsIF   = amd64.RFLAGS_IF
	rflagsTF   = amd64.RFLAGS_TF
	dr6BS      = amd64.DR6_BS
	dr6Bn      = 0xf // DR6.B0-B3: a hardware breakpoint matched
)

// Site is one place a probe can be.
type Site struct {
	Addr uintptr
	Func int32 // index in funcs
	Kind Kind
	Off  int32 // offset in the function

	enabled   uint32 // atomic; see the protocol
	disabling bool   // in the disable under way (mu held): an id given twice is taken once
	offGen    uint64 // atomic: the disable that last restored its byte (disableGen)
	planned   bool
	noBoost   bool    // the instruction cannot be relocated: no boosted copy, ever
	lastSlot  uintptr // the XOL offset of its last boosted copy, which copy holds
	copy      []byte
	how       uint8
	orig      byte
	copyin    bool // the action copies a string from the first argument (RAX)
	leaves    bool // a step of this instruction continues outside the slot (ret, indirect jmp/call)
	emu       *fbt.Emu
	boost     uintptr // exec address of the boosted copy; 0: none
	step      *fbt.Step
	stepRel   int8 // offset of the rel32 in step.Code to rebase per CPU slot; -1: none
	why       string
}

// Name is "func", "func:return@+off" or "func+off".
func (s *Site) Name() string {
	n := funcs[s.Func].name
	switch s.Kind {
	case Entry:
		return n
	case Return:
		return fmt.Sprintf("%s:return@%#x", n, s.Off)
	}
	return fmt.Sprintf("%s+%#x", n, s.Off)
}

// Record is what an action logs, per CPU, in a ring.
type Record struct {
	Seq                uint64 // the CPU's sequence number (double buffers only)
	Site               int32
	CPU                int32
	TSC                uint64
	RAX, RBX, RCX, RDI uint64
}

// CPUStats are one CPU's counters.
type CPUStats struct {
	Hits, Actions, SafeSkipped, NestedDropped, Emulated, EmuFallback, Boosted, Steps,
	MissedDB, Raced, PassedBP, PassedDB, CopyOK, CopyFault, UseAfterFree uint64
	// StaleINT3 counts a disabled site's INT3 fetched after its byte was restored for certain:
	// right after its re-execution, or after the disable's synchronisation (handler.go's raced).
	StaleINT3 uint64
}

type cpuState struct {
	CPUStats
	inAction      uint32
	stepping      uint32
	stepSite      int32
	bpSeq         uint64  // #BPs this CPU has taken
	racedAt       uintptr // the site of this CPU's last raced hit
	racedSeq      uint64  // its bpSeq
	racedRun      uint64  // its repeats in a row, each the very next #BP
	savedFlags    uint64  // IF and TF of the stepped frame
	scratchOld    uint64
	drop          uint64 // steps begun, for fbt.drop_db
	lastSafe      int32  // the site of the last hit safe mode skipped
	lastSafeDepth int32
	lastSafeStack [6]uint64
	ringHead      uint64
	ring          [ringSize]Record
	str           [maxStr]byte
	strLen        int
	_             [64]byte
}

type funcInfo struct {
	name       string
	entry, end uintptr
	toxic      string // why it is never probed; "" when it may be
	layout     *fbt.Layout
}

// Config is what the command line chooses.
type Config struct {
	Mode    Mode
	Near    bool   // fbt.xol=near: the XOL area within rel32 reach of the text
	Unsafe  bool   // fbt.safe=0: actions run even when the interrupted code had IF=0
	DropDB  uint64 // fbt.drop_db=N: every Nth step runs without TF
	Guard   bool   // false (fbt.guard=0): toxic functions may be probed (a mutation)
	Sites   int    // fbt.sites=N: offset sites are added until the table holds N sites
	Batch   bool   // false (fbt.batch=0): enable and disable one probe at a time, 3 syncs each
	Reap    bool   // false (fbt.reap=0): free a disabled probe's slot at once (a mutation)
	BufRecs int    // fbt.bufrecs=N: records per CPU in each double buffer
	BufWrap bool   // fbt.bufwrap=1: a full buffer overwrites silently (a mutation)
}

var (
	initOnce sync.Once
	initErr  error
	mu       sync.Mutex // Enable/Disable/AddOffset

	cfg      Config
	funcs    []funcInfo
	byName   map[string]int32
	sites    []Site // entry and return sites, by address; fixed after Init
	offsets  [maxOffsets]Site
	nOffsets atomic.Int32
	counts   [trap.MaxCPUs][]uint64 // hits per site id (sites, then offsets), per CPU
	cpus     [trap.MaxCPUs]cpuState
	ncpu     int

	xolExec, xolWrite uintptr
	xolNext           uintptr // next free boost slot offset
	prevBP, prevDB    trap.Handler
	nestHook          func() // called inside an action (tests of nested probes)

	nEntryReturn int
	offsetIDs    []int32
	syncs        atomic.Uint64 // all-CPU synchronisations made
	// disableGen numbers disables (mu held); disablesDone is the last whose synchronisation
	// has completed: every CPU has serialised since that disable restored its sites' bytes.
	disableGen   uint64
	disablesDone atomic.Uint64
	phases       Phases // where enabling and disabling spent their time (mu held)
	nEnabled     int    // sites enabled (mu held)
	offBuf       []int32
	pokeBuf      []kernel.Poke // disable's buffers (reserve)

	graph   *callgraph.Graph
	parents map[int]int // the call-graph walk: how each toxic function was reached

	// Banner figures.
	Toxic    = map[string]int{} // functions never probed, by reason
	NumFuncs int
)

// Init finds every site and computes the toxic functions. Goroutine code; once.
func Init(c Config) error {
	initOnce.Do(func() { initErr = doInit(c) })
	return initErr
}

// Ready reports whether Init has succeeded.
func Ready() bool { return ncpu > 0 }

func doInit(c Config) error {
	cfg = c
	tab := kernel.Table()
	lo, hi := kernel.KernelText()
	text := unsafe.Slice((*byte)(unsafe.Pointer(lo)), hi-lo)
	var cg []callgraph.Func
	byName = map[string]int32{}
	for i := 0; i < tab.NumFuncs(); i++ {
		name, entry, end, flag, ok := tab.Func(i)
		if !ok || entry < lo || end > hi || end <= entry {
			continue
		}
		fi := funcInfo{name: name, entry: entry, end: end}
		if flag&trap.FuncFlagAsm != 0 {
			fi.toxic = "assembly"
		}
		if _, dup := byName[name]; !dup {
			byName[name] = int32(len(funcs))
		}
		funcs = append(funcs, fi)
		cg = append(cg, callgraph.Func{Name: name, Entry: uint64(entry), End: uint64(end)})
	}
	NumFuncs = len(funcs)
	g := callgraph.Build(text, uint64(lo), cg, nil)
	var roots []int
	for i, f := range g.Funcs {
		if callgraph.Match(f.Name, toxicRoots) && !isInit(f.Name) && !kernelAPI(f.Name) {
			roots = append(roots, i)
		}
	}
	reached := g.Walk(roots, func(name string) bool {
		return callgraph.Match(name, callgraph.Terminal) || callgraph.Match(name, bootOnly)
	})
	graph, parents = g, reached
	for i, f := range g.Funcs { // g.Funcs is funcs in the same (address) order
		if funcs[i].entry != uintptr(f.Entry) {
			return errors.New("fbt: call graph and function table disagree")
		}
		if funcs[i].toxic != "" {
			continue
		}
		if p, ok := reached[i]; ok {
			if p < 0 {
				funcs[i].toxic = "kernel or probe path"
			} else {
				funcs[i].toxic = "called from the probe path"
			}
		} else if kernelAPI(f.Name) {
			funcs[i].toxic = "kernel or probe path"
		} else if callgraph.Match(f.Name, tracerItself) {
			funcs[i].toxic = "the tracer itself"
		}
	}
	for i := range funcs {
		f := &funcs[i]
		l, err := fbt.Decode(text[f.entry-lo : f.end-lo])
		if err != nil && f.toxic == "" {
			f.toxic = "undecodable"
		}
		f.layout = l
		if f.toxic != "" {
			Toxic[f.toxic]++
			continue
		}
		sites = append(sites, Site{Addr: f.entry, Func: int32(i), Kind: Entry})
		for _, r := range l.Rets {
			if r != 0 {
				sites = append(sites, Site{Addr: f.entry + uintptr(r), Func: int32(i), Kind: Return, Off: int32(r)})
			}
		}
	}
	nEntryReturn = len(sites)
	addOffsetSites(cfg.Sites - len(sites))
	sort.Slice(sites, func(i, j int) bool { return sites[i].Addr < sites[j].Addr })
	for i := range sites {
		if sites[i].Kind == Offset {
			offsetIDs = append(offsetIDs, int32(i))
		}
	}
	ncpu = kernel.OnlineCPUs()
	for i := 0; i < ncpu; i++ {
		counts[i] = make([]uint64, len(sites)+maxOffsets)
	}
	initBufs()
	xolExec = kernel.XOLFar
	if cfg.Near {
		xolExec = kernel.XOLNear
	}
	var ok bool
	if xolWrite, ok = kernel.MapXOL(xolExec, xolSize); !ok {
		ncpu = 0
		return errors.New("fbt: cannot map the XOL area")
	}
	xolNext = stepArea
	initSlots()
	prevBP = trap.Register(idt.Breakpoint, onBreakpoint)
	prevDB = trap.Register(idt.Debug, onDebug)
	return nil
}

// toxicRoots are where the probe path starts, by name. The kernel's own code runs with
// interrupts off or in trap context throughout, but for its exported API (kernelAPI), which
// goroutines call: those functions are never probed either, but what they call from goroutine
// code (syscall.Syscall, say) is not on the probe path unless something else reaches it. The
// handlers the suites register are called through trap's table, an indirect call the graph
// cannot see, so they are listed by name; so are this package's handlers. Everything they
// call directly — trap, amd64, apic, xcall, the runtime — is reached by the walk.
var toxicRoots = []string{
	"tracebed/kernel.*", "tracebed/kernel/sched.*", "tracebed/kernel/linux.*",
	"tracebed/fbt/live.onBreakpoint", "tracebed/fbt/live.onDebug",
	// Cross-CPU calls (xcall.Register): run in trap context, through xcall's table.
	"tracebed/fbt/live.swapBufs", "tracebed/kernel/suites.xc*Fn",
	// Trap handlers the suites register (trap.Register): called through trap's table.
	"tracebed/kernel/suites.on*BP", "tracebed/kernel/suites.on*NMI", "tracebed/kernel/suites.onDebug",
	"tracebed/kernel/suites.onBreakpoint", "tracebed/kernel/suites.onFault", "tracebed/kernel/suites.onUD",
}

// tracerItself is the tracer's own code — packages fbt, fbt/live, fbt/internal/..., and the
// x86asm decoder only they use — which is never probed either (as illumos's fbt leaves the
// dtrace and fbt modules alone): what the probe path runs of it is toxic by the walk already;
// the rest — Enable, Disable, planning, relocating — runs while probes are live, and under
// offset probes inside its own loops a step-mode disable of 36,000 probes under load took
// 75 s (8 CPUs), every iteration stepped.
var tracerItself = []string{"tracebed/fbt.*", "tracebed/fbt/*", "golang.org/x/arch/x86/x86asm.*"}

// kernelAPI reports whether name is an exported function of package kernel.
func kernelAPI(name string) bool {
	const p = "tracebed/kernel."
	return strings.HasPrefix(name, p) && len(name) > len(p) && name[len(p)] >= 'A' && name[len(p)] <= 'Z'
}

// bootOnly are not followed by the walk: the runtime's entry, run once at boot before any
// probe exists (the kernel takes its address to jump there), and deferreturn, which only the
// kernel's goroutine-side API reaches (code running with interrupts off never defers).
var bootOnly = []string{"_rt0_amd64*", "runtime.rt0_go", "runtime.deferreturn"}

// isInit reports whether name is a package initialiser (pkg.init, pkg.init.N), which runs once,
// before any probe can be enabled.
func isInit(name string) bool {
	i := strings.LastIndex(name, ".init")
	return i >= 0 && (i+5 == len(name) || name[i+5] == '.')
}

// NumSites is how many entry and return sites may be probed.
func NumSites() int { return nEntryReturn }

// addOffsetSites adds up to n offset sites to the table, at instruction boundaries spread evenly
// over every function that may be probed (neither its entry nor a RET): what takes a probe
// count past what entries and returns give (fbt.sites=). Init.
func addOffsetSites(n int) {
	if n <= 0 {
		return
	}
	total := 0
	for i := range funcs {
		if f := &funcs[i]; f.toxic == "" {
			total += len(f.layout.Insns) - 1 - len(f.layout.Rets)
		}
	}
	if total <= 0 {
		return
	}
	stride := float64(total) / float64(n)
	if stride < 1 {
		stride = 1
	}
	next, k := 0.0, 0
	for i := range funcs {
		f := &funcs[i]
		if f.toxic != "" {
			continue
		}
		rets := map[int]bool{}
		for _, r := range f.layout.Rets {
			rets[r] = true
		}
		for _, off := range f.layout.Insns[1:] {
			if rets[off] {
				continue
			}
			if float64(k) >= next && n > 0 {
				sites = append(sites, Site{Addr: f.entry + uintptr(off), Func: int32(i), Kind: Offset, Off: int32(off)})
				next += stride
				n--
			}
			k++
		}
	}
}

// OffsetSites lists the offset sites Init added (fbt.sites=).
func OffsetSites() []int32 { return offsetIDs }

// FuncToxic says why function name may not be probed ("" when it may), and whether the
// kernel has it.
func FuncToxic(name string) (string, bool) {
	i, ok := byName[name]
	if !ok {
		return "", false
	}
	return funcs[i].toxic, true
}

// ToxicPath is the chain of calls by which function name was found on the probe path ("" when
// it was not).
func ToxicPath(name string) string {
	i, ok := byName[name]
	if !ok || graph == nil {
		return ""
	}
	if _, ok := parents[int(i)]; !ok {
		return ""
	}
	return graph.Path(parents, int(i))
}

// lookup finds the site at addr.
//
// Trap context.
//
//go:nosplit
func lookup(addr uintptr) int32 {
	lo, hi := 0, len(sites)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if sites[m].Addr < addr {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(sites) && sites[lo].Addr == addr {
		return int32(lo)
	}
	n := nOffsets.Load()
	for i := int32(0); i < n; i++ {
		if offsets[i].Addr == addr {
			return int32(len(sites)) + i
		}
	}
	return -1
}

// site returns site id.
//
// Trap context allowed.
//
//go:nosplit
func site(id int32) *Site {
	if int(id) < len(sites) {
		return &sites[id]
	}
	return &offsets[int(id)-len(sites)]
}

// Find returns the id of the site of kind k in function name (for Offset, at byte off), adding
// an offset site if needed. Errors say why there is none.
func Find(name string, k Kind, off int) (int32, error) {
	fi, ok := byName[name]
	if !ok {
		return -1, fmt.Errorf("fbt: no function %q", name)
	}
	f := &funcs[fi]
	if f.toxic != "" && cfg.Guard {
		return -1, fmt.Errorf("fbt: %s is never probed: %s", name, f.toxic)
	}
	if f.layout == nil {
		return -1, fmt.Errorf("fbt: %s: undecodable", name)
	}
	switch k {
	case Entry:
		off = 0
	case Return:
		if len(f.layout.Rets) == 0 {
			return -1, fmt.Errorf("fbt: %s has no RET", name)
		}
		off = f.layout.Rets[0]
	}
	if off < 0 || f.entry+uintptr(off) >= f.end || !f.layout.Boundary(off) {
		return -1, fmt.Errorf("fbt: %s+%#x is not an instruction boundary of the function", name, off)
	}
	addr := f.entry + uintptr(off)
	if id := lookup(addr); id >= 0 {
		return id, nil
	}
	mu.Lock()
	defer mu.Unlock()
	if id := lookup(addr); id >= 0 {
		return id, nil
	}
	n := nOffsets.Load()
	if n == maxOffsets {
		return -1, fmt.Errorf("fbt: more than %d offset probes", maxOffsets)
	}
	offsets[n] = Site{Addr: addr, Func: fi, Kind: Offset, Off: int32(off)}
	if off == 0 {
		offsets[n].Kind = Entry
	}
	nOffsets.Store(n + 1) // published after the entry is complete
	return int32(len(sites)) + n, nil
}

// Returns lists the ids of every return site of function name.
func Returns(name string) []int32 {
	fi, ok := byName[name]
	if !ok {
		return nil
	}
	var ids []int32
	f := &funcs[fi]
	if f.layout == nil {
		return nil
	}
	for _, r := range f.layout.Rets {
		if id := lookup(f.entry + uintptr(r)); id >= 0 {
			ids = append(ids, id)
		} else if id, err := Find(name, Offset, r); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// plan prepares site id for mode m: the emulation, the boosted copy in an XOL slot and the
// step copy, as far as each applies; how is the first of them m allows. A disabled site has
// no slot (its disable released it): the copy is placed again. mu held.
func plan(id int32, m Mode) error {
	s := site(id)
	code := unsafe.Slice((*byte)(unsafe.Pointer(s.Addr)), 16)
	if end := funcs[s.Func].end; s.Addr+16 > end {
		code = code[:end-s.Addr]
	}
	if !s.planned {
		s.orig = *(*byte)(unsafe.Pointer(s.Addr))
		if in, err := x86asm.Decode(code, 64); err == nil {
			switch in.Op {
			case x86asm.RET, x86asm.JMP, x86asm.CALL:
				_, rel := in.Args[0].(x86asm.Rel)
				s.leaves = !rel
			}
		}
		s.emu, _ = fbt.PlanEmulate(code, uint64(s.Addr))
		s.stepRel = -1
		var errS error
		s.step, errS = planStep(s, code)
		s.planned = true
		if errB := placeBoost(id, code); errB != nil {
			s.noBoost = errB != errXOLFull
			s.why = errB.Error()
		} else if errS != nil {
			s.why = errS.Error()
		}
	} else if s.boost == 0 && !s.noBoost && atomic.LoadUint32(&s.enabled) == 0 {
		if err := placeBoost(id, code); err != nil {
			s.why = err.Error()
		}
	}
	how := uint8(0)
	switch {
	case (m == Auto || m == Emulate) && s.emu != nil && (s.boost != 0 || s.step != nil):
		how = howEmulate
	case (m == Auto || m == Boost) && s.boost != 0:
		how = howBoost
	case (m == Auto || m == Step) && s.step != nil:
		how = howStep
	}
	// An enabled site keeps its way: its handler may be reading it now.
	if how != 0 && atomic.LoadUint32(&s.enabled) == 0 {
		s.how = how
	}
	if how == 0 {
		why := s.why
		if why == "" {
			why = "not emulated"
		}
		return fmt.Errorf("fbt: %s cannot run in mode %v: %s", s.Name(), m, why)
	}
	return nil
}

// planStep plans the step of the instruction at s for every CPU's slot: the copy must be the
// same in each but for one rel32, which onBreakpoint rebases.
func planStep(s *Site, code []byte) (*fbt.Step, error) {
	first, err := fbt.PlanStep(code, uint64(s.Addr), uint64(stepExec(0)))
	if err != nil {
		return nil, err
	}
	if len(first.Code)+2 > slotSize {
		return nil, errors.New("step copy longer than a slot")
	}
	last, err := fbt.PlanStep(code, uint64(s.Addr), uint64(stepExec(trap.MaxCPUs-1)))
	if err != nil || len(last.Code) != len(first.Code) || last.Scratch != first.Scratch {
		return nil, errors.New("step copy depends on its slot")
	}
	if string(last.Code) != string(first.Code) {
		in, err := x86asm.Decode(first.Code, 64)
		if err != nil || in.PCRel != 4 || string(first.Code[:in.PCRelOff]) != string(last.Code[:in.PCRelOff]) ||
			string(first.Code[in.PCRelOff+4:]) != string(last.Code[in.PCRelOff+4:]) {
			return nil, errors.New("step copy depends on its slot")
		}
		s.stepRel = int8(in.PCRelOff)
	}
	return first, nil
}

// stepExec is CPU cpu's step slot (executable address). Each step slot has a page to itself,
// which no other CPU ever writes: with the boosted copies (written and poisoned by whichever
// CPU enables or disables; freed ones filled with INT3) in the same page, QEMU's TCG ran a
// CPU's previous step copy instead of the one it had just written — a stepped RET ran as the
// PUSH stepped before it — in every 2-CPU fbt run (4 of 4); with the pages apart, in none.
//
// Trap context allowed.
//
//go:nosplit
func stepExec(cpu int) uintptr { return xolExec + uintptr(cpu)*stepStride }

// stepWrite is the writable alias of CPU cpu's step slot. Trap context allowed.
//
//go:nosplit
func stepWrite(cpu int) uintptr { return xolWrite + uintptr(cpu)*stepStride }

// Enable enables sites ids in mode m and stops at the first site that cannot be probed in m,
// with the sites before it enabled. Batched (the default), the whole operation costs two
// all-CPU synchronisations: every plan is prepared and every site marked enabled, all CPUs
// serialise (so none can take an INT3 before it sees its site's plan), every INT3 is written
// (kernel.PokeTexts: a page's alias is mapped once for each run of sites on it), and all CPUs
// serialise again (so every CPU runs the probed text once Enable returns). With
// fbt.batch=0 each site goes through the same steps alone, plus a third synchronisation as the
// per-probe protocol of dtrace4linux did: the baseline batching is measured against.
func Enable(ids []int32, m Mode) error {
	mu.Lock()
	defer mu.Unlock()
	if !cfg.Batch {
		for _, id := range ids {
			if err := enable([]int32{id}, m, 3); err != nil {
				return err
			}
		}
		return nil
	}
	return enable(ids, m, 2)
}

// enable is Enable for one batch, with nsync synchronisations. mu held.
func enable(ids []int32, m Mode, nsync int) error {
	var err error
	t0 := time.Now()
	todo := make([]*Site, 0, len(ids))
	for _, id := range ids {
		s := site(id)
		if atomic.LoadUint32(&s.enabled) != 0 {
			continue
		}
		if err = plan(id, m); err != nil {
			break
		}
		atomic.StoreUint32(&s.enabled, 1)
		todo = append(todo, s)
	}
	t1 := time.Now()
	phases.Plan += t1.Sub(t0)
	if len(todo) == 0 {
		return err
	}
	nEnabled += len(todo)
	reserve(nEnabled)
	ok := syncAll()
	t2 := time.Now()
	p := pokeBuf[:0]
	for _, s := range todo {
		p = append(p, kernel.Poke{Addr: s.Addr, B: opcodeINT3})
	}
	if n := kernel.PokeTexts(p); n < len(todo) {
		for _, s := range todo[n:] {
			atomic.StoreUint32(&s.enabled, 0)
		}
		nEnabled -= len(todo) - n
		if err == nil {
			err = fmt.Errorf("fbt: %s: cannot patch %#x", todo[n].Name(), todo[n].Addr)
		}
	}
	t3 := time.Now()
	for i := 1; i < nsync; i++ {
		ok = syncAll() && ok
	}
	phases.Poke += t3.Sub(t2)
	phases.Sync += t2.Sub(t1) + time.Since(t3)
	if !ok && err == nil {
		err = errors.New("fbt: a CPU did not serialise")
	}
	return err
}

// Phases is where Enable and Disable have spent their time, summed over every operation:
// preparing plans and copies, storing bytes into the text, the all-CPU synchronisations, and
// (disable) the thread snapshot and the release of boosted copies' slots.
type Phases struct {
	Plan, Poke, Sync, Threads, Release time.Duration
}

// OpPhases is the Phases so far. Goroutine code.
func OpPhases() Phases {
	mu.Lock()
	defer mu.Unlock()
	return phases
}

// Sub is p minus an earlier p0.
func (p Phases) Sub(p0 Phases) Phases {
	return Phases{p.Plan - p0.Plan, p.Poke - p0.Poke, p.Sync - p0.Sync, p.Threads - p0.Threads, p.Release - p0.Release}
}

// Add is p plus q.
func (p Phases) Add(q Phases) Phases {
	return Phases{p.Plan + q.Plan, p.Poke + q.Poke, p.Sync + q.Sync, p.Threads + q.Threads, p.Release + q.Release}
}

// reserve makes the buffers of enable and disable hold n sites: offBuf, the ids of the sites a
// disable turns off, and pokeBuf, the bytes to store (kernel.PokeTexts). Enable calls it
// before it writes an INT3, so that a disable, which runs with its probes still live, allocates
// nothing: under 30,000 probes the runtime's allocator and collector are probed too, and a GC
// cycle or assist begun there crawls (one allocating disable of 30,000 took 6.4 s, the others
// 0.05 to 0.2; none has since — one run in about ten, so not proof). For the same reason:
//   - offBuf holds ids, not pointers: a pointer stored into a heap slice runs the GC's write
//     barrier, whose buffer flushes run the collector's code (a step-mode disable of 36,000
//     under load took 127 s with pointers, 7.5 s with ids, 0.3 s once this package was no
//     longer probed itself — tracerItself — which may have been most of both);
//   - the pokes are not sorted (sorting 30,000 sites under their own probes took 9 s), nor
//     built through a function value. They keep the sites' order, which is their address
//     order whenever ids came from a selection (Resolve lists sites by address), so each
//     page's alias is mapped once.
//
// mu held.
func reserve(n int) {
	if cap(offBuf) < n {
		offBuf = make([]int32, 0, n+n/4)
	}
	if cap(pokeBuf) < n {
		pokeBuf = make([]kernel.Poke, 0, n+n/4)
	}
}

// syncAll makes every CPU serialise, and counts it.
func syncAll() bool {
	syncs.Add(1)
	return kernel.SyncCPUs()
}

// Syncs is how many all-CPU synchronisations enabling and disabling have made.
func Syncs() uint64 { return syncs.Load() }

// Disable disables sites ids: original bytes back, sites marked off, then one synchronisation
// for the whole batch (three per site with fbt.batch=0: the original byte, the site's state,
// and its slot each published alone, as the per-probe protocol did). The last synchronisation
// also snapshots every thread's RIP: the boosted copies' slots no thread is inside are freed,
// the others wait for the reaper (slots.go).
func Disable(ids []int32) error {
	mu.Lock()
	defer mu.Unlock()
	if !cfg.Batch {
		for _, id := range ids {
			if err := disable([]int32{id}, 3); err != nil {
				return err
			}
		}
		return nil
	}
	return disable(ids, 1)
}

// disable is Disable for one batch. The sites are marked disabled once their original bytes
// are back (kernel.PokeTexts): a CPU that still takes an INT3 finds its site disabled and
// re-executes the (restored) instruction; one that takes it before the mark runs the site's
// plan, as it would have a moment earlier; and a handler that found a site enabled has
// returned by the time the synchronisation does (handlers run with interrupts off). mu held.
func disable(ids []int32, nsync int) error {
	off := offBuf[:0] // reserved by enable: nothing allocated under the probes still live
	defer func() { offBuf = off[:0] }()
	disableGen++
	t0 := time.Now()
	p := pokeBuf[:0]
	for _, id := range ids {
		if s := site(id); atomic.LoadUint32(&s.enabled) != 0 && !s.disabling { // an id twice: once
			s.disabling = true
			off = append(off, id)
			p = append(p, kernel.Poke{Addr: s.Addr, B: s.orig})
		}
	}
	done := kernel.PokeTexts(p) // they were patched: they are text, but say so if not
	var err error
	if done < len(off) {
		s := site(off[done])
		err = fmt.Errorf("fbt: %s: cannot restore %#x; it and %d more stay enabled", s.Name(), s.Addr, len(off)-done-1)
	}
	for k, id := range off {
		s := site(id)
		s.disabling = false
		if k < done {
			atomic.StoreUint64(&s.offGen, disableGen)
			atomic.StoreUint32(&s.enabled, 0)
		}
	}
	off = off[:done]
	nEnabled -= len(off)
	t1 := time.Now()
	phases.Poke += t1.Sub(t0)
	if len(off) == 0 {
		return err
	}
	ok := true
	for i := 1; i < nsync; i++ {
		ok = syncAll() && ok
	}
	t2 := time.Now()
	syncs.Add(1)
	n, synced := kernel.SyncThreads(ripBuf[:])
	if ok && synced {
		disablesDone.Store(disableGen)
	}
	t3 := time.Now()
	release(off, ripBuf[:n], synced && ok)
	phases.Sync += t2.Sub(t1)
	phases.Threads += t3.Sub(t2)
	phases.Release += time.Since(t3)
	if err == nil && (!ok || !synced) {
		err = errors.New("fbt: a CPU did not serialise; its slots wait for the reaper")
	}
	return err
}

// SetBatch switches between batched and per-probe enabling and disabling. Goroutine code.
func SetBatch(on bool) {
	mu.Lock()
	cfg.Batch = on
	mu.Unlock()
}

// SetCopyIn makes site id's action copy the NUL-terminated string its first argument points at.
func SetCopyIn(id int32, on bool) { site(id).copyin = on }

// SetNestHook makes every action call fn (nil: none): how the suite makes a probe fire inside
// an action. Goroutine code, with no probe that could run it enabled.
func SetNestHook(fn func()) { nestHook = fn }

// Count is site id's hits on cpu.
func Count(id int32, cpu int) uint64 { return atomic.LoadUint64(&counts[cpu][id]) }

// Total is site id's hits on every CPU.
func Total(id int32) uint64 {
	var n uint64
	for c := 0; c < ncpu; c++ {
		n += Count(id, c)
	}
	return n
}

// Stats is CPU cpu's counters.
func Stats(cpu int) CPUStats { return cpus[cpu].CPUStats }

// TotalStats sums every CPU's counters.
func TotalStats() CPUStats {
	var t CPUStats
	for c := 0; c < ncpu; c++ {
		s := &cpus[c].CPUStats
		t.Hits += s.Hits
		t.Actions += s.Actions
		t.SafeSkipped += s.SafeSkipped
		t.NestedDropped += s.NestedDropped
		t.Emulated += s.Emulated
		t.EmuFallback += s.EmuFallback
		t.Boosted += s.Boosted
		t.Steps += s.Steps
		t.MissedDB += s.MissedDB
		t.Raced += s.Raced
		t.PassedBP += s.PassedBP
		t.PassedDB += s.PassedDB
		t.CopyOK += s.CopyOK
		t.CopyFault += s.CopyFault
		t.UseAfterFree += s.UseAfterFree
		t.StaleINT3 += s.StaleINT3
	}
	return t
}

// Last returns the newest record on cpu, and the string copied with it.
func Last(cpu int) (Record, string, bool) {
	c := &cpus[cpu]
	if c.ringHead == 0 {
		return Record{}, "", false
	}
	return c.ring[(c.ringHead-1)%ringSize], string(c.str[:c.strLen]), true
}

// How says how site id runs its instruction ("emulate", "boost", "step"), once enabled.
func How(id int32) string {
	return [...]string{"", "emulate", "boost", "step"}[site(id).how]
}

// SetDropDB changes fbt.drop_db (0: off). Goroutine code, with no step in flight.
func SetDropDB(n uint64) { cfg.DropDB = n }

// SetSafe changes safe mode. Goroutine code.
func SetSafe(on bool) { cfg.Unsafe = !on }

// Back returns the record k places before the newest on cpu (0: the newest).
func Back(cpu, k int) (Record, bool) {
	c := &cpus[cpu]
	if uint64(k) >= c.ringHead || k >= ringSize {
		return Record{}, false
	}
	return c.ring[(c.ringHead-1-uint64(k))%ringSize], true
}

// LastSafeSkipped names the site of the last hit on cpu that safe mode skipped ("" for none).
func LastSafeSkipped(cpu int) string {
	c := &cpus[cpu]
	if c.SafeSkipped == 0 {
		return ""
	}
	out := fmt.Sprintf("%s depth %d called from", site(c.lastSafe).Name(), c.lastSafeDepth)
	tab := kernel.Table()
	for _, pc := range c.lastSafeStack {
		if pc == 0 {
			break
		}
		fn, _, _, _ := tab.Lookup(uintptr(pc - 1))
		out += " " + fn
	}
	return out
}

// XOL is the XOL area's executable address and its writable alias.
func XOL() (exec, write uintptr) { return xolExec, xolWrite }

// Enabled reports whether site id is enabled.
func Enabled(id int32) bool { return atomic.LoadUint32(&site(id).enabled) != 0 }

// NumEnabled is how many sites are enabled, as enabling and disabling counted them. Goroutine
// code.
func NumEnabled() int {
	mu.Lock()
	defer mu.Unlock()
	return nEnabled
}

// CheckRestored checks that no site of ids is enabled and that each planned one's first byte is
// its original again; it describes the first that is not ("" when all are).
func CheckRestored(ids []int32) string {
	for _, id := range ids {
		s := site(id)
		if Enabled(id) {
			return fmt.Sprintf("%s still enabled", s.Name())
		}
		if b := *(*byte)(unsafe.Pointer(s.Addr)); s.planned && b != s.orig {
			return fmt.Sprintf("%s at %#x holds %#x, not its original %#x", s.Name(), s.Addr, b, s.orig)
		}
	}
	return ""
}

// Plannable prepares site id for mode m and reports whether m can run it. A disabled site's
// boosted copy goes back to the free list (no thread can be inside a copy never enabled): the
// next enable places it again.
func Plannable(id int32, m Mode) bool {
	mu.Lock()
	defer mu.Unlock()
	ok := plan(id, m) == nil
	if s := site(id); s.boost != 0 && atomic.LoadUint32(&s.enabled) == 0 {
		freeSlot(s.boost - xolExec)
		s.boost = 0
	}
	return ok
}
