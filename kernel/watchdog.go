package kernel

import (
	"strings"
	"sync/atomic"

	"tracebed/amd64"
	"tracebed/kernel/ktest"
	"tracebed/kernel/sched"
	"tracebed/trap"
	"tracebed/xcall"
)

// The stuck-CPU watchdog. A CPU's progress is the count of its timer interrupts (trap.Count),
// and every online CPU takes one at least every watchdogTick, idle or not (armTimer caps its
// timer), plus the cross-CPU calls it has run or seen complete (xcall.Progress): a CPU
// calling every other one with interrupts off, which at 32 vCPUs on 2 host cores can take over
// a second, is slow while its calls complete, and stuck only when they stop. At each timer interrupt, before it takes klock (a stuck CPU may hold it), a CPU
// looks at the others: one whose count has not moved for watchdog_ms of guest time (default
// 1000) is stuck. The first CPU to see that claims the report: it sends every other CPU an
// NMI, and each answers from its NMI handler by recording its registers, trap depth and
// frame-pointer stack (watchdogSnapshot); the reporter waits a bounded time for the answers,
// seizes the console (a CPU stuck holding its lock cannot block the report), prints every
// CPU's state with the frames named from the kernel's own pclntab, then
// "tracebed: cpu N stuck for M ms", and ends the run with the hang exit, which the host
// reports as HANG. watchdog=warn reports and goes on; watchdog=0 turns it off.
//
// The watchdog starts with the runtime: before, the boot CPU waits for the APs with interrupts
// off for up to 2 s each, which is no hang. A CPU stuck with interrupts off is seen only from a CPU that still takes timer interrupts:
// when every CPU is stuck (or there is only one), the host's timeout remains the last resort.

const (
	watchdogTick     = 100_000_000 // ns: the longest a CPU's timer is armed for
	watchdogAnswerNs = 200_000_000 // how long the reporter waits for the NMI answers
	minWatchdogMs    = 2 * watchdogTick / 1e6
)

var watchdog struct {
	limitNs   int64       // 0: off
	running   atomic.Bool // from the runtime's start: boot waits with interrupts off
	warn      bool
	reporting atomic.Int32 // 1 + id of the CPU printing a report
	seen      [MaxCPUs]atomic.Uint64
	since     [MaxCPUs]atomic.Int64
	snap      [MaxCPUs]cpuSnapshot
}

// cpuSnapshot is what a CPU recorded in its NMI handler for a report.
type cpuSnapshot struct {
	want, ready      atomic.Bool
	rip, rsp, rflags uint64
	depth            int32
	tid              int32 // the thread it ran, 0 for none
	n                int
	pcs              [maxFrames]uint64
}

// initWatchdog reads watchdog= and watchdog_ms=; a bad value is fatal, in one line. Boot.
func initWatchdog() {
	watchdog.limitNs = 1000 * 1e6
	if ms, ok := cmdlineInt("watchdog_ms"); ok {
		if ms < minWatchdogMs {
			var k kbuf
			k.s("tracebed: fatal: watchdog_ms must be at least ").dec(minWatchdogMs).
				s(" (twice the 100 ms tick every idle CPU takes)").out()
			debugExit(ktest.ExitFatal)
		}
		watchdog.limitNs = ms * 1e6
	}
	if v, ok := cmdlineValue("watchdog"); ok {
		switch v {
		case "0":
			watchdog.limitNs = 0
		case "1":
		case "warn":
			watchdog.warn = true
		default:
			var k kbuf
			k.s("tracebed: fatal: watchdog must be 0, 1 or warn, not ").s(v).out()
			debugExit(ktest.ExitFatal)
		}
	}
}

// watchdogPoll is watchdogCheck for a CPU spinning for a kernel lock with interrupts off: it
// takes no timer interrupt then, and when the stuck CPU holds the lock, every other CPU ends
// up spinning for it, so the lock waits must look too (every watchdogTick/10). Kernel context
// (a lock wait, interrupts off).
func watchdogPoll(c *CPU) {
	if watchdog.limitNs == 0 || !watchdog.running.Load() {
		return
	}
	if now := nanotime(); now-c.watchdogPolled >= watchdogTick/10 {
		c.watchdogPolled = now
		watchdogCheck(c, nil)
	}
}

