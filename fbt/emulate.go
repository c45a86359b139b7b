package fbt

import (
	"errors"

	"golang.org/x/arch/x86/x86asm"

	"tracebed/amd64"
	"tracebed/trap"
)

// Emulation: the third way to run a displaced instruction, with nothing executed out of line.
// The #BP handler applies the instruction's effect to the trap frame. Only the instructions
// most probe sites hold are emulated — what Go's compiler puts at function entries and
// returns — and each is emulated completely (registers, the six arithmetic flags, memory);
// anything else is left to Relocate or PlanStep.

// ErrNotEmulated is returned by PlanEmulate for an instruction outside the emulated set.
var ErrNotEmulated = errors.New("fbt: instruction not emulated")

type emuOp uint8

const (
	emuNop   emuOp = iota
	emuPush        // push r64
	emuPop         // pop r64
	emuMov         // mov r64, r64
	emuAdd         // add r64, imm
	emuSub         // sub r64, imm
	emuCmpRR       // cmp r64, r64
	emuCmpRM       // cmp r64, [base+disp]
	emuRet         // ret
	emuJmp         // jmp rel
	emuJcc         // jcc rel
	emuCall        // call rel
	emuLea         // lea r64/r32, [base+index*scale+disp] or [rip+disp]
)

// Emu is a planned emulation of one instruction at a fixed address.
type Emu struct {
	op          emuOp
	Len         int
	next        uint64 // address of the following instruction
	target      uint64 // branch target; for a RIP-relative lea, the address
	dst, src    int8   // GPR numbers; -1 none
	base, index int8   // lea / cmp memory operand; -1 none
	scale       uint8
	disp        int64
	imm         uint64
	cond        x86asm.Op // jcc
	size32      bool      // lea with a 32-bit destination (zero-extends)
	ripRel      bool      // lea of a RIP-relative address (target)
}

// PlanEmulate decides whether insn, at address from, is one the emulator handles.
func PlanEmulate(insn []byte, from uint64) (*Emu, error) {
	in, err := x86asm.Decode(insn, 64)
	if err != nil || in.Len == 0 {
		return nil, ErrNotEmulated
	}
	e := &Emu{Len: in.Len, next: from + uint64(in.Len), dst: -1, src: -1, base: -1, index: -1}
	for _, p := range in.Prefix {
		if p == 0 {
			break
		}
		// Only REX and the operand-size prefix of a multi-byte NOP are understood.
		if p&0xf0 == x86asm.PrefixREX || in.Op == x86asm.NOP {
			continue
		}
		return nil, ErrNotEmulated
	}
	reg64 := func(a x86asm.Arg) (int8, bool) {
		r, ok := a.(x86asm.Reg)
		if !ok || r < x86asm.RAX || r > x86asm.R15 {
			return -1, false
		}
		return int8(r - x86asm.RAX), true
	}
	mem := func(a x86asm.Arg) (x86asm.Mem, bool) {
		m, ok := a.(x86asm.Mem)
		return m, ok && m.Segment == 0
	}
	rel := func() bool {
		r, ok := in.Args[0].(x86asm.Rel)
		e.target = e.next + uint64(int64(r))
		return ok
	}
	ok := false
	switch in.Op {
	case x86asm.NOP:
		e.op, ok = emuNop, true
	case x86asm.PUSH:
		e.op = emuPush
		e.src, ok = reg64(in.Args[0])
	case x86asm.POP:
		e.op = emuPop
		e.dst, ok = reg64(in.Args[0])
		ok = ok && e.dst != rSP
	case x86asm.MOV:
		e.op = emuMov
		var ok2 bool
		e.dst, ok = reg64(in.Args[0])
		e.src, ok2 = reg64(in.Args[1])
		ok = ok && ok2
	case x86asm.ADD, x86asm.SUB:
		e.op = emuAdd
		if in.Op == x86asm.SUB {
			e.op = emuSub
		}
		e.dst, ok = reg64(in.Args[0])
		imm, isImm := in.Args[1].(x86asm.Imm)
		e.imm = uint64(int64(imm))
		ok = ok && isImm
	case x86asm.CMP:
		e.dst, ok = reg64(in.Args[0])
		if r, isReg := reg64(in.Args[1]); isReg {
			e.op, e.src = emuCmpRR, r
		} else if m, isMem := mem(in.Args[1]); isMem && m.Index == 0 && m.Base >= x86asm.RAX && m.Base <= x86asm.R15 {
			e.op, e.base, e.disp = emuCmpRM, int8(m.Base-x86asm.RAX), int64(int32(m.Disp))
		} else {
			ok = false
		}
	case x86asm.RET:
		e.op, ok = emuRet, in.Args[0] == nil
	case x86asm.JMP:
		e.op, ok = emuJmp, rel()
	case x86asm.CALL:
		e.op, ok = emuCall, rel()
	case x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JNE, x86asm.JG,
		x86asm.JGE, x86asm.JL, x86asm.JLE, x86asm.JO, x86asm.JNO, x86asm.JS, x86asm.JNS,
		x86asm.JP, x86asm.JNP:
		e.op, e.cond, ok = emuJcc, in.Op, rel()
	case x86asm.LEA:
		e.op = emuLea
		r, isReg := in.Args[0].(x86asm.Reg)
		m, isMem := mem(in.Args[1])
		switch {
		case !isReg || !isMem:
		case r >= x86asm.RAX && r <= x86asm.R15:
			e.dst, ok = int8(r-x86asm.RAX), true
		case r >= x86asm.EAX && r <= x86asm.R15L:
			e.dst, e.size32, ok = int8(r-x86asm.EAX), true, true
		}
		if ok && in.AddrSize != 64 {
			ok = false
		}
		// x86asm leaves a disp32 zero-extended in Disp; the CPU sign-extends it.
		e.disp, e.scale = int64(int32(m.Disp)), m.Scale
		switch {
		case !ok:
		case m.Base == x86asm.RIP:
			e.target, e.ripRel = e.next+uint64(e.disp), true
		default:
			if m.Base != 0 {
				e.base, ok = int8(m.Base-x86asm.RAX), m.Base >= x86asm.RAX && m.Base <= x86asm.R15
			}
			if m.Index != 0 {
				e.index = int8(m.Index - x86asm.RAX)
				ok = ok && m.Index >= x86asm.RAX && m.Index <= x86asm.R15
			}
		}
	}
	if !ok {
		return nil, ErrNotEmulated
	}
	return e, nil
}

