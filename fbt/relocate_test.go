package fbt

import (
	"errors"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"
)

// decodeAll decodes code whose 8-byte jump targets sit at the offsets in lits.
func decodeAll(t testing.TB, code []byte, lits ...int) []x86asm.Inst {
	var out []x86asm.Inst
	for off := 0; off < len(code); {
		if len(lits) > 0 && lits[0] == off {
			lits = lits[1:]
			require.LessOrEqual(t, off+8, len(code), "jump target cut short")
			off += 8
			continue
		}
		in, err := decode(code[off:])
		require.NoError(t, err, "% x at %d", code, off)
		require.NotZero(t, in.Op, "% x at %d", code, off)
		out = append(out, in)
		off += in.Len
	}
	return out
}

// reloc relocates and decodes, for the tests.
func reloc(t testing.TB, insn []byte, from, to uint64) ([]byte, []x86asm.Inst, error) {
	c, err := Relocate(insn, from, to)
	if err != nil {
		return nil, nil, err
	}
	return c.Code, decodeAll(t, c.Code, c.lits...), nil
}

func TestRelocateForms(t *testing.T) {
	const from = 0xffffff8000000000
	for _, tc := range []struct {
		name string
		insn []byte
		to   uint64
		ops  []x86asm.Op
	}{
		{"plain near", []byte{0x48, 0x89, 0xe5}, from + 4096, []x86asm.Op{x86asm.MOV, x86asm.JMP}},
		{"rip load near keeps rel32", []byte{0x48, 0x8b, 0x05, 0x10, 0, 0, 0}, from + 1<<20, []x86asm.Op{x86asm.MOV, x86asm.JMP}},
		{"rip load far uses a scratch", []byte{0x48, 0x8b, 0x05, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.POP, x86asm.JMP}},
		{"cmp imm after disp, far", []byte{0x80, 0x3d, 0x10, 0, 0, 0, 5}, from - 64<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.CMP, x86asm.POP, x86asm.JMP}},
		{"lea far is a move", []byte{0x48, 0x8d, 0x3d, 0x10, 0, 0, 0}, from + 8<<30, []x86asm.Op{x86asm.MOV, x86asm.JMP}},
		{"jcc rel8 far", []byte{0x74, 0x10}, from + 8<<30, []x86asm.Op{x86asm.JE, x86asm.JMP, x86asm.JMP}},
		// from+5 does not fit a sign-extended imm32 here: pushed in two halves, nothing else touched.
		{"call rel32", []byte{0xe8, 0, 1, 0, 0}, from + 4096,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.JMP}},
		{"call [rip] far", []byte{0xff, 0x15, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.PUSH, x86asm.MOV, x86asm.XCHG, x86asm.XCHG, x86asm.RET}},
		{"ret", []byte{0xc3}, from + 8<<30, []x86asm.Op{x86asm.RET}},
		// Issue 10: ff 25 decodes with DataSize 32, but a near indirect jmp is always 64-bit.
		{"jmp [rip] far", []byte{0xff, 0x25, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.RET}},
		{"bnd jmp [rip] far", []byte{0xf2, 0xff, 0x25, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.RET}},
		{"notrack jmp [rip] far", []byte{0x3e, 0xff, 0x25, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.RET}},
		{"rex.w jmp [rip] far", []byte{0x48, 0xff, 0x25, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.RET}},
		{"push [rip] far", []byte{0xff, 0x35, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.JMP}},
		{"eip-relative load far", []byte{0x67, 0x8b, 0x05, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.POP, x86asm.JMP}},
		{"eip-relative jmp far", []byte{0x67, 0xff, 0x25, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.MOV, x86asm.XCHG, x86asm.RET}},
		{"vmovups far (VEX2)", []byte{0xc5, 0xf8, 0x10, 0x05, 0x10, 0, 0, 0}, from + 8<<30,
			[]x86asm.Op{x86asm.PUSH, x86asm.MOV, x86asm.VMOVUPS, x86asm.POP, x86asm.JMP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ins, err := reloc(t, tc.insn, from, tc.to)
			require.NoError(t, err)
			var ops []x86asm.Op
			for _, in := range ins {
				ops = append(ops, in.Op)
			}
			assert.Equal(t, tc.ops, ops)
		})
	}
}

