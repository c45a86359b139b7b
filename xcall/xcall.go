// Package xcall makes synchronous cross-CPU calls: Call runs a function on another CPU and
// returns once it has run there, Broadcast does the same on a set of CPUs. Both are safe with
// interrupts disabled, from trap handlers (#BP, #DB; not NMI) at any nesting depth, and from
// inside a called function, because every CPU that waits keeps running the calls sent to it
// ("draining").
//
// The problem. CPU A calls B with interrupts off and spins until B has run the call; B, also
// with interrupts off, is spinning on a call to A. Neither takes the other's IPI, so neither
// call ever runs: the deadlock tracers hit when they cross-call from probe context. Linux
// forbids the situation (smp_call_function with IRQs off warns); illumos' x_call.c lets the
// waiter serve the calls pending for it, and so does this package.
//
// Protocol. Mailboxes form a matrix: mail[from][to] belongs to one sender and one target, so
// posting needs no lock that a waiter could hold. A mailbox holds at most one call at a time,
// and three counters, each written by one side only:
//
//   - seq, written by the sender: calls posted. To post, the sender waits until the previous
//     call has finished (done == seq), stores the function and argument, then increments seq.
//   - taken, written by the target: calls started. The target claims call n by moving taken
//     from n-1 to n with a compare-and-swap (a drain interrupted by another drain on the same
//     CPU cannot run a call twice), reads the function and argument, and runs it.
//   - done, written by the target: calls finished, stored after the function returned.
//
// Go's atomics are sequentially consistent, so the function and argument stored before seq are
// seen by a target that sees seq, and whatever the function wrote is seen by a sender that sees
// done. After posting, the sender sends the target an IPI and waits until done reaches its
// call's number. While it waits, and while it waits for a mailbox to come free, it drains: it
// runs every call posted to its own CPU (Drain). The kernel drains too in its IPI handler and
// wherever it spins on a lock with interrupts off. A call therefore runs exactly once however
// many IPIs arrive (a duplicate finds nothing to claim), and a lost IPI costs time, not the
// call: a waiter that has waited ResendAfter re-sends the IPI and counts it.
//
// A call may itself call other CPUs (nested): it posts from its CPU's own row of the matrix,
// and its drains skip the call being run (already taken). Posting is not reentrant on one CPU:
// a trap taken between the free check and the increment of seq whose handler posts to the
// same target would overwrite the function and argument. So calls are refused in NMI context
// (the kernel returns ErrNMI), and this package must never be probed or single-stepped (FBT
// counts it as toxic); #BP and #DB handlers may call, from code outside it.
//
// Naive mode (SetNaive) turns draining off in the waits: kept only to show the deadlock.
//
// Functions are registered (Register) and named by a number in the mailboxes, so that posting
// stores no pointer (no write barrier in trap context).
package xcall

import (
	"sync/atomic"

	"tracebed/amd64"
	"tracebed/apic"
	"tracebed/trap"
)

// MaxCPUs bounds the CPUs calls go between.
const MaxCPUs = trap.MaxCPUs

// Func names a registered function.
type Func uint32

// maxFuncs bounds the registered functions.
const maxFuncs = 64

// Error is why a call was refused.
type Error uint8

const (
	OK       Error = iota
	ErrNMI         // called in NMI context
	ErrNoCPU       // the target is not an online CPU
	ErrFunc        // the function was never registered
)

// Error says why. Trap context allowed.
func (e Error) Error() string {
	switch e {
	case ErrNMI:
		return "xcall: cross-CPU calls are refused in NMI context"
	case ErrNoCPU:
		return "xcall: the target is not an online CPU"
	case ErrFunc:
		return "xcall: the function is not registered"
	}
	return "xcall: ok"
}

type mailbox struct {
	seq   atomic.Uint64
	taken atomic.Uint64
	done  atomic.Uint64
	fn    atomic.Uint32
	arg   atomic.Uintptr
	_     [24]byte // one cache line per mailbox
}

