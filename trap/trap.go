// Package trap is what runs between an IDT entry stub and IRETQ: the Frame every entry saves,
// dispatch by vector to registered handlers, per-CPU nesting depth and counters, and the
// on-fault recovery behind the fault-safe loads (safe.go).
//
// # How a trap gets here
//
// The CPU delivers vector v through the gate idt.Table[v] onto that gate's IST stack. The
// stub for v pushes a zero error code when the CPU pushes none, then v, and the kernel's
// common entry (kernel/entry_amd64.s) moves those seven words off the IST stack before
// anything can nest:
//
//   - if the interrupted RSP lies in this CPU's own stack region (the kernel stack or an IST
//     stack), the trap interrupted kernel code, and the frame goes just below that RSP;
//   - otherwise a thread (goroutine code) was interrupted, and the frame goes at the top of
//     the CPU's kernel stack, where the scheduler finds the thread's registers.
//
// So every nested trap builds its frame below the live one it interrupted, and an IST stack
// only ever holds a frame for the few instructions that move it. A #PF inside a #BP handler,
// a #BP inside a #BP handler, and an NMI taken after a nested IRET re-opened NMIs all get their
// own frames; none overwrites a live one. The double fault alone stays on its IST stack: it
// usually means the kernel stack is gone.
//
// The entry then saves the general registers, FS base, CR2 and the FXSAVE image into a Frame,
// points FS at the CPU's kernel TLS (a g whose stack bounds are the CPU's stack region), and
// calls the kernel, which counts the entry here (Enter), handles its own vectors (system
// calls, the timer, IPIs), and passes the rest to Dispatch.
//
// # Trap context
//
// Code called from Dispatch (every Handler) runs in trap context:
//   - on the CPU's kernel stack, with whatever IF the gate left (interrupt gates clear it,
//     trap gates keep the interrupted value, so an interrupt may nest inside a handler);
//   - it may be nested inside another trap handler, or inside the kernel holding klock;
//   - it must not allocate, take a lock the interrupted code may hold, block, panic, or store
//     pointers into the heap or globals (no write barriers: the g is not the runtime's);
//   - it keeps its state in fixed arrays of plain values indexed by CPU;
//   - it reads memory that might not be mapped only through SafeLoad*/CopyInString.
//
// Functions that run there say "Trap context" in their doc comment.
package trap

import (
	"sync/atomic"

	"tracebed/idt"
)

// MaxCPUs bounds the CPUs whose traps are counted (the kernel drives at most this many).
const MaxCPUs = 32

// NumVectors counts the IDT vectors plus the SYSCALL pseudo-vector.
const NumVectors = 257

// Handler handles one trap. It returns false to let the trap fall through to the fatal
// report. Trap context.
type Handler func(f *Frame) bool

// cpuState is one CPU's trap bookkeeping, written only by that CPU.
type cpuState struct {
	depth     int32 // traps being handled now, the running one included
	maxDepth  int32
	nested    uint64 // entries taken while another trap was being handled
	recovered uint64 // faults recovered for SafeLoad*/CopyInString
	counts    [NumVectors]uint64
	nestedBy  [NumVectors]uint64 // nested entries, by vector
	_         [64]byte
}

var (
	percpu   [MaxCPUs]cpuState
	handlers [256]Handler
)

// Register installs h for vector v and returns the handler it replaces (nil for none). Call
// it from goroutine code, never from trap context (it stores a pointer).
func Register(v int, h Handler) Handler {
	prev := handlers[v]
	handlers[v] = h
	return prev
}

// Enter records that cpu entered the kernel through vector v and returns the new depth:
// 1 when the interrupted code was not itself handling a trap. Trap context.
//
//go:nosplit
func Enter(cpu int, v uint64) int32 {
	s := &percpu[cpu]
	s.depth++
	d := s.depth
	if d > s.maxDepth {
		s.maxDepth = d
	}
	atomic.AddUint64(&s.counts[v], 1)
	if d > 1 {
		atomic.AddUint64(&s.nested, 1)
		atomic.AddUint64(&s.nestedBy[v], 1)
	}
	return d
}

// Exit records that cpu returns from its innermost trap. Trap context.
//
//go:nosplit
func Exit(cpu int) { percpu[cpu].depth-- }

// Dispatch gives an exception or interrupt the kernel does not handle itself to the fault-safe
// load recovery and then to the handler registered for its vector. false: nobody handled it,
// and the caller reports it as fatal. Trap context.
func Dispatch(cpu int, f *Frame) bool {
	if recoverSafeLoad(cpu, f) {
		return true
	}
	if f.Vector < 256 {
		if h := handlers[f.Vector]; h != nil {
			return h(f)
		}
	}
	return false
}

// Stats are one CPU's trap counters.
type Stats struct {
	Depth     int32 // traps being handled right now
	MaxDepth  int32 // deepest nesting seen
	Nested    uint64
	Recovered uint64
}

// CPUStats returns cpu's counters (each is a word its CPU writes; read without locks).
func CPUStats(cpu int) Stats {
	s := &percpu[cpu]
	return Stats{Depth: atomic.LoadInt32(&s.depth), MaxDepth: atomic.LoadInt32(&s.maxDepth),
		Nested: atomic.LoadUint64(&s.nested), Recovered: atomic.LoadUint64(&s.recovered)}
}

// ResetMaxDepth restarts the CPU's deepest-nesting record from its current depth, so that a
// test sees the depth its own traps reach rather than an earlier record. Called on that CPU.
func ResetMaxDepth(cpu int) {
	s := &percpu[cpu]
	atomic.StoreInt32(&s.maxDepth, atomic.LoadInt32(&s.depth))
}

// Count is how often cpu entered through vector v (idt vector, or VecSyscall).
//
// Trap context allowed.
func Count(cpu int, v int) uint64 { return atomic.LoadUint64(&percpu[cpu].counts[v]) }

// NestedCount is how often vector v was entered on cpu while another trap was being handled.
//
// Trap context allowed.
func NestedCount(cpu int, v int) uint64 { return atomic.LoadUint64(&percpu[cpu].nestedBy[v]) }

// Depth is the number of traps cpu is handling now. Trap context.
//
//go:nosplit
func Depth(cpu int) int32 { return percpu[cpu].depth }

// vectorName names a fault vector for messages.
func vectorName(v uint8) string {
	if n := idt.Name(uint64(v)); n != "" {
		return n
	}
	return "vector"
}
