package trap

import (
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"

	"tracebed/idt"
)

// The recovery depends on each safe access's layout: the one instruction that can fault
// accesses memory through RAX, which an earlier instruction loaded from the addr argument, and
// nothing has moved SP (no frame, no pushes).
func TestSafeLoadLayout(t *testing.T) {
	var entries [nSafe]uintptr
	safeLoadEntries(&entries)
	for i, entry := range entries {
		code := unsafe.Slice((*byte)(unsafe.Pointer(entry)), 64)
		sawAddr := false
		for off := 0; ; {
			in, err := x86asm.Decode(code[off:], 64)
			require.NoError(t, err)
			require.NotEqual(t, x86asm.PUSH, in.Op, "access %d moves SP", i)
			require.NotEqual(t, x86asm.POP, in.Op, "access %d moves SP", i)
			if entry+uintptr(off) == safeRIP[i] {
				// Decoded here, not taken from accessThroughAX: a load or store through [RAX].
				require.Contains(t, []x86asm.Op{x86asm.MOV, x86asm.MOVZX}, in.Op, "access %d: %v", i, in)
				var mem x86asm.Mem
				for _, a := range in.Args {
					if m, ok := a.(x86asm.Mem); ok {
						mem = m
					}
				}
				assert.Equal(t, x86asm.RAX, mem.Base, "access %d: %v is not an access through RAX", i, in)
				break
			}
			if m, ok := in.Args[1].(x86asm.Mem); ok && in.Op == x86asm.MOV && in.Args[0] == x86asm.RAX {
				assert.Equal(t, x86asm.RSP, m.Base, "access %d: RAX from the stack", i)
				assert.Equal(t, int64(8), m.Disp, "access %d: RAX is the addr argument", i)
				sawAddr = true
			}
			off += in.Len
			require.Less(t, off, 32, "access %d: safeRIP not on an instruction boundary", i)
		}
		assert.True(t, sawAddr, "access %d: addr loaded into RAX before the access", i)
	}
}

func TestSafeStores(t *testing.T) {
	x := [2]uint64{}
	p := uintptr(unsafe.Pointer(&x[0]))
	assert.False(t, SafeStore64(p, 0x1122334455667788).Failed())
	assert.False(t, SafeStore8(p+8, 0x99).Failed())
	assert.Equal(t, [2]uint64{0x1122334455667788, 0x99}, x)
}

func TestSafeLoadsOnMappedMemory(t *testing.T) {
	x := [2]uint64{0x1122334455667788, 0}
	p := uintptr(unsafe.Pointer(&x[0]))
	v8, f := SafeLoad8(p)
	assert.False(t, f.Failed())
	assert.Equal(t, uint8(0x88), v8)
	v16, _ := SafeLoad16(p)
	assert.Equal(t, uint16(0x7788), v16)
	v32, _ := SafeLoad32(p)
	assert.Equal(t, uint32(0x55667788), v32)
	v64, f := SafeLoad64(p)
	assert.Equal(t, uint64(0x1122334455667788), v64)
	assert.NoError(t, f.Err())

	s := []byte("probe\x00tail")
	buf := make([]byte, 16)
	n, f := CopyInString(buf, uintptr(unsafe.Pointer(&s[0])))
	assert.False(t, f.Failed())
	assert.Equal(t, "probe", string(buf[:n]))
	n, _ = CopyInString(buf[:3], uintptr(unsafe.Pointer(&s[0])))
	assert.Equal(t, "pro", string(buf[:n]), "max bounds the copy")
}

// fakeStack is a global: it must not move while its address is held as a number.
var fakeStack [5]uint64

// recoverSafeLoad, driven with a frame as the entry would build it for a fault at the load.
func TestRecoverSafeLoadReturnsOnTheLoadsBehalf(t *testing.T) {
	stack := &fakeStack
	stack[0] = 0xdead0000 // return address
	stack[1] = 0x8000_0000_0000_0000
	stack[2], stack[3], stack[4] = 7, 7, 7
	f := &Frame{Vector: idt.GeneralProtection, RIP: uint64(safeRIP[3]),
		RSP: uint64(uintptr(unsafe.Pointer(&stack[0])))}
	before := CPUStats(0).Recovered
	require.True(t, recoverSafeLoad(0, f))
	assert.Equal(t, uint64(0xdead0000), f.RIP)
	assert.Equal(t, uint64(uintptr(unsafe.Pointer(&stack[1]))), f.RSP)
	assert.Equal(t, [3]uint64{0, idt.GeneralProtection, 0x8000_0000_0000_0000}, [3]uint64(stack[2:5]))
	assert.Equal(t, before+1, CPUStats(0).Recovered)

	f = &Frame{Vector: idt.PageFault, CR2: 0x5000, RIP: uint64(safeRIP[0]),
		RSP: uint64(uintptr(unsafe.Pointer(&stack[0])))}
	stack[0], stack[1] = 0xbeef, 0x4fff
	require.True(t, recoverSafeLoad(0, f))
	assert.Equal(t, uint64(0x5000), stack[4], "a #PF reports CR2")

	f = &Frame{Vector: idt.PageFault, CR2: 0x7000, RIP: uint64(safeRIP[5]),
		RSP: uint64(uintptr(unsafe.Pointer(&stack[0])))}
	stack[0], stack[1], stack[2] = 0xf00d, 0x7000, 42
	require.True(t, recoverSafeLoad(0, f), "a store is recovered the same way")
	assert.Equal(t, [2]uint64{idt.PageFault, 0x7000}, [2]uint64(stack[3:5]))

	other := &Frame{Vector: idt.PageFault, RIP: uint64(safeRIP[0] + 1)}
	assert.False(t, recoverSafeLoad(0, other), "any other RIP is not recovered")
	bp := &Frame{Vector: idt.Breakpoint, RIP: uint64(safeRIP[0])}
	assert.False(t, recoverSafeLoad(0, bp), "only memory faults are recovered")
}

func TestDispatchCallsRegisteredHandler(t *testing.T) {
	var got uint64
	prev := Register(idt.Breakpoint, func(f *Frame) bool { got = f.RIP; return true })
	defer Register(idt.Breakpoint, prev)
	assert.True(t, Dispatch(0, &Frame{Vector: idt.Breakpoint, RIP: 42}))
	assert.Equal(t, uint64(42), got)
	assert.False(t, Dispatch(0, &Frame{Vector: idt.InvalidOpcode}), "no handler: fatal")
	assert.Equal(t, int32(1), Enter(1, idt.Breakpoint))
	assert.Equal(t, int32(2), Enter(1, 0x30))
	Exit(1)
	Exit(1)
	s := CPUStats(1)
	assert.Equal(t, int32(0), s.Depth)
	assert.Equal(t, int32(2), s.MaxDepth)
	assert.Equal(t, uint64(1), s.Nested)
	assert.Equal(t, uint64(1), NestedCount(1, 0x30))
	assert.Equal(t, uint64(1), Count(1, idt.Breakpoint))
	ResetMaxDepth(1)
	assert.Equal(t, int32(0), CPUStats(1).MaxDepth, "the record restarts from the current depth")
	Enter(1, idt.Breakpoint)
	assert.Equal(t, int32(1), CPUStats(1).MaxDepth)
	Exit(1)
}
