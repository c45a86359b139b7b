// Command violator is the call-graph check's fixture: root reaches an allocation two calls
// down, clean reaches only a panic (terminal: it ends the run), guarded reaches an allocation
// only through an allowed function, viaValue only through a closure passed as a value. Built
// by callgraph's tests; never run.
package main

import "os"

//go:noinline
func root(n int) int { return a(n) + 1 }

//go:noinline
func a(n int) int { return b(n) * 2 }

//go:noinline
func b(n int) int {
	s := make([]byte, n) // runtime.makeslice: the violation
	return len(s) + cap(s)
}

//go:noinline
func clean(n int) int {
	if n > 1000 {
		panic("too many arguments")
	}
	return n * 3
}

//go:noinline
func guarded(n int) int { return bootOnly(n) }

//go:noinline
func bootOnly(n int) int { return len(make([]int, n)) }

//go:noinline
func each(n int, fn func(int) int) int { return fn(n) }

// viaValue reaches an allocation only through a closure it passes to each.
//
//go:noinline
func viaValue(n int) int { return each(n, func(k int) int { return len(make([]byte, k)) }) }

func main() {
	println(root(len(os.Args)), clean(len(os.Args)), guarded(len(os.Args)), viaValue(len(os.Args)))
}