// WritesStack says whether the emulation stores below the interrupted RSP (push, call): the
// handler must not emulate it when its own frame lies there.
//
// Trap context allowed.
func (e *Emu) WritesStack() bool { return e.op == emuPush || e.op == emuCall }

// The arithmetic flags the emulated instructions set (RFLAGS bits, named in package amd64).
const (
	flagCF    = amd64.RFLAGS_CF
	flagPF    = amd64.RFLAGS_PF
	flagAF    = amd64.RFLAGS_AF
	flagZF    = amd64.RFLAGS_ZF
	flagSF    = amd64.RFLAGS_SF
	flagOF    = amd64.RFLAGS_OF
	arithMask = flagCF | flagPF | flagAF | flagZF | flagSF | flagOF
)

// arith computes a+b (sub false) or a-b (sub true) on 64 bits and the six flags as the CPU
// sets them.
//
// Trap context allowed.
func arith(a, b uint64, sub bool) (res, flags uint64) {
	var cf, of bool
	if sub {
		res = a - b
		cf = a < b
		of = (a^b)&(a^res)>>63 != 0
	} else {
		res = a + b
		cf = res < a
		of = ^(a^b)&(a^res)>>63 != 0
	}
	if cf {
		flags |= flagCF
	}
	if of {
		flags |= flagOF
	}
	if (a^b^res)&0x10 != 0 {
		flags |= flagAF
	}
	if res == 0 {
		flags |= flagZF
	}
	if res>>63 != 0 {
		flags |= flagSF
	}
	p := uint8(res)
	p ^= p >> 4
	p ^= p >> 2
	p ^= p >> 1
	if p&1 == 0 { // PF: an even number of set bits in the low byte
		flags |= flagPF
	}
	return res, flags
}

