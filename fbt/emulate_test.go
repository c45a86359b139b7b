package fbt

import (
	"math/rand"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"

	"tracebed/fbt/internal/alu"
	"tracebed/trap"
)

// The emulator's six arithmetic flags equal the host CPU's, for edge values and random ones.
func TestEmulatedFlagsMatchTheCPU(t *testing.T) {
	edges := []uint64{0, 1, 2, 0xf, 0x10, 0x7f, 0x80, 0xff, 1 << 31, 1<<32 - 1, 1 << 63, 1<<63 - 1, ^uint64(0), ^uint64(0) - 1}
	r := rand.New(rand.NewSource(1))
	var pairs [][2]uint64
	for _, a := range edges {
		for _, b := range edges {
			pairs = append(pairs, [2]uint64{a, b})
		}
	}
	for i := 0; i < 100000; i++ {
		pairs = append(pairs, [2]uint64{r.Uint64() >> uint(r.Intn(64)), r.Uint64() >> uint(r.Intn(64))})
	}
	for _, p := range pairs {
		for _, sub := range []bool{false, true} {
			res, fl := arith(p[0], p[1], sub)
			wres, wfl := alu.Add64(p[0], p[1])
			if sub {
				wres, wfl = alu.Sub64(p[0], p[1])
			}
			if res != wres || fl != wfl&arithMask {
				t.Fatalf("%#x %v %#x: got %#x flags %#x, CPU %#x flags %#x", p[0], map[bool]string{false: "+", true: "-"}[sub], p[1], res, fl, wres, wfl&arithMask)
			}
		}
	}
}

var emuStack [64]uint64
var emuG [4]uint64

// Each emulated instruction, from its real encoding, against what the CPU would do.
func TestEmulate(t *testing.T) {
	// Heap memory (globals): a goroutine stack may move under a uintptr.
	stack := emuStack[:]
	top := uint64(uintptr(unsafe.Pointer(&stack[32])))
	g := emuG[1:]
	emuG[0] = 0x77     // at g-8
	g[2] = top - 0x100 // a g: stackguard0 at +16
	gp := uint64(uintptr(unsafe.Pointer(&g[0])))
	const at = 0x401000
	base := func() *trap.Frame {
		return &trap.Frame{RSP: top, RBP: 0x1111, R14: gp, RAX: 7, RBX: 3, RCX: 0x100, RFLAGS: 0x202}
	}
	cases := []struct {
		name  string
		code  []byte
		check func(t *testing.T, f *trap.Frame)
	}{
		{"push rbp", []byte{0x55}, func(t *testing.T, f *trap.Frame) {
			assert.Equal(t, top-8, f.RSP)
			assert.Equal(t, uint64(0x1111), stack[31])
			assert.Equal(t, uint64(at+1), f.RIP)
		}},
		{"mov rbp,rsp", []byte{0x48, 0x89, 0xe5}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, top, f.RBP) }},
		{"sub rsp,0x18", []byte{0x48, 0x83, 0xec, 0x18}, func(t *testing.T, f *trap.Frame) {
			assert.Equal(t, top-0x18, f.RSP)
			_, fl := alu.Sub64(top, 0x18)
			assert.Equal(t, fl&arithMask|0x202, f.RFLAGS)
		}},
		{"add rsp,0x18", []byte{0x48, 0x83, 0xc4, 0x18}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, top+0x18, f.RSP) }},
		{"cmp rsp,[r14+0x10]", []byte{0x49, 0x3b, 0x66, 0x10}, func(t *testing.T, f *trap.Frame) {
			_, fl := alu.Sub64(top, top-0x100)
			assert.Equal(t, fl&arithMask, f.RFLAGS&arithMask)
			assert.Equal(t, uint64(at+4), f.RIP)
		}},
		{"ret", []byte{0xc3}, func(t *testing.T, f *trap.Frame) {
			assert.Equal(t, uint64(0xdead), f.RIP)
			assert.Equal(t, top+8, f.RSP)
		}},
		{"pop rbp", []byte{0x5d}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(0xdead), f.RBP) }},
		{"jmp rel8", []byte{0xeb, 0x10}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at+2+0x10), f.RIP) }},
		{"jmp rel32 back", []byte{0xe9, 0xfb, 0xff, 0xff, 0xff}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at), f.RIP) }},
		{"call rel32", []byte{0xe8, 0x00, 0x01, 0x00, 0x00}, func(t *testing.T, f *trap.Frame) {
			assert.Equal(t, uint64(at+5+0x100), f.RIP)
			assert.Equal(t, uint64(at+5), stack[31])
			assert.Equal(t, top-8, f.RSP)
		}},
		{"jbe taken (CF)", []byte{0x76, 0x20}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at+2+0x20), f.RIP) }},
		{"lea rax,[rip+0x100]", []byte{0x48, 0x8d, 0x05, 0x00, 0x01, 0x00, 0x00}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at+7+0x100), f.RAX) }},
		{"lea r12,[rsp-0x80]", []byte{0x4c, 0x8d, 0x64, 0x24, 0x80}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, top-0x80, f.R12) }},
		{"lea r12,[rsp-0x720] (disp32)", []byte{0x4c, 0x8d, 0xa4, 0x24, 0xe0, 0xf8, 0xff, 0xff}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, top-0x720, f.R12) }},
		{"lea rax,[rip-0x100]", []byte{0x48, 0x8d, 0x05, 0x00, 0xff, 0xff, 0xff}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at+7-0x100), f.RAX) }},
		{"cmp rsp,[r14-0x8] (disp8)", []byte{0x49, 0x3b, 0x66, 0xf8}, func(t *testing.T, f *trap.Frame) {
			_, fl := alu.Sub64(top, 0x77)
			assert.Equal(t, fl&arithMask, f.RFLAGS&arithMask)
		}},
		{"cmp rsp,[r14+0x10] (disp32)", []byte{0x49, 0x3b, 0xa6, 0x10, 0x00, 0x00, 0x00}, func(t *testing.T, f *trap.Frame) {
			_, fl := alu.Sub64(top, top-0x100)
			assert.Equal(t, fl&arithMask, f.RFLAGS&arithMask)
		}},
		{"lea eax,[rbx+rcx*4+8]", []byte{0x8d, 0x44, 0x8b, 0x08}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(3+0x100*4+8), f.RAX) }},
		{"nopl 0(rax)", []byte{0x0f, 0x1f, 0x40, 0x00}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at+4), f.RIP) }},
		{"nopw 0(rax,rax)", []byte{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}, func(t *testing.T, f *trap.Frame) { assert.Equal(t, uint64(at+6), f.RIP) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clear(stack)
			stack[32] = 0xdead
			e, err := PlanEmulate(c.code, at)
			require.NoError(t, err)
			assert.Equal(t, len(c.code), e.Len)
			f := base()
			if c.name == "jbe taken (CF)" {
				f.RFLAGS |= flagCF
			}
			require.True(t, e.Run(f))
			c.check(t, f)
		})
	}
	// jbe not taken, with CF and ZF clear.
	e, err := PlanEmulate([]byte{0x76, 0x20}, at)
	require.NoError(t, err)
	f := base()
	require.True(t, e.Run(f))
	assert.Equal(t, uint64(at+2), f.RIP)
}

