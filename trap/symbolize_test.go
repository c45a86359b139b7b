package trap

import (
	"debug/elf"
	"os"
	"reflect"
	"runtime"
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
