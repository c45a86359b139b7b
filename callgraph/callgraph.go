// Package callgraph builds the direct-call graph of machine code and walks it from roots: what
// the kernel's trap-context rules need checked (nothing reachable from a trap entry may
// allocate, hit a write barrier or block), and what function-boundary tracing needs to compute
// the functions it must never probe (everything its own #BP/#DB path reaches).
//
// The graph has one node per function (from a symbol table: the host reads the kernel's
// pclntab with debug/gosym, the kernel can use trap.Table) and an edge for every direct CALL
// rel32, and for every JMP rel32 into another function (a tail call), found by decoding each
// function linearly with x86asm. A function value counts as a call too: an instruction that
// takes the address of a function (a RIP-relative LEA or load of its entry, or of a funcval,
// the word a closure or method value points at, whose first word is an entry) makes an edge,
// since whatever receives the value may call it. Calls through tables filled elsewhere are not
// seen: the caller adds them (Graph.AddEdge), from a documented list.
package callgraph

import (
	"encoding/binary"
	"sort"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Func is one function of the text: its name and [Entry, End).
type Func struct {
	Name       string
	Entry, End uint64
}

// Graph is the direct-call graph.
type Graph struct {
	Funcs  []Func // sorted by Entry
	calls  [][]int
	byName map[string][]int // ABI wrappers share their function's name
	// Undecodable counts bytes no instruction decoded from (stepped over one at a time).
	Undecodable int
}

// Build decodes every function in funcs from text (loaded at base) and records its direct
// calls, tail calls and function values. read returns the 8-byte word at an address of the
// binary's data (nil: funcvals are not followed). Functions outside text are kept as nodes
// without edges.
func Build(text []byte, base uint64, funcs []Func, read func(addr uint64) (uint64, bool)) *Graph {
	g := &Graph{Funcs: append([]Func(nil), funcs...), byName: map[string][]int{}}
	sort.Slice(g.Funcs, func(i, j int) bool { return g.Funcs[i].Entry < g.Funcs[j].Entry })
	g.calls = make([][]int, len(g.Funcs))
	for i, f := range g.Funcs {
		g.byName[f.Name] = append(g.byName[f.Name], i)
		if f.Entry < base || f.End > base+uint64(len(text)) || f.End <= f.Entry {
			continue
		}
		code := text[f.Entry-base : f.End-base]
		seen := map[int]bool{}
		for off := 0; off < len(code); {
			in, err := x86asm.Decode(code[off:], 64)
			if err != nil || in.Len == 0 {
				g.Undecodable++
				off++
				continue
			}
			if in.PCRel == 4 {
				rel := int32(binary.LittleEndian.Uint32(code[off+in.PCRelOff:]))
				target := f.Entry + uint64(off+in.Len) + uint64(int64(rel))
				j := -1
				switch {
				case in.Op == x86asm.CALL:
					j = g.find(target)
				case in.Op == x86asm.JMP: // a tail call enters at the entry
					if k := g.find(target); k >= 0 && g.Funcs[k].Entry == target {
						j = k
					}
				default: // a function value: its entry, or a funcval holding it
					if k := g.find(target); k >= 0 && g.Funcs[k].Entry == target {
						j = k
					} else if read != nil {
						if v, ok := read(target); ok {
							if k := g.find(v); k >= 0 && g.Funcs[k].Entry == v {
								j = k
							}
						}
					}
				}
				if j >= 0 && j != i && !seen[j] {
					seen[j] = true
					g.calls[i] = append(g.calls[i], j)
				}
			}
			off += in.Len
		}
	}
	return g
}

// find returns the index of the function containing pc, or -1.
func (g *Graph) find(pc uint64) int {
	i := sort.Search(len(g.Funcs), func(i int) bool { return g.Funcs[i].End > pc })
	if i < len(g.Funcs) && g.Funcs[i].Entry <= pc {
		return i
	}
	return -1
}

// Lookup returns the indices of the functions with this name (a function and its ABI
// wrapper share one).
func (g *Graph) Lookup(name string) []int { return g.byName[name] }

// AddEdge records a call the decoder cannot see (through a function table, say).
func (g *Graph) AddEdge(from, to int) { g.calls[from] = append(g.calls[from], to) }

// Callees returns the functions f calls directly.
func (g *Graph) Callees(f int) []int { return g.calls[f] }

// Walk visits every function reachable from roots, breadth first, without entering the
// functions for which stop returns true (they are visited, their callees are not). It returns
// for each visited function the one it was first reached from (-1 for a root).
func (g *Graph) Walk(roots []int, stop func(name string) bool) map[int]int {
	parent := map[int]int{}
	queue := []int{}
	for _, r := range roots {
		if _, ok := parent[r]; !ok {
			parent[r] = -1
			queue = append(queue, r)
		}
	}
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		if stop != nil && stop(g.Funcs[f].Name) {
			continue
		}
		for _, c := range g.calls[f] {
			if _, ok := parent[c]; !ok {
				parent[c] = f
				queue = append(queue, c)
			}
		}
	}
	return parent
}

// Path names the chain of calls from a root to f, as Walk found it: "root → a → f".
func (g *Graph) Path(parent map[int]int, f int) string {
	var names []string
	for ; f >= 0; f = parent[f] {
		names = append(names, g.Funcs[f].Name)
	}
	for i, j := 0, len(names)-1; i < j; i, j = i+1, j-1 {
		names[i], names[j] = names[j], names[i]
	}
	return strings.Join(names, " → ")
}