// Every condition agrees with the host's own branch on flags the CPU computed.
func TestEmulatedConditions(t *testing.T) {
	vals := []uint64{0, 1, 5, 1 << 63, ^uint64(0), 1<<63 - 1}
	for _, a := range vals {
		for _, b := range vals {
			_, fl := alu.Sub64(a, b)
			sa, sb := int64(a), int64(b)
			want := map[x86asm.Op]bool{
				x86asm.JA: a > b, x86asm.JAE: a >= b, x86asm.JB: a < b, x86asm.JBE: a <= b,
				x86asm.JE: a == b, x86asm.JNE: a != b, x86asm.JG: sa > sb, x86asm.JGE: sa >= sb,
				x86asm.JL: sa < sb, x86asm.JLE: sa <= sb,
			}
			for op, w := range want {
				assert.Equal(t, w, taken(op, fl), "%v %#x %#x", op, a, b)
			}
		}
	}
}

// Outside the set, and forms that look alike but are not emulated, are refused.
func TestEmulateRefuses(t *testing.T) {
	for _, code := range [][]byte{
		{0x9c},                         // pushf
		{0xfa},                         // cli
		{0x48, 0x8b, 0x05, 1, 0, 0, 0}, // mov rax,[rip+1]
		{0xff, 0xd0},                   // call rax
		{0xc2, 0x08, 0x00},             // ret 8
		{0x5c},                         // pop rsp
		{0x65, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0}, // mov rax, gs:0
		{0x67, 0x8d, 0x04, 0x18},                   // lea eax,[eax+ebx] (32-bit addressing)
		{0x0f, 0x0b},                               // ud2
	} {
		_, err := PlanEmulate(code, 0x1000)
		assert.ErrorIs(t, err, ErrNotEmulated, "% x", code)
	}
}