// The far jmp *[rip] loads the pointer from the original target and changes nothing else: the
// pushed RAX is restored before the ret pops the loaded target (issue 10: R11 and RSP were
// clobbered for every encoding but REX.W). Its fault points undo exactly that.
func TestFarJmpThroughRIP(t *testing.T) {
	const from = 0x1000
	for _, insn := range [][]byte{{0xff, 0x25, 0, 0, 0, 0}, {0xf2, 0xff, 0x25, 0, 0, 0, 0}, {0x3e, 0xff, 0x25, 0, 0, 0, 0}} {
		c, err := Relocate(insn, from, from+8<<30)
		require.NoError(t, err)
		ins := decodeAll(t, c.Code, c.lits...)
		assert.Equal(t, x86asm.Imm(from+uint64(len(insn))), ins[1].Args[1], "% x: rax holds the pointer's address", insn)
		assert.Equal(t, []Fault{{Off: 11, Saved: rAX, Pushed: 8}, {Off: 18, Saved: -1, Pushed: 8}}, c.Faults, "% x", insn)
		assert.Equal(t, 11, c.Body)
	}
}

// Found by hostile input: a REX prefix on a conditional branch (ignored by the CPU) was taken
// for the opcode, and the copy became "add $imm, %rax; jmp target": an unconditional jump.
func TestREXOnConditionalBranches(t *testing.T) {
	const from = 0x7f0000000000
	for _, tc := range []struct {
		insn []byte
		op   x86asm.Op
	}{
		{[]byte{0x48, 0x74, 0x10}, x86asm.JE},
		{[]byte{0x41, 0x75, 0x10}, x86asm.JNE},
		{[]byte{0x40, 0x0f, 0x84, 0, 1, 0, 0}, x86asm.JE},
		{[]byte{0x48, 0xe3, 0x10}, x86asm.JRCXZ},
		{[]byte{0x48, 0xe2, 0x10}, x86asm.LOOP},
		{[]byte{0x67, 0x48, 0xe2, 0x10}, x86asm.LOOP},
	} {
		for _, to := range []uint64{from - 0x6f000000, from - 0x1009, from + 8<<30} {
			_, ins, err := reloc(t, tc.insn, from, to)
			require.NoError(t, err, "% x", tc.insn)
			assert.Equal(t, tc.op, ins[0].Op, "% x → %#x: the copy starts with the same branch", tc.insn, to)
			s, err := PlanStep(tc.insn, from, to)
			require.NoError(t, err, "% x", tc.insn)
			assert.Equal(t, tc.op, decodeAll(t, s.Code)[0].Op, "% x: the step is the same branch", tc.insn)
		}
	}
	s, err := PlanStep([]byte{0xeb, 0xfe}, 0, 8<<30) // jmp . at address 0: a branch to 0
	require.NoError(t, err)
	assertResume(t, s, 8<<30+3, 0, "a taken branch to address 0")
	for _, insn := range [][]byte{{0x48, 0x48, 0x74, 0x10}, {0x48, 0x66, 0x8b, 0x05, 0, 0, 0, 0}} {
		_, err := Relocate(insn, from, from+8<<30)
		assert.ErrorIs(t, err, ErrNotRelocatable, "% x: REX not right before the opcode", insn)
	}
}

// An [EIP+d] operand (address-size prefix) is RIP-relative too, though x86asm reports no PCRel
// for it; its target wraps at 4 GiB.
func TestEIPRelative(t *testing.T) {
	var from uint64 = 0xfffffff0
	_, ins, err := reloc(t, []byte{0x67, 0x8b, 0x05, 0x20, 0, 0, 0}, from, from+8<<30)
	require.NoError(t, err)
	assert.Equal(t, x86asm.Imm(uint32(from+7+0x20)), ins[1].Args[1], "the target wraps at 4 GiB")
	m := ins[2].Args[1].(x86asm.Mem)
	assert.Equal(t, ins[1].Args[0], m.Base+x86asm.RAX-x86asm.EAX, "32-bit base: the scratch register's low half")
}