// Stats are one CPU's counters.
type Stats struct {
	Posted  uint64 // calls this CPU posted
	Ran     uint64 // calls this CPU ran for others
	IPIs    uint64 // IPIs this CPU sent
	Dropped uint64 // IPIs not sent, by injection (SetDrop)
	Resends uint64 // IPIs sent again after ResendAfter without completion
	Drains  uint64 // drains that ran at least one call
}

type cpuState struct {
	Stats
	progress atomic.Uint64 // calls this CPU ran or saw finish (Progress)
	apicID   uint32
	online   bool
	_        [64]byte
}

var (
	mail     [MaxCPUs][MaxCPUs]mailbox
	cpus     [MaxCPUs]cpuState
	funcs    [maxFuncs]func(arg uintptr)
	nfuncs   atomic.Uint32
	lapic    *apic.LAPIC // nil: no IPIs (the host tests' CPUs poll)
	vector   uint8
	tscPerUs uint64        = 1000
	naive    atomic.Bool   // SetNaive
	dropN    atomic.Uint64 // SetDrop
)

// ResendAfter is how long a waiter waits (µs) before it sends its IPI again: about 1 ms.
const ResendAfter = 1000

// Init gives the package the local APIC to send IPIs with, their vector, and the TSC rate for
// its timeouts. Boot, before any other CPU runs.
func Init(l *apic.LAPIC, vec uint8, tscHz uint64) {
	lapic, vector = l, vec
	if tscHz >= 1e6 {
		tscPerUs = tscHz / 1e6
	}
}

// SetOnline marks cpu, with its APIC ID, as one that takes calls. Kernel context (the CPU
// itself, as it comes online).
func SetOnline(cpu int, apicID uint32) {
	cpus[cpu].apicID = apicID
	cpus[cpu].online = true
}

// SetNaive turns draining in the waits off (true) or on. Boot, or a test before any call.
func SetNaive(on bool) { naive.Store(on) }

// SetDrop makes each sender drop every nth IPI it would send for a new call (0: none; resends
// are never dropped), to show that a lost IPI costs a resend, not the call. Boot, or a test before any call.
func SetDrop(n uint64) { dropN.Store(n) }

// Register adds fn to the functions calls can name. Goroutine code (it stores a pointer), once
// per function, before any call names it.
func Register(fn func(arg uintptr)) Func {
	n := nfuncs.Load()
	if n == maxFuncs {
		panic("xcall: too many registered functions")
	}
	funcs[n] = fn
	nfuncs.Store(n + 1)
	return Func(n)
}

// Call runs f(arg) on CPU to and returns once it has run there; on self it runs f at once.
// self is the calling CPU, which must not change during the call: interrupts are off, or the
// caller is a trap handler.
//
// Trap context allowed (not NMI: the caller refuses it).
func Call(self, to int, f Func, arg uintptr) Error {
	if e := check(to, f); e != OK {
		return e
	}
	if to == self {
		funcs[f](arg)
		return OK
	}
	n := post(self, to, f, arg)
	wait(self, to, n)
	return OK
}

// Broadcast runs f(arg) on every online CPU in set (bit i: CPU i) and returns once each has
// run it. If self is in set, f runs here too, after the calls are posted and before the wait,
// so that the other CPUs run theirs meanwhile.
//
// Trap context allowed (not NMI: the caller refuses it).
func Broadcast(self int, set uint64, f Func, arg uintptr) Error {
	if e := check(self, f); e != OK {
		return e
	}
	var seqs [MaxCPUs]uint64
	for to := 0; to < MaxCPUs; to++ {
		if set&(1<<to) != 0 && to != self && cpus[to].online {
			seqs[to] = post(self, to, f, arg)
		}
	}
	if set&(1<<self) != 0 {
		funcs[f](arg)
	}
	for to := 0; to < MaxCPUs; to++ {
		if seqs[to] != 0 {
			wait(self, to, seqs[to])
		}
	}
	return OK
}

