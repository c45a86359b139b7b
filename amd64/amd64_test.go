package amd64

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
)

func sig(s string) (uint32, uint32, uint32) {
	b := []byte(s)
	return binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]),
		binary.LittleEndian.Uint32(b[8:])
}

func TestHypervisorFromSignature(t *testing.T) {
	for s, want := range map[string]Hypervisor{
		"KVMKVMKVM\x00\x00\x00": HVKVM,
		"XenVMMXenVMM":          HVXen,
		"TCGTCGTCGTCG":          HVTCG,
		"Microsoft Hv":          HVHyperV,
		"VMwareVMware":          HVVMware,
		"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00": HVUnknown,
		"KVMKVMKVMKVM": HVUnknown,
	} {
		assert.Equal(t, want, HypervisorFromSignature(sig(s)), "%q", s)
	}
}

func TestDR7Breakpoint(t *testing.T) {
	// Breakpoint 0 on execution: L0 only (R/W0 = 00, LEN0 = 00).
	assert.Equal(t, uint64(1), DR7Breakpoint(0, DR7RWExec, 1))
	// Breakpoint 1, write, 4 bytes: L1 (bit 2), R/W1 = 01 at bits 20-21, LEN1 = 11 at 22-23.
	assert.Equal(t, uint64(1<<2|1<<20|3<<22), DR7Breakpoint(1, DR7RWWrite, 4))
	// Breakpoint 3, read/write, 8 bytes: L3 (bit 6), R/W3 = 11 at 28-29, LEN3 = 10 at 30-31.
	assert.Equal(t, uint64(1<<6|3<<28|2<<30), DR7Breakpoint(3, DR7RWRead, 8))
	assert.Equal(t, uint64(1<<4|1<<24|1<<26), DR7Breakpoint(2, DR7RWWrite, 2))
}

func TestCanonical(t *testing.T) {
	assert.True(t, Canonical(0))
	assert.True(t, Canonical(0x7fff_ffff_ffff))
	assert.False(t, Canonical(0x8000_0000_0000))
	assert.True(t, Canonical(0xffff_8000_0000_0000))
	assert.False(t, Canonical(0x0001_0000_0000_0000))
}
