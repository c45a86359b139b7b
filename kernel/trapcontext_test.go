package kernel

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"tracebed/callgraph"
	"tracebed/qemu"
)

// moduleSource parses every Go file of the module's code under root once, with comments, and
// returns the trap.Register handlers, the xcall.Register functions and the functions' doc
// comments, all by pclntab name ("tracebed/pkg.Func", "tracebed/pkg.(*T).M",
// "tracebed/pkg.T.M"). A handler or function that is not a named function is an error: the
// check could not find it.
func moduleSource(t *testing.T, root string) (handlers, calls []string, docs map[string]string) {
	docs = map[string]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !isSource(path, d) {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := "tracebed/" + filepath.ToSlash(rel)
		for _, decl := range f.Decls {
			if fd, ok := decl.(*ast.FuncDecl); ok {
				docs[pkg+"."+funcName(fd)] = fd.Doc.Text()
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) == 0 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Register" && sel.Sel.Name != "SetWaitHook" {
				return true
			}
			var to *[]string
			switch {
			case isIdent(sel.X, "trap") && sel.Sel.Name == "Register" && len(call.Args) == 2:
				to = &handlers
			case isIdent(sel.X, "xcall") && len(call.Args) == 1:
				to = &calls // a call function, or the hook its waits run
			default:
				return true
			}
			if h, ok := call.Args[len(call.Args)-1].(*ast.Ident); ok && h.Obj != nil && h.Obj.Kind == ast.Var {
				// A variable: putting back the handler an earlier Register returned, which was
				// registered by name there.
			} else if ok {
				*to = append(*to, pkg+"."+h.Name)
			} else {
				t.Errorf("%s: %s.Register with a function that is not a named function; name it so the check can find it",
					fset.Position(call.Pos()), sel.X)
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	return handlers, calls, docs
}

// funcName is a declaration's name as pclntab spells it within its package.
func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil {
		return fd.Name.Name
	}
	switch r := fd.Recv.List[0].Type.(type) {
	case *ast.StarExpr:
		return "(*" + r.X.(*ast.Ident).Name + ")." + fd.Name.Name
	case *ast.Ident:
		return r.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}

// isSource reports a Go file of the module's code: not a test, not a fixture.
func isSource(path string, d fs.DirEntry) bool {
	return !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") &&
		!strings.Contains(path, "testdata")
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// bootOnly lists functions reachable from a trap entry that run only on paths where the rules
// do not apply, each with why. Empty today: nothing is exempted silently.
var bootOnly = []string{}

// The trap-context rules, checked on the built kernel: nothing reachable from kernelEntry
// (every vector, the system-call path and the NMI path enter there) or from a handler
// registered with trap.Register (called by trap.Dispatch through its table) may allocate, hit a
// write barrier or block. A violation names its path. Two kinds of indirect call are added by
// hand: trap.Dispatch's handler table, and package linux's calls of linux.Host; function values
// are followed by callgraph.
// callgraph's own tests show the check catching a deliberate violation in a fixture.
func TestTrapContextRules(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the kernel")
	}
	// Built with the module's functions not inlined: every one is a node of its own, so the
	// labels below cover them all (an inlined function has no pclntab entry).
	elf := filepath.Join(t.TempDir(), "kernel.elf")
	require.NoError(t, qemu.BuildKernelWith("..", elf, "-gcflags=tracebed/...=-l"))
	g, err := callgraph.FromELF(elf)
	require.NoError(t, err)
	roots := g.Lookup("tracebed/kernel.kernelEntry")
	require.NotEmpty(t, roots)
	dispatch := g.Lookup("tracebed/trap.Dispatch")
	require.NotEmpty(t, dispatch)
	handlers, calls, docs := moduleSource(t, "..")
	require.NotEmpty(t, handlers)
	addEdges(t, g, dispatch, handlers)
	// xcall runs its registered functions through a table too, from Drain (and, for a call to
	// its own CPU, from Call and Broadcast); and its waits, reached from Call and Broadcast, run
	// the hook set by SetWaitHook.
	var runners []int
	for _, r := range []string{"Drain", "Call", "Broadcast"} {
		is := g.Lookup("tracebed/xcall." + r)
		require.NotEmpty(t, is, "xcall.%s not in the kernel's pclntab", r)
		runners = append(runners, is...)
	}
	addEdges(t, g, runners, calls)
	// The second indirect call: package linux calls the kernel through its Host interface,
	// which the kernel implements with abiHost; every method is taken as called by Syscall.
	syscall := g.Lookup("tracebed/kernel/linux.Syscall")
	require.NotEmpty(t, syscall)
	var hostMethods []string
	for name := range docs {
		if strings.HasPrefix(name, "tracebed/kernel.(*abiHost).") {
			hostMethods = append(hostMethods, name)
		}
	}
	require.NotEmpty(t, hostMethods, "no linux.Host methods found on kernel.abiHost")
	addEdges(t, g, syscall, hostMethods)
	reached := g.Reach(roots, bootOnly)
	t.Logf("%d functions reachable from kernelEntry, %d registered handlers and %d cross-CPU call functions; %d undecodable bytes in the text",
		len(reached), len(handlers), len(calls), g.Undecodable)
	for _, v := range g.Violations(reached) {
		t.Errorf("trap context reaches %s: %s", v.Func, v.Path)
	}

	// Labels: every function of this module that a trap entry reaches says in its doc comment
	// which context it runs in — "Trap context" (any vector, nested, IF as the gate left it;
	// "Trap context allowed" for helpers safe there) or "Kernel context" (the system-call path
	// and what klock serialises: IF=0, not nested in itself; ", klock held" where it is).
	var unlabelled []string
	for f := range reached {
		name := g.Funcs[f].Name
		doc, ok := docs[name]
		if !strings.HasPrefix(name, "tracebed/") || !ok { // runtime, or assembly-only (no Go declaration)
			continue
		}
		if _, ok := goroutineBranchOnly[name]; ok {
			continue
		}
		if !strings.Contains(doc, "Trap context") && !strings.Contains(doc, "Kernel context") {
			unlabelled = append(unlabelled, name)
		}
	}
	sort.Strings(unlabelled)
	for _, n := range unlabelled {
		t.Errorf("%s is reached from a trap entry but its doc comment names no context", n)
	}
}

// addEdges records calls from every function in from to every function named in to, each of
// which must be in the kernel.
func addEdges(t *testing.T, g *callgraph.Graph, from []int, to []string) {
	t.Helper()
	for _, name := range to {
		is := g.Lookup(name)
		require.NotEmpty(t, is, "%s not in the kernel's pclntab", name)
		for _, f := range from {
			for _, i := range is {
				g.AddEdge(f, i)
			}
		}
	}
}

// goroutineBranchOnly are the functions the static call graph reaches from a trap entry only
// through a branch taken in goroutine code, which is why their doc comments say "Goroutine
// code": the reason is checked by hand, here.
var goroutineBranchOnly = map[string]string{
	"tracebed/kernel.kcall3": "CrossCall and CrossBroadcast make a kernel call only when fromGoroutine() (IF=1, trap depth 0); in trap context they call xcall directly",
}
