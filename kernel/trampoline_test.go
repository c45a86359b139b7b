package kernel

import (
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"
)

// The trampoline is hand-assembled; decoding it back in each CPU mode proves every byte means
// what its comment says.
func TestTrampolineDecodes(t *testing.T) {
	var page [4096]byte
	pm32, lm64, end := trampolineCode(page[:], trampolineBase)
	require.LessOrEqual(t, end, trGDT, "code runs into the data block")

	decode := func(from, to, mode int) []string {
		var out []string
		for pc := from; pc < to; {
			in, err := x86asm.Decode(page[pc:to], mode)
			require.NoError(t, err, "mode %d offset %#x", mode, pc)
			out = append(out, x86asm.GNUSyntax(in, uint64(trampolineBase+pc), nil))
			pc += in.Len
		}
		return out
	}
	assert.Equal(t, []string{
		"cli",
		"cld",
		"mov %cs,%ax",
		"mov %ax,%ds",
		"lgdtl 0x120",
		"mov %cr0,%eax",
		"or $0x1,%eax",
		"mov %eax,%cr0",
		"ljmp $0x18,$0x801e",
	}, decode(0, pm32, 16))
	assert.Equal(t, []string{
		"mov $0x10,%eax",
		"mov %eax,%ds",
		"mov %eax,%es",
		"mov %eax,%ss",
		"mov %cr4,%eax",
		"or $0x620,%eax",
		"mov %eax,%cr4",
		"mov 0x8128,%eax",
		"mov %eax,%cr3",
		"mov $0xc0000080,%ecx",
		"rdmsr",
		"or $0x901,%eax",
		"wrmsr",
		"mov %cr0,%eax",
		"or $0x80010002,%eax",
		"and $0xfffffffb,%eax",
		"mov %eax,%cr0",
		"ljmp $0x8,$0x8061",
	}, decode(pm32, lm64, 32))
	assert.Equal(t, 0x1e, pm32)
	assert.Equal(t, 0x61, lm64)
	// The real-mode far jump must carry a 32-bit offset (0x66 prefix): with a 16-bit one the
	// CPU would truncate it.
	far, err := x86asm.Decode(page[pm32-8:pm32], 16)
	require.NoError(t, err)
	assert.Equal(t, 32, far.DataSize)
	assert.Equal(t, []string{
		"mov 0x8130,%rsp",
		"mov 0x8138,%rdi",
		"mov 0x8140,%rax",
		"jmp *%rax",
	}, decode(lm64, end, 64))

	// The GDT the trampoline loads: the kernel's 64-bit code and data descriptors at the
	// kernel's selectors, plus a flat 32-bit code segment.
	le := binary.LittleEndian
	assert.Equal(t, uint64(0), le.Uint64(page[trGDT:]))
	assert.Equal(t, uint64(descCode64), le.Uint64(page[trGDT+selCode:]))
	assert.Equal(t, uint64(descData), le.Uint64(page[trGDT+selData:]))
	assert.Equal(t, uint64(descCode32), le.Uint64(page[trGDT+selCode32:]))
	assert.Equal(t, uint16(31), le.Uint16(page[trGDTR:]))
	assert.Equal(t, uint32(trampolineBase+trGDT), le.Uint32(page[trGDTR+2:]))

	trampolineData(page[:], 0x123000, 0xdead0, 0xbeef0, 0xcafe0)
	assert.Equal(t, uint32(0x123000), le.Uint32(page[trCR3:]))
	assert.Equal(t, uint64(0xdead0), le.Uint64(page[trStack:]))
	assert.Equal(t, uint64(0xbeef0), le.Uint64(page[trCPU:]))
	assert.Equal(t, uint64(0xcafe0), le.Uint64(page[trEntry:]))
	assert.LessOrEqual(t, trEntry+8, trBytes)

	// Both pages are below 1 MiB, page-aligned, and reachable as SIPI vectors.
	for _, p := range []int{trampolineBase, stuckBase} {
		assert.Zero(t, p%4096)
		assert.Less(t, p, 1<<20)
	}
	in, err := x86asm.Decode(stuckCode[1:], 16)
	require.NoError(t, err)
	assert.Equal(t, x86asm.HLT, in.Op)
	jmp, err := x86asm.Decode(stuckCode[2:], 16)
	require.NoError(t, err)
	assert.Equal(t, x86asm.Rel(-3), jmp.Args[0], "jumps back to the hlt")
}
