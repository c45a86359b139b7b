package kernel

import (
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startInfoImage builds an hvm_start_info, its command line and memory map in one buffer and
// returns the buffer (kept alive by the caller) and the struct's address.
func startInfoImage(version uint32, cmdline string, mem []memRegion) ([]byte, uint64) {
	buf := make([]byte, 4096)
	base := uint64(uintptr(unsafe.Pointer(&buf[0])))
	le := binary.LittleEndian
	le.PutUint32(buf[0:], pvhMagic)
	le.PutUint32(buf[4:], version)
	copy(buf[512:], cmdline)
	le.PutUint64(buf[24:], base+512)
	le.PutUint64(buf[32:], 0xf5a10)
	le.PutUint64(buf[40:], base+1024)
	le.PutUint32(buf[48:], uint32(len(mem)))
	for i, m := range mem {
		e := buf[1024+i*memmapEntryBytes:]
		le.PutUint64(e, m.base)
		le.PutUint64(e[8:], m.size)
		le.PutUint32(e[16:], m.typ)
	}
	return buf, base
}

func TestParseStartInfo(t *testing.T) {
	mem := []memRegion{{0, 0x9fc00, memRAM}, {0x100000, 0x3fe00000, memRAM}, {0xfffc0000, 0x40000, memReserved}}
	buf, p := startInfoImage(1, "suite=runtime seed=42", mem)
	var bi bootInfo
	require.Equal(t, startInfoOK, parseStartInfo(p, &bi))
	assert.Equal(t, "suite=runtime seed=42", string(bi.cmdline[:bi.cmdlen]))
	assert.Equal(t, uint64(0xf5a10), bi.rsdp)
	require.Equal(t, 3, bi.nmem)
	assert.Equal(t, mem, bi.mem[:3])
	_ = buf[0]
}

func TestParseStartInfoRefusals(t *testing.T) {
	var bi bootInfo
	buf, p := startInfoImage(0, "", nil)
	assert.Equal(t, startInfoNoMemmap, parseStartInfo(p, &bi), "version 0 has no memory map")
	buf[0] = 0
	assert.Equal(t, startInfoBadMagic, parseStartInfo(p, &bi))
	buf2, p2 := startInfoImage(1, "", nil)
	assert.Equal(t, startInfoNoMemmap, parseStartInfo(p2, &bi), "empty memory map")
	_, _ = buf[0], buf2[0]
}

func TestParseStartInfoLongCommandLine(t *testing.T) {
	for _, n := range []int{maxCmdline - 1, maxCmdline, 2000} {
		buf := make([]byte, 8192)
		for i := 0; i < n; i++ {
			buf[i] = 'a'
		}
		b2, p := startInfoImage(1, "", []memRegion{{0, 4096, memRAM}})
		binary.LittleEndian.PutUint64(b2[24:], uint64(uintptr(unsafe.Pointer(&buf[0]))))
		var bi bootInfo
		if n < maxCmdline {
			require.Equal(t, startInfoOK, parseStartInfo(p, &bi))
			assert.Equal(t, n, bi.cmdlen)
		} else {
			// A cut command line would be misread (xcall.drop=10 read as 1): refused.
			assert.Equal(t, startInfoLongCmdline, parseStartInfo(p, &bi), "%d bytes", n)
		}
		_ = b2[0]
	}
}
