package trap

import (
	"debug/elf"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The test binary is a Go linux/amd64 ELF like the kernel: symbolize its own PCs from its
// .gopclntab and compare with the runtime's answers.
func ownTable(t *testing.T) Table {
	exe, err := os.Executable()
	require.NoError(t, err)
	f, err := elf.Open(exe)
	require.NoError(t, err)
	defer f.Close()
	data, err := f.Section(".gopclntab").Data()
	require.NoError(t, err)
	tab, ok := NewTable(data, uintptr(f.Section(".text").Addr))
	require.True(t, ok)
	return tab
}

func TestSymbolizeMatchesTheRuntime(t *testing.T) {
	tab := ownTable(t)
	pcs := make([]uintptr, 32)
	pcs = pcs[:runtime.Callers(0, pcs)]
	for _, fn := range []any{NewTable, Dispatch, TestSymbolizeMatchesTheRuntime, assert.Equal, os.Open} {
		pcs = append(pcs, reflect.ValueOf(fn).Pointer())
	}
	checked := 0
	for _, pc := range pcs {
		f := runtime.FuncForPC(pc)
		require.NotNil(t, f)
		wantFile, wantLine := f.FileLine(pc)
		name, file, line, ok := tab.Lookup(pc)
		require.True(t, ok, "%#x", pc)
		// FuncForPC names the inlined function for an inlined PC; the table names the
		// outermost one, as a frame-pointer walk sees it, so compare where they agree.
		if f.Name() == name {
			assert.Equal(t, wantFile, file, "%s at %#x", name, pc)
			assert.Equal(t, wantLine, line, "%s at %#x", name, pc)
			checked++
		}
	}
	assert.GreaterOrEqual(t, checked, 6)
	// A sweep over the text: wherever the runtime and the table name the same function
	// (everywhere but inlined code), they agree on the line; and they mostly do.
	same, lines := 0, 0
	for pc := tab.text; pc < tab.text+0x80000; pc += 97 {
		f := runtime.FuncForPC(pc)
		name, _, line, ok := tab.Lookup(pc)
		if f == nil || !ok || f.Name() != name {
			continue
		}
		same++
		if _, wl := f.FileLine(pc); wl == line {
			lines++
		}
	}
	assert.Greater(t, same, 3000)
	assert.Equal(t, same, lines)
}

func TestSymbolizeRejectsBadInput(t *testing.T) {
	_, ok := NewTable(nil, 0)
	assert.False(t, ok)
	_, ok = NewTable(make([]byte, 200), 0)
	assert.False(t, ok, "no magic")
	tab := ownTable(t)
	_, _, _, ok = tab.Lookup(tab.text - 1)
	assert.False(t, ok, "below the text")
	_, _, _, ok = tab.Lookup(^uintptr(0))
	assert.False(t, ok, "past the last function")
}

// Func enumerates what the runtime knows: every function's entry and name agree with
// FuncForPC, ends chain to the next entry, and assembly functions carry FuncFlagAsm.
func TestFuncsMatchTheRuntime(t *testing.T) {
	tab := ownTable(t)
	require.Greater(t, tab.NumFuncs(), 1000)
	var prevEnd uintptr
	asm := map[string]bool{}
	for i := 0; i < tab.NumFuncs(); i++ {
		name, entry, end, flag, ok := tab.Func(i)
		require.True(t, ok, i)
		require.LessOrEqual(t, entry, end, name)
		if i > 0 {
			require.Equal(t, prevEnd, entry, name)
		}
		prevEnd = end
		if f := runtime.FuncForPC(entry); f != nil && f.Entry() == entry && f.Name() != "" && !strings.Contains(f.Name(), "[...]") {
			require.Equal(t, f.Name(), name)
		}
		asm[name] = flag&FuncFlagAsm != 0
	}
	assert.True(t, asm["runtime.memmove"], "runtime.memmove is assembly")
	assert.True(t, asm["tracebed/trap.safeLoad64"], "safeLoad64 is assembly")
	assert.False(t, asm["tracebed/trap.Dispatch"], "Dispatch is Go")
	_, _, _, _, ok := tab.Func(tab.NumFuncs())
	assert.False(t, ok)
}

// SPDelta finds a return address from RSP where RBP is not yet, or never, the function's own.
func TestSPDelta(t *testing.T) {
	tab := ownTable(t)
	for i := 0; i < tab.NumFuncs(); i += 7 {
		name, entry, end, _, ok := tab.Func(i)
		require.True(t, ok)
		if entry == end {
			continue
		}
		d, ok := tab.SPDelta(entry)
		if !strings.Contains(name, ".") {
			continue // C, linked in for cgo: no pcsp table
		}
		require.True(t, ok, name)
		require.Zero(t, d, "%s at its entry", name)
	}
	_, entry, end, _, ok := tab.Func(funcIndex(t, tab, "tracebed/trap.safeLoad64"))
	require.True(t, ok)
	for pc := entry; pc < end; pc++ {
		d, ok := tab.SPDelta(pc)
		require.True(t, ok)
		require.Zero(t, d, "a leaf without a frame, at %#x", pc)
	}
	// In the middle of a function that calls (the PC before each return address), its frame
	// is allocated: the return address is above it.
	pcs := make([]uintptr, 8)
	pcs = pcs[:runtime.Callers(1, pcs)]
	for _, pc := range pcs[:len(pcs)-1] { // the last is goexit's
		d, ok := tab.SPDelta(pc - 1)
		require.True(t, ok)
		assert.Positive(t, d, "%s", runtime.FuncForPC(pc-1).Name())
		assert.Zero(t, d%8)
	}
	_, ok = tab.SPDelta(tab.text - 1)
	assert.False(t, ok)
}

func funcIndex(t *testing.T, tab Table, want string) int {
	for i := 0; i < tab.NumFuncs(); i++ {
		if name, _, _, _, _ := tab.Func(i); name == want {
			return i
		}
	}
	t.Fatalf("no %s", want)
	return -1
}
