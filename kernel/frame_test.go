package kernel

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The assembly uses the numbers in frame_amd64.h; they must agree with the Go types.
func TestFrameOffsetsMatchAssembly(t *testing.T) {
	f, err := os.Open("frame_amd64.h")
	require.NoError(t, err)
	defer f.Close()
	defs := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 3 && fs[0] == "#define" {
			if n, err := strconv.ParseInt(fs[2], 0, 64); err == nil {
				defs[fs[1]] = int(n)
			}
		}
	}
	var fr Frame
	var c CPU
	want := map[string]uintptr{
		"FRAME_FX":     unsafe.Offsetof(fr.FX),
		"FRAME_FSBASE": unsafe.Offsetof(fr.FSBase),
		"FRAME_CR2":    unsafe.Offsetof(fr.CR2),
		"FRAME_R15":    unsafe.Offsetof(fr.R15),
		"FRAME_RAX":    unsafe.Offsetof(fr.RAX),
		"FRAME_VECTOR": unsafe.Offsetof(fr.Vector),
		"FRAME_ERR":    unsafe.Offsetof(fr.Err),
		"FRAME_RIP":    unsafe.Offsetof(fr.RIP),
		"FRAME_SIZE":   unsafe.Sizeof(fr),
		"FRAME_LOW":    unsafe.Offsetof(fr.R15),
		"CPU_SELF":     unsafe.Offsetof(c.self),
		"CPU_KSTACK":   unsafe.Offsetof(c.kstack),
		"CPU_SCRATCH":  unsafe.Offsetof(c.scratch),
		"CPU_KTLS":     unsafe.Offsetof(c.ktls),
		"CPU_STKLO":    unsafe.Offsetof(c.stkLo),
		"CPU_STKHI":    unsafe.Offsetof(c.stkHi),
		"CPU_KSTKMIN":  unsafe.Offsetof(c.kstkMin),
		"VEC_SYSCALL":  VecSyscall,
		"PV_POISON":    PVPoison,
		"SEL_CODE":     selCode,
		"SEL_DATA":     selData,
	}
	for name, off := range want {
		got, ok := defs[name]
		if assert.True(t, ok, "%s missing from frame_amd64.h", name) {
			assert.Equal(t, int(off), got, name)
		}
	}
	// The hardware frame is 5 words at the top; FXSAVE needs a 16-byte aligned area, and the
	// frame size keeps a 16-byte aligned stack top aligned.
	assert.Equal(t, unsafe.Sizeof(fr)-5*8, unsafe.Offsetof(fr.RIP))
	assert.Zero(t, unsafe.Sizeof(fr)%16)
	// The pushes in commonEntry go RAX first ... R15 last.
	assert.Equal(t, unsafe.Offsetof(fr.R15)+14*8, unsafe.Offsetof(fr.RAX))
}

func TestTSSDescriptor(t *testing.T) {
	lo, hi := tssDescriptor(0xffff_8000_1234_5678, 103)
	assert.Equal(t, uint64(103), lo&0xffff, "limit 15:0")
	assert.Equal(t, uint64(0x345678), (lo>>16)&0xffffff, "base 23:0")
	assert.Equal(t, uint64(0x89), (lo>>40)&0xff, "present, 64-bit available TSS")
	assert.Equal(t, uint64(0x12), lo>>56, "base 31:24")
	assert.Equal(t, uint64(0xffff_8000), hi, "base 63:32")
	var s tss
	s.setIST(1, 0x1000)
	s.setIST(7, 0x7000)
	s.setRSP0(0xabc0)
	assert.Equal(t, uint64(0x1000), s.ist(1))
	assert.Equal(t, uint64(0x7000), s.ist(7))
	assert.Equal(t, byte(0xc0), s.b[4])
}

func TestSegmentDescriptors(t *testing.T) {
	// Long-mode code: L=1, D=0, P=1, DPL 0, type execute/read.
	assert.Equal(t, uint64(1), uint64(descCode64)>>53&1, "L")
	assert.Equal(t, uint64(0), uint64(descCode64)>>54&1, "D must be 0 with L=1")
	assert.Equal(t, uint64(0x9a), uint64(descCode64)>>40&0xff)
	assert.Equal(t, uint64(0x92), uint64(descData)>>40&0xff)
}

func TestUnixSeconds(t *testing.T) {
	assert.Equal(t, int64(0), unixSeconds(1970, 1, 1, 0, 0, 0))
	assert.Equal(t, int64(951782400), unixSeconds(2000, 2, 29, 0, 0, 0))
	assert.Equal(t, int64(1795271394), unixSeconds(2026, 11, 21, 14, 29, 54))
}

func TestKbufFormatting(t *testing.T) {
	var k kbuf
	k.s("a ").hex(0).c(' ').hex(0xdead_beef).c(' ').dec(-42).c(' ').dec(0)
	assert.Equal(t, "a 0x0 0xdeadbeef -42 0", string(k.b[:k.n]))
	var full kbuf
	for i := 0; i < 100; i++ {
		full.s("0123456789")
	}
	assert.Equal(t, len(full.b), full.n, "a long line is cut, never overflows")
}
