package idt

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
)

func TestGateEncoding(t *testing.T) {
	var g Gate
	g.Set(0xffff_8000_dead_beef, 0x08, 3, TypeInterrupt, 0)
	// SDM Vol. 3A, Figure 6-8: offset 15:0 | selector | IST | type | DPL | P | offset 31:16.
	assert.Equal(t, uint64(0xbeef), g.Lo&0xffff)
	assert.Equal(t, uint64(0x08), g.Lo>>16&0xffff)
	assert.Equal(t, uint64(3), g.Lo>>32&7)
	assert.Equal(t, uint64(0x8e), g.Lo>>40&0xff, "present, DPL 0, 64-bit interrupt gate")
	assert.Equal(t, uint64(0xdead), g.Lo>>48)
	assert.Equal(t, uint64(0xffff_8000), g.Hi)
	assert.Equal(t, uint64(0xffff_8000_dead_beef), g.Handler())
	assert.Equal(t, uint8(3), g.IST())
	assert.True(t, g.Present())

	g.Set(0x1234, 0x08, 0, TypeTrap, 3)
	assert.Equal(t, uint64(0xef), g.Lo>>40&0xff, "present, DPL 3, trap gate")
	assert.Equal(t, uint8(TypeTrap), g.Type())
	assert.Equal(t, uint8(0), g.IST())

	g.Set(0, 0, 9, TypeInterrupt, 0)
	assert.Equal(t, uint8(1), g.IST(), "IST is 3 bits")
}

func TestTableLayout(t *testing.T) {
	var tb Table
	assert.Equal(t, uintptr(4096), unsafe.Sizeof(tb))
	assert.Equal(t, 4095, Limit)
}

func TestVectorFacts(t *testing.T) {
	assert.Equal(t, "#PF page fault", Name(PageFault))
	assert.Equal(t, "#BP breakpoint", Name(Breakpoint))
	assert.Equal(t, "", Name(200))
	for _, v := range []int{8, 10, 11, 12, 13, 14, 17, 21} {
		assert.True(t, HasErrorCode(v), "vector %d", v)
	}
	for _, v := range []int{0, 1, 2, 3, 6, 7, 16, 18, 19, 32, 255} {
		assert.False(t, HasErrorCode(v), "vector %d", v)
	}
}
