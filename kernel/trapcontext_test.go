package kernel

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"tracebed/callgraph"
	"tracebed/qemu"
)

// registeredHandlers finds every trap.Register(vector, handler) in the module's Go source
// (tests excluded) and returns the handlers' pclntab names ("tracebed/pkg.func").
func registeredHandlers(t *testing.T, root string) []string {
	var out []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") ||
			strings.Contains(path, "testdata") {
			return err
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := "tracebed/" + filepath.ToSlash(rel)
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 2 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "Register" || !isIdent(sel.X, "trap") {
				return true
			}
			switch h := call.Args[1].(type) {
			case *ast.Ident:
				out = append(out, pkg+"."+h.Name)
			default:
				t.Errorf("%s: trap.Register with a handler that is not a named function; name it so the check can find it",
					fset.Position(call.Pos()))
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	return out
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
// registered with trap.Register (called by trap.Dispatch through its table: the one indirect
// call added by hand) may allocate, hit a write barrier or block. A violation names its path.
// callgraph's own tests show the check catching a deliberate violation in a fixture.
func TestTrapContextRules(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the kernel")
	}
	elf := filepath.Join(t.TempDir(), "kernel.elf")
	require.NoError(t, qemu.BuildKernel("..", elf))
	g, err := callgraph.FromELF(elf)
	require.NoError(t, err)
	entry, ok := g.Lookup("tracebed/kernel.kernelEntry")
	require.True(t, ok)
	dispatch, ok := g.Lookup("tracebed/trap.Dispatch")
	require.True(t, ok)
	roots := []int{entry}
	handlers := registeredHandlers(t, "..")
	require.NotEmpty(t, handlers)
	for _, h := range handlers {
		i, ok := g.Lookup(h)
		require.True(t, ok, "registered handler %s not in the kernel's pclntab", h)
		g.AddEdge(dispatch, i)
	}
	reached := g.Walk(roots, func(n string) bool {
		return callgraph.Match(n, callgraph.Terminal) || callgraph.Match(n, callgraph.Forbidden)
	})
	t.Logf("%d functions reachable from kernelEntry and %d registered handlers; %d undecodable bytes in the text",
		len(reached), len(handlers), g.Undecodable)
	for _, v := range g.Check(roots, bootOnly) {
		t.Errorf("trap context reaches %s: %s", v.Func, v.Path)
	}
}
