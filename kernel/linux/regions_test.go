package linux

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRegionSetAgainstModel(t *testing.T) {
	// Random adds and removes on a small page universe, checked against a bitmap model.
	r := rand.New(rand.NewSource(7))
	var s regionSet
	const pages = 256
	var model [pages]bool
	for step := 0; step < 5000; step++ {
		a, b := uint64(r.Intn(pages)), uint64(r.Intn(pages))
		if a > b {
			a, b = b, a
		}
		if r.Intn(2) == 0 {
			require.True(t, s.add(a*pageSize, b*pageSize))
			for i := a; i < b; i++ {
				model[i] = true
			}
		} else {
			require.True(t, s.remove(a*pageSize, b*pageSize))
			for i := a; i < b; i++ {
				model[i] = false
			}
		}
		for i := 0; i+1 < s.n; i++ {
			require.Less(t, s.r[i].end, s.r[i+1].start, "ranges sorted, disjoint, not adjacent")
		}
		q := uint64(r.Intn(pages))
		want := model[q]
		assert.Equal(t, want, s.overlaps(q*pageSize, (q+1)*pageSize), "step %d page %d", step, q)
	}
	var n uint64
	for _, v := range model {
		if v {
			n += pageSize
		}
	}
	assert.Equal(t, n, s.reserved())
}

func TestRegionSetFull(t *testing.T) {
	var s regionSet
	for i := uint64(0); i < maxRegions; i++ {
		require.True(t, s.add(i*2*pageSize, (i*2+1)*pageSize))
	}
	assert.False(t, s.add(maxRegions*2*pageSize+pageSize, maxRegions*2*pageSize+2*pageSize))
	assert.False(t, s.remove(pageSize/2, pageSize/2+1), "a split with a full table fails")
	assert.True(t, s.add(pageSize, 2*pageSize), "a merge needs no new slot")
}