// check validates a call's target and function.
//
// Trap context allowed.
func check(to int, f Func) Error {
	if to < 0 || to >= MaxCPUs || !cpus[to].online {
		return ErrNoCPU
	}
	if uint32(f) >= nfuncs.Load() {
		return ErrFunc
	}
	return OK
}

// post waits until mailbox [self][to] is free, fills it and sends the IPI; it returns the
// call's number.
//
// Trap context allowed.
func post(self, to int, f Func, arg uintptr) uint64 {
	m := &mail[self][to]
	if n := m.seq.Load(); m.done.Load() != n {
		// A nested call to a target whose earlier call from this CPU is still running (or
		// whose IPI was lost): wait for it as its caller does, resending.
		wait(self, to, n)
	}
	m.fn.Store(uint32(f))
	m.arg.Store(arg)
	n := m.seq.Add(1)
	cpus[self].Posted++
	send(self, to, false)
	return n
}

// wait spins until call n of mailbox [self][to] is done, draining meanwhile (unless naive) and
// re-sending the IPI every ResendAfter.
//
// Trap context allowed.
func wait(self, to int, n uint64) {
	m := &mail[self][to]
	t0 := amd64.RDTSC()
	for m.done.Load() < n {
		if !naive.Load() {
			Drain(self)
		}
		if waitHook != nil {
			waitHook()
		}
		amd64.Pause()
		if amd64.RDTSC()-t0 > ResendAfter*tscPerUs {
			cpus[self].Resends++
			send(self, to, true)
			t0 = amd64.RDTSC()
		}
	}
	cpus[self].progress.Add(1)
}

// waitHook, when set, runs in every iteration of a wait (the kernel's watchdog looks for
// stuck CPUs from there: a CPU waiting with interrupts off takes no timer interrupt).
var waitHook func()

// SetWaitHook sets the function waits call while they spin; it must be callable in trap
// context and cheap when it has nothing to do. Set once, before any CPU calls.
func SetWaitHook(f func()) { waitHook = f }

// send sends the call IPI to CPU to, unless injection drops it (a first send, never a
// resend: with every IPI dropped nothing would ever arrive).
//
// Trap context allowed.
func send(self, to int, resend bool) {
	s := &cpus[self]
	if d := dropN.Load(); d != 0 && !resend && s.Posted%d == 0 { // the call's number, counted by post
		s.Dropped++
		return
	}
	s.IPIs++
	if lapic != nil {
		lapic.IPI(cpus[to].apicID, vector)
	}
}

// Drain runs every call posted to CPU self and not yet taken, and reports whether it ran any.
// The kernel calls it from the call IPI's handler and from every wait with interrupts off.
//
// Trap context allowed (not NMI).
func Drain(self int) bool {
	ran := false
	for from := 0; from < MaxCPUs; from++ {
		m := &mail[from][self]
		n := m.seq.Load()
		if n == m.taken.Load() || !m.taken.CompareAndSwap(n-1, n) {
			continue
		}
		f, arg := m.fn.Load(), m.arg.Load()
		funcs[f](arg)
		m.done.Store(n)
		cpus[self].Ran++
		cpus[self].progress.Add(1)
		ran = true
	}
	if ran {
		cpus[self].Drains++
	}
	return ran
}

// Progress counts the calls cpu has run for others and the waits for its own calls that have
// ended: a CPU waiting with interrupts off while calls complete is slow, not stuck (the
// kernel's watchdog adds this to the timer interrupts it counts). Readable from any CPU.
//
// Trap context allowed.
func Progress(cpu int) uint64 { return cpus[cpu].progress.Load() }

// CPUStats returns cpu's counters (read while calls may run: each is one word).
func CPUStats(cpu int) Stats { return cpus[cpu].Stats }

// Pair returns how many calls from posted to to, and how many to has finished.
func Pair(from, to int) (posted, done uint64) {
	return mail[from][to].seq.Load(), mail[from][to].done.Load()
}