// A VEX RIP-relative load moved 8 GiB away must address the original target through the
// scratch register (x86asm shows VEX [rip+d] as [d], so this is found from ModRM).
func TestRelocateVEXScratchAddressesTarget(t *testing.T) {
	const from = 0x100000000000
	insn := []byte{0xc4, 0xe2, 0x79, 0x18, 0x05, 0x10, 0, 0, 0} // vbroadcastss 0x10(%rip), %xmm0
	_, ins, err := reloc(t, insn, from, from+8<<30)
	require.NoError(t, err)
	require.Equal(t, x86asm.MOV, ins[1].Op)
	assert.Equal(t, x86asm.Imm(from+9+0x10), ins[1].Args[1], "the scratch holds the original target")
	m := ins[2].Args[1].(x86asm.Mem)
	assert.Equal(t, ins[1].Args[0], m.Base)
	assert.Zero(t, m.Disp)
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		insn []byte
		why  Reason
	}{
		{[]byte{0xcc}, Trap},
		{[]byte{0xcd, 0x80}, Trap},
		{[]byte{0x0f, 0x0b}, Trap},
		{[]byte{0x0f, 0x05}, SavesRIP},
		{[]byte{0x48, 0xcf}, FarTransfer},
		{[]byte{0xfb}, InterruptShadow},
		{[]byte{0x8e, 0xd0}, InterruptShadow},
		{[]byte{0xc7, 0xf8, 0, 0, 0, 0}, Transactional},
		{[]byte{0x8f, 0x05, 0, 0, 0, 0}, PopRIPMemory},
		{[]byte{0x48, 0x03, 0x25, 0, 0, 0, 0}, RSPOperand}, // add 0(%rip), %rsp
		{[]byte{0x06}, Undecodable},                        // push %es: invalid in 64-bit mode
		{[]byte{0x66, 0x0f, 0x84, 0, 0, 0, 0}, Branch16},   // Intel: rel32, AMD: rel16
		{[]byte{0x66, 0xff, 0x25, 0, 0, 0, 0}, Branch16},
		{[]byte{0x66, 0x74, 0}, Branch16},
		{nil, Undecodable},
	} {
		_, err := Relocate(tc.insn, 0x1000, 0x1000+8<<30)
		require.Error(t, err, "% x", tc.insn)
		assert.ErrorIs(t, err, ErrNotRelocatable)
		var r *Refusal
		require.True(t, errors.As(err, &r))
		assert.Equal(t, tc.why, r.Reason, "% x", tc.insn)
	}
}

func TestPlanStep(t *testing.T) {
	const from, to = 0x1000, 0x1000 + 8<<30
	s, err := PlanStep([]byte{0x74, 0x10}, from, to) // je .+0x10
	require.NoError(t, err)
	assert.Equal(t, []byte{0x74, 1}, s.Code)
	assertResume(t, s, to+2, from+2, "not taken")
	assertResume(t, s, to+3, from+2+0x10, "taken, through the marker")

	s, err = PlanStep([]byte{0xe8, 0, 1, 0, 0}, from, to) // call .+0x100
	require.NoError(t, err)
	assert.True(t, s.Call)
	assertResume(t, s, to+6, from+5+0x100, "call target")
	assert.Equal(t, uint64(from+5), s.ReturnAddress(to+5))

	s, err = PlanStep([]byte{0x48, 0x8b, 0x05, 0x10, 0, 0, 0}, from, to) // mov 0x10(%rip), %rax
	require.NoError(t, err)
	assert.NotEqual(t, -1, s.Scratch)
	assert.NotEqual(t, 0, s.Scratch, "rax is the destination, not a scratch")
	assert.Equal(t, uint64(from+7+0x10), s.ScratchValue)
	assertResume(t, s, to+uint64(len(s.Code)), from+7, "fall through")

	s, err = PlanStep([]byte{0xf3, 0x48, 0xab}, from, to) // rep stos: every iteration traps at To
	require.NoError(t, err)
	assert.True(t, s.Repeat)
	next, done := s.Resume(to)
	assert.False(t, done, "a REP iteration is not the end of the step")
	assert.Equal(t, uint64(to), next)
	assertResume(t, s, to+3, from+3, "the last iteration")

	for _, insn := range [][]byte{{0x9c}, {0x9d}, {0xfa}, {0x66, 0x9c}} {
		_, err = PlanStep(insn, from, to)
		var r *Refusal
		require.True(t, errors.As(err, &r), "% x", insn)
		assert.Equal(t, StepFlags, r.Reason, "% x: the step's TF would be pushed or popped", insn)
	}

	s, err = PlanStep([]byte{0x8f, 0x05, 0, 0, 0, 0}, from, to) // pop to rip-relative: fine when stepping
	require.NoError(t, err)
	assert.NotEqual(t, -1, s.Scratch)
	assert.Equal(t, x86asm.POP, decodeAll(t, s.Code)[0].Op)
}

func assertResume(t *testing.T, s *Step, rip, want uint64, what string) {
	t.Helper()
	got, done := s.Resume(rip)
	assert.True(t, done, what)
	assert.Equal(t, want, got, what)
}

