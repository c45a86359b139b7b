package kernel

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// arena gives the host tests page-aligned "physical" memory: the page-table code reaches
// tables through the identity map, and a Go byte slice's own addresses are exactly that here.
func arena(t *testing.T, pages int) (base uint64, f *frames) {
	t.Helper()
	buf := make([]byte, (pages+1)*pageSize)
	base = (uint64(uintptr(unsafe.Pointer(&buf[0]))) + pageSize - 1) &^ (pageSize - 1)
	t.Cleanup(func() { _ = buf[0] })
	f = &frames{}
	f.init(base, make([]uint64, (pages+63)/64), uint64(pages))
	f.release(base, uint64(pages)*pageSize)
	return base, f
}

func TestFramesAllocAndFree(t *testing.T) {
	base, f := arena(t, 130)
	require.Equal(t, uint64(130), f.free)
	seen := map[uint64]bool{}
	for i := 0; i < 130; i++ {
		pa, ok := f.alloc()
		require.True(t, ok)
		require.Zero(t, pa%pageSize)
		require.GreaterOrEqual(t, pa, base)
		require.Less(t, pa, base+130*pageSize)
		require.False(t, seen[pa], "frame %#x handed out twice", pa)
		seen[pa] = true
	}
	_, ok := f.alloc()
	assert.False(t, ok, "exhausted allocator must refuse")
	assert.Zero(t, f.free)
	assert.True(t, f.put(base+5*pageSize))
	assert.False(t, f.put(base+5*pageSize), "double free is refused")
	assert.False(t, f.put(base+5*pageSize+1), "unaligned address is refused")
	assert.False(t, f.put(base-pageSize), "foreign address is refused")
	pa, ok := f.alloc()
	assert.True(t, ok)
	assert.Equal(t, base+5*pageSize, pa)
}

func TestFramesReserveAndReleaseRounding(t *testing.T) {
	base, f := arena(t, 64)
	f.reserve(base+pageSize+1, 10) // touches frame 1 only
	assert.Equal(t, uint64(63), f.free)
	assert.True(t, f.inUse(base+pageSize))
	f.reserve(base+2*pageSize-1, 2) // straddles frames 1 and 2
	assert.Equal(t, uint64(62), f.free)
	f.release(base+pageSize+1, pageSize) // covers no whole frame
	assert.Equal(t, uint64(62), f.free)
	f.release(base, 3*pageSize)
	assert.Equal(t, uint64(64), f.free)
	f.reserve(base+1000*pageSize, pageSize) // outside: ignored
	assert.Equal(t, uint64(64), f.free)
}

func TestPageTableMapsAnyCanonicalAddress(t *testing.T) {
	_, f := arena(t, 512)
	root, ok := f.alloc()
	require.True(t, ok)
	clear(table(root)[:])
	pt := pageTable{root: root, alloc: f}
	data, _ := f.alloc()
	vas := []uint64{
		0x1000,
		0x0000_00c0_0000_0000,
		0x0000_7fff_ffff_f000, // top of the lower half
		0xffff_8000_0000_0000, // bottom of the upper half
		0xffff_ffff_ffff_f000,
		0x0000_0012_3456_7000 + 8<<30, // far from the rest: 4 GiB+ away
	}
	for _, va := range vas {
		require.Equal(t, ptOK, pt.mapPage(va, data, pteWrite|pteNX), "%#x", va)
		pa, fl, ok := pt.lookup(va + 0x123)
		require.True(t, ok, "%#x", va)
		assert.Equal(t, data+0x123, pa)
		assert.NotZero(t, fl&pteNX)
	}
	assert.Equal(t, ptMapped, pt.mapPage(vas[0], data, pteWrite))
	assert.Equal(t, ptNonCanonical, pt.mapPage(0x0000_8000_0000_0000, data, pteWrite))
	assert.Equal(t, ptNonCanonical, pt.mapPage(0xffff_7fff_ffff_f000, data, pteWrite))
	assert.Equal(t, ptUnaligned, pt.mapPage(0x2001, data, pteWrite))
	_, _, ok = pt.lookup(0x2000)
	assert.False(t, ok)
	pa, ok := pt.unmapPage(vas[1])
	assert.True(t, ok)
	assert.Equal(t, data, pa)
	_, _, ok = pt.lookup(vas[1])
	assert.False(t, ok)
	_, ok = pt.unmapPage(vas[1])
	assert.False(t, ok)
}