// watchdogPollHere is watchdogPoll for this CPU: xcall's waits call it (xcall.SetWaitHook), so
// that CPUs all waiting on a call to a stuck one still look. Trap context.
func watchdogPollHere() { watchdogPoll(thisCPU()) }

// watchdogCheck looks for a stuck CPU; called by every CPU from its timer interrupt, klock not
// held, and from lock waits (f nil). Trap context (an interrupt gate), or a lock wait.
func watchdogCheck(c *CPU, f *Frame) {
	if watchdog.limitNs == 0 || !watchdog.running.Load() {
		return
	}
	now := nanotime()
	for i := 0; i < ncpuOnline; i++ {
		if i == c.id {
			continue
		}
		n := trap.Count(i, vecTimer) + xcall.Progress(i) + cpus[i].consoleProgress.Load()
		if n != watchdog.seen[i].Load() || watchdog.since[i].Load() == 0 {
			watchdog.seen[i].Store(n)
			watchdog.since[i].Store(now)
			continue
		}
		if d := now - watchdog.since[i].Load(); d > watchdog.limitNs {
			watchdogReport(c, f, i, d)
		}
	}
}

// watchdogReport prints every CPU's state and ends the run (or, with watchdog=warn, goes on).
// f is the reporter's own interrupted state, nil when it reports from a lock wait.
// Trap context.
func watchdogReport(c *CPU, f *Frame, stuck int, d int64) {
	if !watchdog.reporting.CompareAndSwap(0, int32(c.id+1)) {
		return // another CPU is reporting
	}
	for i := 0; i < ncpuOnline; i++ {
		if i != c.id {
			s := &watchdog.snap[i]
			s.ready.Store(false)
			s.want.Store(true)
			lapic.NMI(cpus[i].apicID)
		}
	}
	t0 := nanotime()
	for i := 0; i < ncpuOnline; i++ {
		for i != c.id && !watchdog.snap[i].ready.Load() && nanotime()-t0 < watchdogAnswerNs {
			drainCalls()
		}
	}
	locked := false
	if watchdog.warn {
		var ok bool
		if locked, ok = borrowConsole(c); !ok {
			watchdog.reporting.Store(0) // a fatal report has the console: it ends the run
			return
		}
	} else if !seizeConsole(c) {
		leaveExitToReporter() // a fatal report has the console: it ends the run
		debugExit(ktest.ExitHang)
	}
	var k kbuf
	k.s("tracebed: watchdog: cpu ").dec(int64(stuck)).s(" made no progress for ").dec(d / 1e6).
		s(" ms; every CPU's state:").out()
	tab := kernelTable()
	for i := 0; i < ncpuOnline; i++ {
		s := &watchdog.snap[i]
		if i == c.id && f == nil {
			k.s("tracebed: watchdog cpu ").dec(int64(i)).s(": reporting from a wait (a lock's or a cross-CPU call's)").out()
			pc, bp := amd64.CallerFrame()
			s.n = c.walkStack(pc, bp, &s.pcs)
			// The watchdog's own frames say nothing: start at what was waiting.
			skip := 0
			for skip < s.n-1 {
				fn, _, _, found := tab.Lookup(frameLookup(skip, s.pcs[skip]))
				if !found || !strings.HasPrefix(fn, "tracebed/kernel.watchdog") {
					break
				}
				skip++
			}
			s.n = copy(s.pcs[:], s.pcs[skip:s.n])
			s.printStack(&k, tab, "tracebed: watchdog cpu ", i)
			continue
		}
		if i == c.id {
			s.record(c, f)
		} else if !s.ready.Load() {
			k.s("tracebed: watchdog cpu ").dec(int64(i)).s(": no answer to the NMI").out()
			continue
		}
		s.print(&k, tab, "tracebed: watchdog cpu ", i, i == c.id)
	}
	k.s("tracebed: cpu ").dec(int64(stuck)).s(" stuck for ").dec(d / 1e6).s(" ms").out()
	if !watchdog.warn {
		debugExit(ktest.ExitHang)
	}
	returnConsole(c, locked)
	now := nanotime()
	for i := range watchdog.since { // the report took time on every CPU it stopped
		watchdog.since[i].Store(now)
	}
	watchdog.reporting.Store(0)
}

