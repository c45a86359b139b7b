package fbt

import (
	"encoding/binary"
	"math"

	"golang.org/x/arch/x86/x86asm"
)

// Relocate returns code that, placed at address to, has the same effect on registers, flags and
// memory as the single instruction insn had at address from, and then continues where that
// instruction would have continued: at from+len(insn) when it falls through, at its own target
// when it branches, calls or returns. Only the first instruction of insn is used.
//
// RIP-relative operands and relative branches keep their rel32 form when the new displacement
// still fits; otherwise:
//   - a memory operand is rewritten to [scratch+0], with the scratch register (one the
//     instruction does not use) saved by push, loaded with the absolute address, and restored
//     by pop — push and pop leave the flags alone, and kernel code has no red zone to clobber;
//   - lea becomes a move of the address; push/jmp/call through [rip+d] are built from a load
//     of the pointer and an exchange with the stack slot, so RSP is right at every step;
//   - branches and the jump back become jmp *0(%rip) with the 8-byte target after it.
//
// Calls push from+len(insn) as their return address, never an address inside the copy.
//
// The Copy also says how to undo a partial run of it: a fault taken at one of its Faults is a
// fault of the displaced instruction, and the handler that maps it back (RIP = from, the saved
// register restored, what the copy pushed popped) sees exactly the state the original
// instruction would have faulted with. The differential test checks this on every fault.
func Relocate(insn []byte, from, to uint64) (*Copy, error) {
	a, err := analyze(insn, from)
	if err != nil {
		return nil, err
	}
	e := &emitter{to: to}
	switch a.kind {
	case kPlain, kStop:
		e.work(-1, 0)
		e.raw(a.raw)
		if a.kind == kPlain {
			e.jmp(a.next)
		}
	case kJmpRel:
		e.fault(-1, 0) // a non-canonical target: #GP on the jump, as on the original's
		e.jmp(a.target)
	case kCondRel:
		if !e.cond(a) {
			return nil, refuse(Undecodable, &a.in, from)
		}
	case kCallRel:
		e.fault(-1, 0)
		e.pushImm(a.next)
		e.fault(-1, 8) // a non-canonical target: #GP on the jump, where the original pushed nothing
		e.jmp(a.target)
	case kCallInd:
		e.pushOperand(a)
		// [rsp] = target. Swap in the return address under it and return into the target.
		e.raw([]byte{0x50})                      // push %rax
		e.movabs(rAX, a.next)                    // mov $next, %rax
		e.raw([]byte{0x48, 0x87, 0x44, 0x24, 8}) // xchg %rax, 8(%rsp): [rsp+8] = next, rax = target
		e.raw([]byte{0x48, 0x87, 0x04, 0x24})    // xchg %rax, (%rsp): [rsp] = target, rax restored
		// A non-canonical target faults here (#GP on the ret), where the original call faults
		// before pushing anything: 16 bytes to pop.
		e.fault(-1, 16)
		e.raw([]byte{0xc3}) // ret
	case kRIPMem:
		if err := e.ripMem(a); err != nil {
			return nil, err
		}
	}
	if !e.decodes() {
		return nil, refuse(Undecodable, &a.in, from)
	}
	return &Copy{Code: e.b, Body: e.body, Faults: e.faults, lits: e.lits}, nil
}

// Copy is a relocated instruction: Code, to be placed at the address given to Relocate.
type Copy struct {
	Code   []byte
	Body   int     // offset in Code of the instruction doing the displaced instruction's work
	Faults []Fault // where Code may fault on the displaced instruction's behalf
	lits   []int   // offsets of 8-byte jump targets in Code (data, not code)
}

