package idt

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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

func TestDefaultConfig(t *testing.T) {
	c := DefaultConfig()
	assert.Equal(t, Native, c.Mode)
	for v := 0; v < 256; v++ {
		assert.Equal(t, uint8(TypeInterrupt), c.Type[v], "vector %d", v)
	}
	assert.Equal(t, uint8(ISTNMI), c.IST[NMI])
	assert.Equal(t, uint8(ISTDF), c.IST[DoubleFault])
	assert.Equal(t, uint8(ISTMC), c.IST[MachineCheck])
	assert.Equal(t, uint8(ISTDB), c.IST[Debug])
	assert.Equal(t, uint8(ISTBP), c.IST[Breakpoint])
	assert.Equal(t, uint8(ISTFault), c.IST[PageFault])
	assert.Equal(t, uint8(ISTIRQ), c.IST[0x30])
	// Every slot the default uses is distinct for the vectors that may nest in each other.
	seen := map[uint8]int{}
	for _, v := range []int{NMI, DoubleFault, MachineCheck, Debug, Breakpoint, PageFault, 0x30} {
		_, dup := seen[c.IST[v]]
		assert.False(t, dup, "vector %d shares IST %d", v, c.IST[v])
		seen[c.IST[v]] = v
	}
}

func TestParseConfig(t *testing.T) {
	for s, want := range map[string]Mode{"native": Native, "pvshim": PVShim, "xenpv": XenPV} {
		m, e := ParseMode(s)
		assert.Equal(t, ParseOK, e)
		assert.Equal(t, want, m)
		assert.Equal(t, s, m.String())
	}
	_, e := ParseMode("pv")
	assert.Equal(t, ErrMode, e)

	c := DefaultConfig()
	require.Equal(t, ParseOK, c.ParseGates("3:trap,1:trap,3:intr,255:trap"))
	assert.Equal(t, uint8(TypeInterrupt), c.Type[3], "the last word for a vector wins")
	assert.Equal(t, uint8(TypeTrap), c.Type[1])
	assert.Equal(t, uint8(TypeTrap), c.Type[255])
	require.Equal(t, ParseOK, c.ParseISTs("3:0,14:7"))
	assert.Equal(t, uint8(0), c.IST[3])
	assert.Equal(t, uint8(7), c.IST[14])

	for s, want := range map[string]ParseError{
		"": ErrSyntax, "3": ErrSyntax, "3:trap,": ErrSyntax, ",3:trap": ErrSyntax,
		"256:trap": ErrVector, "x:trap": ErrVector, "-1:trap": ErrVector, ":trap": ErrVector,
		"3:task": ErrGateType, "3:": ErrGateType,
	} {
		assert.Equal(t, want, c.ParseGates(s), "idt.gate=%q", s)
	}
	for s, want := range map[string]ParseError{"3:8": ErrIST, "3:x": ErrIST, "3:": ErrIST, "1000:1": ErrVector} {
		assert.Equal(t, want, c.ParseISTs(s), "idt.ist=%q", s)
	}
	for _, e := range []ParseError{ErrMode, ErrVector, ErrGateType, ErrIST, ErrSyntax, ErrGateIRQ,
		ErrGateAnywhere, ErrISTAnywhere, ErrISTTrapShared} {
		assert.NotEqual(t, "ok", e.Error())
	}
}

// Settings the kernel cannot survive are refused, each with the rule it breaks; the ones make
// test boots with are accepted.
func TestConfigCheck(t *testing.T) {
	for _, tc := range []struct {
		gate, ist string
		want      ParseError
		vector    int
	}{
		{"", "", ParseOK, 0},
		{"3:trap", "", ParseOK, 0},                      // #BP on its own IST slot
		{"3:trap,1:trap", "3:0", ParseOK, 0},            // a trap gate without a stack switch
		{"3:trap", "3:2", ErrISTTrapShared, Breakpoint}, // a #PF in a nested timer would land there
		{"1:trap,3:trap", "", ParseOK, 0},               // #DB and #BP have slots of their own
		{"14:trap", "", ErrISTTrapShared, PageFault},    // ISTFault serves other exceptions too
		{"48:trap", "", ErrGateIRQ, 48},                 // the timer
		{"255:trap", "", ErrGateIRQ, 255},
		{"2:trap", "", ErrGateAnywhere, NMI},
		{"18:trap", "", ErrGateAnywhere, MachineCheck},
		{"", "2:0", ErrISTAnywhere, NMI},
		{"", "2:1", ErrISTAnywhere, NMI},          // shares the IRQ slot
		{"", "14:4", ErrISTAnywhere, DoubleFault}, // a #PF on #DF's stack
		{"", "50:5", ErrISTAnywhere, MachineCheck},
		{"3:trap", "3:1", ErrISTTrapShared, Breakpoint},
		{"14:trap", "48:2", ErrISTTrapShared, PageFault},
	} {
		c := DefaultConfig()
		if tc.gate != "" {
			require.Equal(t, ParseOK, c.ParseGates(tc.gate))
		}
		if tc.ist != "" {
			require.Equal(t, ParseOK, c.ParseISTs(tc.ist))
		}
		e, v := c.Check()
		assert.Equal(t, tc.want, e, "idt.gate=%s idt.ist=%s: %v", tc.gate, tc.ist, e)
		assert.Equal(t, tc.vector, v, "idt.gate=%s idt.ist=%s", tc.gate, tc.ist)
	}
}

func TestPVVectors(t *testing.T) {
	for _, v := range []int{Debug, NMI, Breakpoint, GeneralProtection, PageFault} {
		assert.True(t, IsPV(v), "vector %d", v)
	}
	assert.False(t, IsPV(DoubleFault))
	assert.False(t, IsPV(0x30))
}