// print writes s as two lines: "<prefix>N: RIP ... RSP ... IF b trap depth d [thread t]" and
// "<prefix>N stack: f1 f2 ...", frames named from tab. With the console held. Trap context.
func (s *cpuSnapshot) print(k *kbuf, tab trap.Table, prefix string, cpu int, reporting bool) {
	k.s(prefix).dec(int64(cpu)).s(": RIP ").hex(s.rip).s(" RSP ").hex(s.rsp).s(" IF ")
	if s.rflags&amd64.RFLAGS_IF != 0 {
		k.c('1')
	} else {
		k.c('0')
	}
	k.s(" trap depth ").dec(int64(s.depth))
	if s.tid != 0 {
		k.s(" thread ").dec(int64(s.tid))
	}
	if reporting {
		k.s(" (reporting)")
	}
	k.out()
	s.printStack(k, tab, prefix, cpu)
}

// printStack writes "<prefix>N stack: f1 f2 ...". With the console held. Trap context.
func (s *cpuSnapshot) printStack(k *kbuf, tab trap.Table, prefix string, cpu int) {
	k.s(prefix).dec(int64(cpu)).s(" stack:")
	for j, pc := range s.pcs[:s.n] {
		if fn, _, _, found := tab.Lookup(frameLookup(j, pc)); found {
			k.c(' ').s(fn)
		} else {
			k.c(' ').hex(pc)
		}
	}
	k.out()
}

// watchdogSnapshot answers a report's NMI: it records this CPU's interrupted state, and says
// whether the NMI was the report's.
//
// Trap context (the NMI handler).
func watchdogSnapshot(c *CPU, f *Frame) bool {
	s := &watchdog.snap[c.id]
	if s.want.Load() {
		s.want.Store(false)
		s.record(c, f)
		s.ready.Store(true)
		return true
	}
	return false
}

// nmiBacktrace answers an NMI nobody in the kernel sent (QEMU's inject-nmi, a host's
// diagnosis of a guest whose CPUs all spin with interrupts off, where no watchdog runs):
// this CPU prints its state as the watchdog would, "tracebed: nmi cpu N: ...". Every CPU
// gets such an NMI at once; they take turns at the console (borrowConsole), each waiting at
// most nmiPrintNs, and the console lock's holder, stuck too perhaps, only briefly.
//
// Trap context (the NMI handler).
func (c *CPU) nmiBacktrace(f *Frame) {
	for t0 := nanotime(); ; amd64.Pause() {
		if locked, ok := borrowConsoleSpins(c, 1<<12); ok {
			var s cpuSnapshot
			s.record(c, f)
			var k kbuf
			s.print(&k, kernelTable(), "tracebed: nmi cpu ", c.id, false)
			returnConsole(c, locked)
			return
		}
		if nanotime()-t0 > nmiPrintNs {
			return
		}
	}
}

// nmiPrintNs bounds how long a CPU waits for its turn to print for an external NMI.
const nmiPrintNs = 2e9

// record fills s from the state in f. Trap context allowed.
func (s *cpuSnapshot) record(c *CPU, f *Frame) {
	s.rip, s.rsp, s.rflags = f.RIP, f.RSP, f.RFLAGS
	s.depth = trap.Depth(c.id)
	s.tid = 0
	if c.current >= 0 {
		s.tid = sched.T(c.current).TID
	}
	s.n = c.walkTrapped(f, &s.pcs)
}
