package callgraph

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// violator builds the fixture with the stock toolchain.
func violator(t *testing.T) *Graph {
	out := filepath.Join(t.TempDir(), "violator")
	b, err := exec.Command("go", "build", "-o", out, "./testdata/violator").CombinedOutput()
	require.NoError(t, err, "%s", b)
	g, err := FromELF(out)
	require.NoError(t, err)
	return g
}

func roots(t *testing.T, g *Graph, names ...string) []int {
	var out []int
	for _, n := range names {
		is := g.Lookup(n)
		require.NotEmpty(t, is, "no function %s", n)
		out = append(out, is...)
	}
	return out
}

// The check can fail: the fixture's root reaches runtime.makeslice two calls down, and the
// violation names the whole path.
func TestCheckFindsTheFixturesAllocation(t *testing.T) {
	g := violator(t)
	v := g.Check(roots(t, g, "main.root"), nil)
	require.NotEmpty(t, v)
	var paths []string
	for _, x := range v {
		paths = append(paths, x.Path)
	}
	assert.Contains(t, strings.Join(paths, "\n"), "main.root → main.a → main.b → runtime.makeslice")
}

// A closure handed on as a function value is followed: whatever receives it may call it.
func TestCheckFollowsFunctionValues(t *testing.T) {
	g := violator(t)
	v := g.Check(roots(t, g, "main.viaValue"), nil)
	require.NotEmpty(t, v, "the closure's allocation is reached")
	assert.Contains(t, v[0].Path, "main.viaValue")
}

// A panic ends the run: it is terminal, not a violation. An allowed function is not entered.
func TestTerminalAndAllowedAreNotFollowed(t *testing.T) {
	g := violator(t)
	assert.Empty(t, g.Check(roots(t, g, "main.clean"), nil))
	assert.NotEmpty(t, g.Check(roots(t, g, "main.guarded"), nil))
	assert.Empty(t, g.Check(roots(t, g, "main.guarded"), []string{"main.bootOnly"}))
}

func TestBuildOnHandMadeCode(t *testing.T) {
	// f at 0x1000: call g; jmp h (a tail call); ret. g at 0x1010: ret. h at 0x1020: jmp into
	// its own body (not an edge); ret.
	text := make([]byte, 0x30)
	copy(text[0x00:], []byte{0xe8, 0x0b, 0, 0, 0}) // call 0x1010
	copy(text[0x05:], []byte{0xe9, 0x16, 0, 0, 0}) // jmp 0x1020
	text[0x0a] = 0xc3
	text[0x10] = 0xc3
	copy(text[0x20:], []byte{0xe9, 0x00, 0, 0, 0}) // jmp 0x1025 (itself)
	text[0x25] = 0xc3
	funcs := []Func{{"h", 0x1020, 0x1026}, {"f", 0x1000, 0x100b}, {"g", 0x1010, 0x1011}}
	g := Build(text, 0x1000, funcs, nil)
	f, h := g.Lookup("f")[0], g.Lookup("h")[0]
	var names []string
	for _, c := range g.Callees(f) {
		names = append(names, g.Funcs[c].Name)
	}
	assert.Equal(t, []string{"g", "h"}, names)
	assert.Empty(t, g.Callees(h))
	p := g.Walk([]int{f}, nil)
	assert.Len(t, p, 3)
	assert.Equal(t, "f → h", g.Path(p, h))
	assert.True(t, Match("runtime.gcWriteBarrier2", Forbidden))
	assert.False(t, Match("runtime.gcWriteBarrierX", Terminal))
}
