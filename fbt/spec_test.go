package fbt

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseSpec(t *testing.T) {
	s, err := ParseSpec(`tracebed/kernel/suites.fbt*:entry,runtime.mallocgc:return,runtime.memmove+0x20,all,pkg.F\[...\]`)
	require.NoError(t, err)
	require.Len(t, s, 5)
	assert.True(t, s[0].Entry && !s[0].Return)
	assert.True(t, s[0].Match("tracebed/kernel/suites.fbtAdd"))
	assert.False(t, s[0].Match("tracebed/kernel/suites.xfbt"))
	assert.True(t, s[1].Return && !s[1].Entry && s[1].Match("runtime.mallocgc"))
	lit, ok := s[1].Literal()
	assert.True(t, ok)
	assert.Equal(t, "runtime.mallocgc", lit)
	assert.Equal(t, 0x20, s[2].Offset)
	assert.Equal(t, "runtime.memmove", s[2].Func)
	assert.True(t, s[3].Match("anything/at.all") && s[3].Entry && s[3].Return)
	assert.True(t, s[4].Match("pkg.F[...]"))
	g, err := ParseSpec("runtime.[a-c]*,x.?y,x.[!a]")
	require.NoError(t, err)
	assert.True(t, g[0].Match("runtime.chansend"))
	assert.False(t, g[0].Match("runtime.mallocgc"))
	assert.True(t, g[1].Match("x.zy"))
	assert.True(t, g[2].Match("x.b") && !g[2].Match("x.a"))
	_, ok = g[0].Literal()
	assert.False(t, ok)
	p, err := ParseSpec("runtime.(*mheap).alloc+0x10,f+010")
	require.NoError(t, err)
	assert.Equal(t, "runtime.(*mheap).alloc", p[0].Func)
	assert.Equal(t, 10, p[1].Offset, "decimal, not octal")
	stars, err := ParseSpec(strings.Repeat("*", 1000))
	require.NoError(t, err)
	assert.True(t, stars[0].Match(strings.Repeat("x", 4096)))
}

func TestParseSpecRejects(t *testing.T) {
	for _, bad := range []string{"", ",", "a,,b", "runtime.[abc", "x]", "f:exit", "f+zz", "f+-1",
		"+4", "f+010x", "f+0b101", "f+1_6", "f+0x_20", "f+0x20:entry", "f:entry:return", ":entry", `f\`, "f+0x100000000", "x.[]", "x.[^]"} {
		_, err := ParseSpec(bad)
		assert.Error(t, err, "%q", bad)
	}
}

func TestDecodeLayout(t *testing.T) {
	// push rbp; mov rbp,rsp; ret; nop; ret; int3
	l, err := Decode([]byte{0x55, 0x48, 0x89, 0xe5, 0xc3, 0x90, 0xc3, 0xcc})
	require.NoError(t, err)
	assert.Equal(t, []int{0, 1, 4, 5, 6, 7}, l.Insns)
	assert.Equal(t, []int{4, 6}, l.Rets)
	assert.True(t, l.Boundary(4))
	assert.False(t, l.Boundary(2))
	_, err = Decode([]byte{0x55, 0x06}) // push es: invalid in 64-bit mode
	assert.Error(t, err)
}