// Fault is an instruction of a Copy that may fault on behalf of the displaced instruction (its
// memory operand, or the stack slot a push or call writes). To report such a fault as the
// original instruction's: when Saved >= 0, GPR Saved gets back the value stored at [RSP]; RSP
// grows by Pushed; RIP becomes the original instruction's address. A fault anywhere else in
// the copy is the copy's own (it touches nothing the original would not, except the stack below
// RSP, which kernel code keeps no data in).
type Fault struct {
	Off    int // offset in Code
	Saved  int // GPR number (0 RAX … 15 R15) the copy saved at [RSP] and then changed; -1: none
	Pushed int // bytes the copy has pushed below the original RSP when the instruction runs
}

type emitter struct {
	to     uint64
	b      []byte
	lits   []int // offsets of 8-byte jump targets (data, not code)
	body   int
	faults []Fault
}

// fault marks the next instruction as one that may fault on the displaced instruction's behalf.
func (e *emitter) fault(saved, pushed int) {
	e.faults = append(e.faults, Fault{Off: len(e.b), Saved: saved, Pushed: pushed})
}

// work marks the next instruction as the one doing the displaced instruction's work, and as a
// fault point.
func (e *emitter) work(saved, pushed int) {
	e.body = len(e.b)
	e.fault(saved, pushed)
}

// decodes checks that the code decodes as a whole, instruction by instruction, the way the
// CPU will see it. x86asm accepts some malformed input whose length depends on the bytes
// after it (a REX or EVEX prefix on an opcode that takes none); such input is refused.
func (e *emitter) decodes() bool {
	lits := e.lits
	for off := 0; off < len(e.b); {
		if len(lits) > 0 && lits[0] == off {
			lits = lits[1:]
			off += 8
			continue
		}
		in, err := decode(e.b[off:])
		if err != nil || in.Op == 0 || in.Len == 0 {
			return false
		}
		off += in.Len
	}
	return true
}

