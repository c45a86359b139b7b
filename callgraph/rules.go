package callgraph

import (
	"debug/elf"
	"debug/gosym"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// The trap-context rules as names in the Go runtime: code reachable from a trap entry runs on
// a kernel or IST stack with interrupts as the gate left them, possibly nested, so it must not
// allocate (the allocator may start a GC, take locks, grow stacks), hit a write barrier (it
// may call into the GC), or block (park, sleep, take a runtime lock or a channel).
var Forbidden = []string{
	// allocation
	"runtime.mallocgc", "runtime.newobject", "runtime.newarray", "runtime.growslice",
	"runtime.makeslice", "runtime.makeslice64", "runtime.makemap", "runtime.makemap_small",
	"runtime.makechan", "runtime.rawstring", "runtime.rawbyteslice", "runtime.rawruneslice",
	"runtime.concatstring*", "runtime.slicebytetostring", "runtime.convT*", "runtime.mapassign*",
	// write barriers
	"runtime.gcWriteBarrier*", "runtime.wbBufFlush", "runtime.bulkBarrierPreWrite",
	// blocking
	"runtime.gopark", "runtime.goparkunlock", "runtime.lock", "runtime.lock2", "runtime.chansend*",
	"runtime.chanrecv*", "runtime.selectgo", "runtime.notesleep", "runtime.futexsleep",
	"runtime.semacquire*", "sync.(*Mutex).Lock", "sync.(*Mutex).lockSlow", "runtime.Gosched",
	"time.Sleep",
}

// Terminal functions end the run (a panic or throw in trap context is fatal: the kernel
// reports it and exits), so the walk does not follow them; the stack-growth path of a
// non-nosplit function's prologue is terminal too, since the kernel's own stacks never grow.
var Terminal = []string{
	"runtime.gopanic", "runtime.panic*", "runtime.goPanic*", "runtime.throw", "runtime.fatal*",
	"runtime.morestack*", "runtime.newstack", "runtime.abort",
}

// Match reports whether name matches one of the patterns (a trailing * matches any suffix).
func Match(name string, patterns []string) bool {
	for _, p := range patterns {
		if strings.HasSuffix(p, "*") {
			if strings.HasPrefix(name, p[:len(p)-1]) {
				return true
			}
		} else if name == p {
			return true
		}
	}
	return false
}

// Violation is a forbidden function reachable from a root, with the path that reaches it.
type Violation struct {
	Func, Path string
}

// Reach walks the graph from roots as the rules do: it does not enter Terminal or Forbidden
// functions, nor those allowed (boot code reachable only on paths that are documented safe:
// the caller lists them). It returns each reached function's parent, as Walk does.
func (g *Graph) Reach(roots []int, allowed []string) map[int]int {
	return g.Walk(roots, func(name string) bool {
		return Match(name, Terminal) || Match(name, Forbidden) || Match(name, allowed)
	})
}

// Violations returns every Forbidden function among those reached, each with one path to it,
// sorted.
func (g *Graph) Violations(reached map[int]int) []Violation {
	var out []Violation
	for f := range reached {
		if name := g.Funcs[f].Name; Match(name, Forbidden) {
			out = append(out, Violation{Func: name, Path: g.Path(reached, f)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Check is Violations of Reach.
func (g *Graph) Check(roots []int, allowed []string) []Violation {
	return g.Violations(g.Reach(roots, allowed))
}

// FromELF builds the graph of a Go ELF binary, its functions named from its pclntab.
func FromELF(path string) (*Graph, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("callgraph: %w", err)
	}
	defer f.Close()
	text, pcln := f.Section(".text"), f.Section(".gopclntab")
	if text == nil || pcln == nil {
		return nil, fmt.Errorf("callgraph: %s has no .text or .gopclntab", path)
	}
	code, err := text.Data()
	if err != nil {
		return nil, fmt.Errorf("callgraph: %s: %w", path, err)
	}
	tab, err := pcln.Data()
	if err != nil {
		return nil, fmt.Errorf("callgraph: %s: %w", path, err)
	}
	st, err := gosym.NewTable(nil, gosym.NewLineTable(tab, text.Addr))
	if err != nil {
		return nil, fmt.Errorf("callgraph: %s: pclntab: %w", path, err)
	}
	funcs := make([]Func, 0, len(st.Funcs))
	for _, fn := range st.Funcs {
		funcs = append(funcs, Func{Name: fn.Name, Entry: fn.Entry, End: fn.End})
	}
	// The binary's allocated sections, to read the funcvals function values point at.
	var secs []*elf.Section
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && s.Type == elf.SHT_PROGBITS {
			secs = append(secs, s)
		}
	}
	read := func(addr uint64) (uint64, bool) {
		for _, s := range secs {
			if addr >= s.Addr && addr+8 <= s.Addr+s.Size {
				var b [8]byte
				if _, err := s.ReadAt(b[:], int64(addr-s.Addr)); err != nil {
					return 0, false
				}
				return binary.LittleEndian.Uint64(b[:]), true
			}
		}
		return 0, false
	}
	return Build(code, text.Addr, funcs, read), nil
}