// hugePageTable builds, in an 8-page arena, tables with one 2 MiB page at PML4[0]/PDPT[0]/PD[i]
// mapping pa, as the boot tables map the low 4 GiB.
func hugePageTable(t *testing.T, i int, pa uint64) pageTable {
	_, f := arena(t, 8)
	root, _ := f.alloc()
	pdpt, _ := f.alloc()
	pd, _ := f.alloc()
	for _, tb := range []uint64{root, pdpt, pd} {
		clear(table(tb)[:])
	}
	table(root)[0] = pdpt | ptePresent | pteWrite
	table(pdpt)[0] = pd | ptePresent | pteWrite
	table(pd)[i] = pa | ptePresent | pteWrite | pteHuge
	return pageTable{root: root, alloc: f}
}

func TestPageTableHugePagesAndExhaustion(t *testing.T) {
	// A 2 MiB page at PML4[0]/PDPT[0]/PD[1], as the boot tables are.
	pt := hugePageTable(t, 1, 0x4000_0000)
	pa, _, ok := pt.lookup(0x20_0000 + 0x1234)
	require.True(t, ok)
	assert.Equal(t, uint64(0x4000_1234), pa)
	assert.Equal(t, ptHugeInTheWay, pt.mapPage(0x20_1000, 0x5000, pteWrite))
	// Each new region far apart needs three new tables; the arena runs out.
	var r int
	for i := uint64(1); i < 10 && r == ptOK; i++ {
		r = pt.mapPage(i<<39, 0x5000, pteWrite)
	}
	assert.Equal(t, ptNoMemory, r)
}

// splitHuge keeps every translation of the 2 MiB page and lets one 4 KiB page go.
func TestSplitHugePage(t *testing.T) {
	pt := hugePageTable(t, 0, 0)
	require.Equal(t, ptOK, pt.splitHuge(0x1234))
	for _, va := range []uint64{0, 0x1234, 0x1f_f000, 0x1f_ffff} {
		pa, fl, ok := pt.lookup(va)
		require.True(t, ok, "%#x", va)
		assert.Equal(t, va, pa, "%#x: the same frame", va)
		assert.Equal(t, uint64(ptePresent|pteWrite), fl&(ptePresent|pteWrite|pteHuge), "%#x", va)
	}
	_, ok := pt.unmapPage(0)
	require.True(t, ok)
	_, _, ok = pt.lookup(0x10)
	assert.False(t, ok, "page 0 unmapped")
	_, _, ok = pt.lookup(0x1000)
	assert.True(t, ok, "page 1 still mapped")
	assert.Equal(t, ptOK, pt.splitHuge(0x4000_0000), "nothing mapped there: nothing to split")
}

// protect splits a 2 MiB page only where a boundary falls inside it, and leaves every
// translation in place with the permissions asked for.
func TestProtectSplitsAtBoundaries(t *testing.T) {
	pt := hugePageTable(t, 0, 0) // [0, 2 MiB) as one page
	// Read-only and executable for [0x3000, 0x5000), NX elsewhere in the page.
	require.Equal(t, ptOK, pt.protect(0, 0x3000, true, false))
	require.Equal(t, ptOK, pt.protect(0x3000, 0x5000, false, true))
	require.Equal(t, ptOK, pt.protect(0x5000, 0x20_0000, true, false))
	for _, c := range []struct {
		va          uint64
		write, exec bool
	}{{0, true, false}, {0x2fff, true, false}, {0x3000, false, true}, {0x4fff, false, true},
		{0x5000, true, false}, {0x1f_ffff, true, false}} {
		pa, fl, ok := pt.lookup(c.va)
		require.True(t, ok, "%#x", c.va)
		assert.Equal(t, c.va, pa, "%#x: the same frame", c.va)
		assert.Equal(t, c.write, fl&pteWrite != 0, "%#x writable", c.va)
		assert.Equal(t, c.exec, fl&pteNX == 0, "%#x executable", c.va)
		assert.Zero(t, fl&pteHuge, "%#x: split", c.va)
	}
	// A range covering a whole 2 MiB page keeps it whole.
	pt = hugePageTable(t, 1, 0x4000_0000)
	require.Equal(t, ptOK, pt.protect(0x20_0000, 0x40_0000, false, false))
	_, fl, ok := pt.lookup(0x20_1234)
	require.True(t, ok)
	assert.NotZero(t, fl&pteHuge, "not split")
	assert.Equal(t, uint64(pteNX), fl&(pteWrite|pteNX))
	// Unmapped ranges are skipped.
	assert.Equal(t, ptOK, pt.protect(0x8000_0000, 0x8040_0000, true, true))
}