func (e *emitter) pc() uint64      { return e.to + uint64(len(e.b)) }
func (e *emitter) raw(b []byte)    { e.b = append(e.b, b...) }
func (e *emitter) u32(v uint32)    { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *emitter) u64(v uint64)    { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func fitsRel32(d int64) bool       { return d >= math.MinInt32 && d <= math.MaxInt32 }
func rel(target, end uint64) int64 { return int64(target - end) }

// jmp continues at target: jmp rel32 when it reaches, else jmp *0(%rip) and the address.
func (e *emitter) jmp(target uint64) {
	if d := rel(target, e.pc()+5); fitsRel32(d) {
		e.raw([]byte{0xe9})
		e.u32(uint32(d))
		return
	}
	e.raw([]byte{0xff, 0x25, 0, 0, 0, 0})
	e.lits = append(e.lits, len(e.b))
	e.u64(target)
}

// jmpLen is how many bytes jmp(target) emits at pc.
func jmpLen(pc, target uint64) int {
	if fitsRel32(rel(target, pc+5)) {
		return 5
	}
	return 14
}

// cond relocates a conditional relative branch as
//
//	<same condition> rel8 → T
//	jmp fall-through
//	T: jmp target
//
// It returns false when the short form is not the same branch (see shortCond).
func (e *emitter) cond(a *analysis) bool {
	op, ok := shortCond(a)
	if !ok {
		return false
	}
	fall := jmpLen(e.pc()+uint64(len(op))+1, a.next)
	e.raw(op)
	e.raw([]byte{byte(fall)})
	e.jmp(a.next)
	e.fault(-1, 0) // a non-canonical target: #GP on the jump, as on the taken original
	e.jmp(a.target)
	return true
}

// shortCond returns the opcode bytes of a's condition in its rel8 form, to be followed by the
// 8-bit displacement, and whether they decode as the same branch (not merely as something).
func shortCond(a *analysis) ([]byte, bool) {
	c := a.raw[a.op:] // past legacy prefixes and REX (ignored on these branches)
	var op []byte
	switch {
	case c[0] == 0x0f && c[1]&0xf0 == 0x80: // jcc rel32 → jcc rel8
		op = []byte{0x70 | c[1]&0x0f}
	case c[0]&0xf0 == 0x70:
		op = []byte{c[0]}
	case a.in.AddrSize == 32: // jecxz, loopl: keep the address-size prefix
		op = []byte{0x67, c[0]}
	default:
		op = []byte{c[0]} // jrcxz, loop*: rel8 only
	}
	return op, sameOp(append(op[:len(op):len(op)], 0), a.in.Op)
}

// sameOp reports whether code starts with an instruction of operation op: the rewritten form
// of a branch or operand must still be the same instruction, not just decode.
func sameOp(code []byte, op x86asm.Op) bool {
	in, err := decode(code)
	return err == nil && in.Op == op
}

// nearCopy returns a copy of the instruction for address at whose RIP-relative displacement
// is rewritten to reach the same target, or false when it no longer fits in 32 bits (or the
// operand wraps at 4 GiB: an address-size prefix).
func nearCopy(a *analysis, at uint64) ([]byte, bool) {
	d := rel(a.target, at+uint64(len(a.raw)))
	if !fitsRel32(d) || a.in.AddrSize != 64 {
		return nil, false
	}
	b := append([]byte(nil), a.raw...)
	binary.LittleEndian.PutUint32(b[a.disp:], uint32(d))
	return b, true
}

// pushImm pushes a 64-bit value without touching flags or registers, writing nothing but the
// slot the push fills.
func (e *emitter) pushImm(v uint64) {
	if int64(v) == int64(int32(v)) {
		e.raw([]byte{0x68}) // push $imm32, sign-extended
		e.u32(uint32(v))
		return
	}
	e.raw([]byte{0x68}) // push $lo32: writes the whole slot, bits 63:32 are then fixed
	e.u32(uint32(v))
	e.raw([]byte{0xc7, 0x44, 0x24, 0x04}) // movl $hi32, 4(%rsp)
	e.u32(uint32(v >> 32))
}

// pushMem pushes the quadword at absolute address addr: push %rax; mov $addr, %rax;
// mov (%rax), %rax; xchg %rax, (%rsp). stackFault: the displaced instruction writes the slot
// the first push writes (push, call), so a fault there is its fault too.
func (e *emitter) pushMem(addr uint64, stackFault bool) {
	if stackFault {
		e.fault(-1, 0)
	}
	e.raw([]byte{0x50})
	e.movabs(rAX, addr)
	e.work(rAX, 8)
	e.raw([]byte{0x48, 0x8b, 0x00})
	e.raw([]byte{0x48, 0x87, 0x04, 0x24})
}

// movabs loads a 64-bit immediate into GPR r.
func (e *emitter) movabs(r int, v uint64) {
	e.raw([]byte{0x48 | byte(r>>3), 0xb8 | byte(r&7)})
	e.u64(v)
}

func (e *emitter) pushReg(r int) {
	if r >= 8 {
		e.raw([]byte{0x41})
	}
	e.raw([]byte{0x50 | byte(r&7)})
}

func (e *emitter) popReg(r int) {
	if r >= 8 {
		e.raw([]byte{0x41})
	}
	e.raw([]byte{0x58 | byte(r&7)})
}

// pushOperand pushes the call's target operand (call r/m64 → push r/m64, FF /2 → FF /6).
func (e *emitter) pushOperand(a *analysis) {
	b := append([]byte(nil), a.raw...)
	if a.ripMem {
		var ok bool
		if b, ok = nearCopy(a, e.pc()); !ok {
			e.pushMem(a.target, true)
			return
		}
	}
	b[a.modrm] = b[a.modrm]&^0x38 | 6<<3
	e.fault(-1, 0)
	e.raw(b)
}

// ripMem relocates an instruction with a RIP-relative memory operand (not a call).
func (e *emitter) ripMem(a *analysis) error {
	in := &a.in
	if b, ok := nearCopy(a, e.pc()); ok {
		e.work(-1, 0)
		e.raw(b)
		if in.Op != x86asm.JMP {
			e.jmp(a.next)
		}
		return nil
	}
	switch {
	case in.Op == x86asm.LEA:
		if e.leaAsMove(a) {
			e.jmp(a.next)
			return nil
		}
	case in.Op == x86asm.PUSH && operandSize(in) == 64:
		e.pushMem(a.target, true)
		e.jmp(a.next)
		return nil
	case in.Op == x86asm.JMP: // 16-bit forms were refused by analyze
		// The ret pops the loaded target: no register or stack word changes on the way. (On a
		// CPU enforcing CET shadow stacks this ret would fault; tracebed enables none.)
		e.pushMem(a.target, false)
		e.fault(-1, 8) // a non-canonical target: #GP on the ret, where the original's is on the jmp
		e.raw([]byte{0xc3})
		return nil
	case in.Op == x86asm.POP:
		return refuse(PopRIPMemory, in, a.from)
	}
	used, high := regsUsed(in)
	if used&mSP != 0 {
		return refuse(RSPOperand, in, a.from)
	}
	b, r, ok := withScratch(a, used, high)
	if !ok {
		return refuse(NoScratch, in, a.from)
	}
	e.pushReg(r)
	e.movabs(r, a.target)
	e.work(r, 8)
	e.raw(b)
	e.popReg(r)
	if in.Op != x86asm.JMP {
		e.jmp(a.next)
	}
	return nil
}

// leaAsMove turns lea d(%rip), %reg into a move of the address into reg.
func (e *emitter) leaAsMove(a *analysis) bool {
	r, ok := a.in.Args[0].(x86asm.Reg)
	if !ok {
		return false
	}
	n, _ := gpr(r)
	switch a.in.DataSize {
	case 64:
		e.movabs(n, a.target)
	case 32:
		if n >= 8 {
			e.raw([]byte{0x41})
		}
		e.raw([]byte{0xb8 | byte(n&7)})
		e.u32(uint32(a.target))
	case 16:
		e.raw([]byte{0x66})
		if n >= 8 {
			e.raw([]byte{0x41})
		}
		e.raw([]byte{0xb8 | byte(n&7)})
		e.b = binary.LittleEndian.AppendUint16(e.b, uint16(a.target))
	default:
		return false
	}
	return true
}

// Scratch registers in order of preference: r8–r11, r14, r15 are never implicit operands,
// but need REX.B (or VEX/EVEX.B); the rest work without it. RSP and R12 are never used (as a
// base they need a SIB byte).
var scratchOrder = []int{r11, r10, r9, r8, r15, r14, r13, rBX, rSI, rDI, rBP, rCX, rDX, rAX}

// withScratch rewrites the RIP-relative operand as disp32(%r) with disp32 = 0 (ModRM mod=10,
// same length, so immediates after it stay put) and returns the new bytes and r.
func withScratch(a *analysis, used uint32, highByte bool) ([]byte, int, bool) {
	for _, r := range scratchOrder {
		if used&(1<<r) != 0 {
			continue
		}
		ext := byte(r >> 3)
		b := append([]byte(nil), a.raw...)
		modrm, disp := a.modrm, a.disp
		switch a.enc {
		case encLegacy:
			if ext != 0 {
				if highByte {
					continue // REX would turn AH..BH into SPL..DIL
				}
				b = append(b[:a.pfx:a.pfx], append([]byte{0x41}, b[a.pfx:]...)...)
				modrm++
				disp++
			}
		case encREX:
			b[a.pfx] = b[a.pfx]&^1 | ext
		case encVEX2:
			if ext != 0 {
				continue
			}
		case encVEX3, encEVEX:
			b[a.pfx+1] = b[a.pfx+1]&^0x20 | (1-ext)<<5
		}
		b[modrm] = 0x80 | b[modrm]&0x38 | byte(r&7)
		binary.LittleEndian.PutUint32(b[disp:], 0)
		if !sameOp(b, a.in.Op) {
			continue // the rewrite must still be the same instruction, not just decode
		}
		return b, r, true
	}
	return nil, 0, false
}