// taken evaluates a jcc condition on RFLAGS.
//
// Trap context allowed.
func taken(cond x86asm.Op, fl uint64) bool {
	cf, zf, sf, of, pf := fl&flagCF != 0, fl&flagZF != 0, fl&flagSF != 0, fl&flagOF != 0, fl&flagPF != 0
	switch cond {
	case x86asm.JA:
		return !cf && !zf
	case x86asm.JAE:
		return !cf
	case x86asm.JB:
		return cf
	case x86asm.JBE:
		return cf || zf
	case x86asm.JE:
		return zf
	case x86asm.JNE:
		return !zf
	case x86asm.JG:
		return !zf && sf == of
	case x86asm.JGE:
		return sf == of
	case x86asm.JL:
		return sf != of
	case x86asm.JLE:
		return zf || sf != of
	case x86asm.JO:
		return of
	case x86asm.JNO:
		return !of
	case x86asm.JS:
		return sf
	case x86asm.JNS:
		return !sf
	case x86asm.JP:
		return pf
	case x86asm.JNP:
		return !pf
	}
	return false
}

// Reg returns a pointer to GPR n (0 RAX … 15 R15, encoding order) in f.
//
// Trap context allowed.
func Reg(f *trap.Frame, n int) *uint64 {
	switch n {
	case rAX:
		return &f.RAX
	case rCX:
		return &f.RCX
	case rDX:
		return &f.RDX
	case rBX:
		return &f.RBX
	case rSP:
		return &f.RSP
	case rBP:
		return &f.RBP
	case rSI:
		return &f.RSI
	case rDI:
		return &f.RDI
	case r8:
		return &f.R8
	case r9:
		return &f.R9
	case r10:
		return &f.R10
	case r11:
		return &f.R11
	case r12:
		return &f.R12
	case r13:
		return &f.R13
	case r14:
		return &f.R14
	}
	return &f.R15
}

// Run applies the instruction to f, which was interrupted by the INT3 that replaced it (RIP
// is wherever; Run sets it). It returns false, with f untouched, when a memory access of the
// instruction would fault: the caller then runs the instruction out of line, where it faults
// as the original would have.
//
// Trap context.
func (e *Emu) Run(f *trap.Frame) bool {
	rip := e.next
	switch e.op {
	case emuNop:
	case emuPush:
		v := *Reg(f, int(e.src)) // push rsp pushes the value before the decrement
		if trap.SafeStore64(uintptr(f.RSP-8), v).Failed() {
			return false
		}
		f.RSP -= 8
	case emuPop:
		v, fl := trap.SafeLoad64(uintptr(f.RSP))
		if fl.Failed() {
			return false
		}
		f.RSP += 8
		*Reg(f, int(e.dst)) = v
	case emuMov:
		*Reg(f, int(e.dst)) = *Reg(f, int(e.src))
	case emuAdd, emuSub:
		d := Reg(f, int(e.dst))
		var fl uint64
		*d, fl = arith(*d, e.imm, e.op == emuSub)
		f.RFLAGS = f.RFLAGS&^arithMask | fl
	case emuCmpRR, emuCmpRM:
		b := uint64(0)
		if e.op == emuCmpRR {
			b = *Reg(f, int(e.src))
		} else {
			v, fl := trap.SafeLoad64(uintptr(*Reg(f, int(e.base)) + uint64(e.disp)))
			if fl.Failed() {
				return false
			}
			b = v
		}
		_, fl := arith(*Reg(f, int(e.dst)), b, true)
		f.RFLAGS = f.RFLAGS&^arithMask | fl
	case emuRet:
		v, fl := trap.SafeLoad64(uintptr(f.RSP))
		if fl.Failed() {
			return false
		}
		f.RSP += 8
		rip = v
	case emuJmp:
		rip = e.target
	case emuJcc:
		if taken(e.cond, f.RFLAGS) {
			rip = e.target
		}
	case emuCall:
		if trap.SafeStore64(uintptr(f.RSP-8), e.next).Failed() {
			return false
		}
		f.RSP -= 8
		rip = e.target
	case emuLea:
		a := e.target
		if !e.ripRel {
			a = uint64(e.disp)
			if e.base >= 0 {
				a += *Reg(f, int(e.base))
			}
			if e.index >= 0 {
				a += *Reg(f, int(e.index)) * uint64(e.scale)
			}
		}
		if e.size32 {
			a = uint64(uint32(a))
		}
		*Reg(f, int(e.dst)) = a
	}
	f.RIP = rip
	return true
}
