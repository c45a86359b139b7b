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

// registeredHandlers finds every trap.Register(vector, handler) in the module's Go source
// (tests excluded) and returns the handlers' pclntab names ("tracebed/pkg.func").
func registeredHandlers(t *testing.T, root string) []string {
	var out []string
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !isSource(path, d) {
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

// isSource reports a Go file of the module's code: not a test, not a fixture.
func isSource(path string, d fs.DirEntry) bool {
	return !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") &&
		!strings.Contains(path, "testdata")
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}

// funcDocs returns the doc comment of every function declared in the module's Go source, by
// its pclntab name ("tracebed/pkg.Func", "tracebed/pkg.(*T).M", "tracebed/pkg.T.M").
func funcDocs(t *testing.T, root string) map[string]string {
	docs := map[string]string{}
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
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok {
				continue
			}
			name := fd.Name.Name
			if fd.Recv != nil {
				switch r := fd.Recv.List[0].Type.(type) {
				case *ast.StarExpr:
					name = "(*" + r.X.(*ast.Ident).Name + ")." + name
				case *ast.Ident:
					name = r.Name + "." + name
				}
			}
			docs["tracebed/"+filepath.ToSlash(rel)+"."+name] = fd.Doc.Text()
		}
		return nil
	})
	require.NoError(t, err)
	return docs
}

// bootOnly lists functions reachable from a trap entry that run only on paths where the rules
// do not apply, each with why. Empty today: nothing is exempted silently.
var bootOnly = []string{}

// The trap-context rules, checked on the built kernel: nothing reachable from kernelEntry
// (every vector, the system-call path and the NMI path enter there) or from a handler
// registered with trap.Register (called by trap.Dispatch through its table: the one indirect
// call added by hand; function values are followed by callgraph) may allocate, hit a write
// barrier or block. A violation names its path.
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
	handlers := registeredHandlers(t, "..")
	require.NotEmpty(t, handlers)
	for _, h := range handlers {
		is := g.Lookup(h)
		require.NotEmpty(t, is, "registered handler %s not in the kernel's pclntab", h)
		for _, d := range dispatch {
			for _, i := range is {
				g.AddEdge(d, i)
			}
		}
	}
	reached := g.Walk(roots, func(n string) bool {
		return callgraph.Match(n, callgraph.Terminal) || callgraph.Match(n, callgraph.Forbidden)
	})
	t.Logf("%d functions reachable from kernelEntry and %d registered handlers; %d undecodable bytes in the text",
		len(reached), len(handlers), g.Undecodable)
	for _, v := range g.Check(roots, bootOnly) {
		t.Errorf("trap context reaches %s: %s", v.Func, v.Path)
	}

	// Labels: every function of this module that a trap entry reaches says in its doc comment
	// which context it runs in — "Trap context" (any vector, nested, IF as the gate left it;
	// "Trap context allowed" for helpers safe there) or "Kernel context" (the system-call path
	// and what klock serialises: IF=0, not nested in itself; ", klock held" where it is).
	docs := funcDocs(t, "..")
	var unlabelled []string
	for f := range reached {
		name := g.Funcs[f].Name
		doc, ok := docs[name]
		if !strings.HasPrefix(name, "tracebed/") || !ok { // runtime, or assembly-only (no Go declaration)
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