// FuzzRelocate: random bytes at random distances never panic, and what comes back decodes.
func FuzzRelocate(f *testing.F) {
	f.Add([]byte{0x48, 0x8b, 0x05, 0x10, 0, 0, 0}, uint64(0x1000), int64(8<<30))
	f.Add([]byte{0x62, 0xf1, 0x7c, 0x48, 0x10, 0x05, 1, 0, 0, 0}, uint64(0xffffffff81000000), int64(-1<<40))
	f.Add([]byte{0xff, 0x15, 0, 0, 0, 0}, uint64(0x7fff0000), int64(1<<31))
	f.Add([]byte{0xe3, 0x10}, uint64(0), int64(-5))
	for _, insn := range craftedForms { // issue 10's forms, and the rest of the crafted corpus
		f.Add(insn, uint64(0xffffffff81000000), int64(8<<30))
	}
	f.Fuzz(func(t *testing.T, insn []byte, from uint64, d int64) {
		to := from + uint64(d)
		c, err := Relocate(insn, from, to)
		if err != nil && !errors.Is(err, ErrNotRelocatable) {
			t.Fatalf("error %v does not match ErrNotRelocatable", err)
		}
		if err == nil {
			// Body and every fault point are instruction boundaries of the copy.
			bounds := map[int]bool{}
			off := 0
			lits := c.lits
			for _, in := range decodeAll(t, c.Code, c.lits...) {
				for len(lits) > 0 && lits[0] == off {
					off += 8
					lits = lits[1:]
				}
				bounds[off] = true
				off += in.Len
			}
			require.True(t, bounds[c.Body], "% x: body at %d", insn, c.Body)
			for _, f := range c.Faults {
				require.True(t, bounds[f.Off], "% x: fault point at %d", insn, f.Off)
				require.True(t, f.Saved >= -1 && f.Saved < 16 && f.Pushed >= 0 && f.Pushed <= 16, "% x: %+v", insn, f)
			}
		}
		if s, err := PlanStep(insn, from, to); err == nil {
			decodeAll(t, s.Code)
		}
	})
}

func BenchmarkRelocate(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	insns := [][]byte{
		{0x48, 0x89, 0xe5},
		{0x48, 0x8b, 0x05, 0x10, 0, 0, 0},
		{0x80, 0x3d, 0x10, 0, 0, 0, 5},
		{0x0f, 0x84, 0, 1, 0, 0},
		{0xff, 0x15, 0x10, 0, 0, 0},
		{0xc5, 0xf8, 0x10, 0x05, 0x10, 0, 0, 0},
	}
	dists := []uint64{4096, 8 << 30}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		in := insns[i%len(insns)]
		from := 0xffffffff81000000 + uint64(r.Intn(1<<20))
		if _, err := Relocate(in, from, from+dists[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}

// Found by the differential test: vzeroupper has no ModRM, whatever x86asm says.
func TestVzeroupperLength(t *testing.T) {
	in, err := decode([]byte{0xc5, 0xf8, 0x77, 0x31, 0xc0})
	require.NoError(t, err)
	assert.Equal(t, 3, in.Len)
	code, _, err := reloc(t, []byte{0xc5, 0xf8, 0x77, 0x31}, 0x1000, 0x2000)
	require.NoError(t, err)
	assert.Equal(t, []byte{0xc5, 0xf8, 0x77, 0xe9}, code[:4], "3 bytes copied, then the jump back")
}

// Found by the differential test: byte registers past BL map to their GPRs (R11B is R11),
// or a far mov 0(%rip), %r11b picked R11 as its scratch and lost the load.
func TestByteRegistersMapToTheirGPR(t *testing.T) {
	for r, want := range map[x86asm.Reg]int{x86asm.AL: rAX, x86asm.BL: rBX, x86asm.AH: rAX,
		x86asm.BH: rBX, x86asm.SPB: rSP, x86asm.DIB: rDI, x86asm.R8B: r8, x86asm.R11B: r11,
		x86asm.R15B: r15, x86asm.R11W: r11, x86asm.R11L: r11, x86asm.R11: r11} {
		n, ok := gpr(r)
		assert.True(t, ok)
		assert.Equal(t, want, n, "%v", r)
	}
	_, ins, err := reloc(t, []byte{0x44, 0x8a, 0x1d, 0xa0, 0x8a, 0x1d, 0x00}, 0x1000, 0x1000+8<<30)
	require.NoError(t, err)
	assert.NotEqual(t, x86asm.R11, ins[0].Args[0], "the scratch is not the destination")
}
