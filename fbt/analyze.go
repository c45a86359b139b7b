// Package fbt holds function-boundary tracing's instruction work: deciding how the
// instruction an INT3 displaces can run somewhere else, at any distance from where it lives.
//
// One decoder (golang.org/x/arch/x86/x86asm) and one classification (analyze) serve both
// ways of running a displaced instruction out of line:
//   - Relocate: code that has the instruction's whole effect and then continues on its own
//     (a "boosted" copy ending in a jump back), and
//   - PlanStep: one instruction to single-step with TF, plus what the #DB handler fixes up.
//
// and a third way with nothing out of line: PlanEmulate, for the few instructions most probe
// sites hold (emulate.go). Probe specs and function layouts are parsed here too (spec.go).
//
// The kernel prepares probes with this package ahead of time; only Step.Resume,
// Step.ReturnAddress, Emu.Run and Reg run in trap context.
package fbt

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// ErrNotRelocatable is matched (errors.Is) by every refusal; the *Refusal says why.
var ErrNotRelocatable = errors.New("fbt: instruction not relocatable")

// Reason names why an instruction is refused. The list is short on purpose: everything not
// here is relocated.
type Reason string

const (
	Undecodable     Reason = "undecodable"
	Trap            Reason = "raises an exception whose saved RIP would point into the copy (int3, int n, into, int1, ud*)"
	SavesRIP        Reason = "saves RIP in a register (syscall, sysenter)"
	FarTransfer     Reason = "far or privileged control transfer (far jmp/call/ret, iret, sysret, sysexit)"
	Transactional   Reason = "xbegin: its abort target is RIP-relative inside a transaction"
	InterruptShadow Reason = "opens an interrupt shadow (sti, mov ss, pop ss)"
	Branch16        Reason = "16-bit operand-size branch (RIP truncated on AMD)"
	PopRIPMemory    Reason = "pop into RIP-relative memory out of rel32 reach"
	StepFlags       Reason = "reads or writes RFLAGS.TF, set for the step, or IF, which the step holds clear (pushf, popf, cli): emulate it instead"
	RSPOperand      Reason = "uses RSP and RIP-relative memory out of rel32 reach"
	NoScratch       Reason = "no free scratch register for RIP-relative memory out of rel32 reach"
)

// Refusal is the error for an instruction that is not relocated.
type Refusal struct {
	Reason Reason
	Inst   string // the instruction, GNU syntax, when it decoded
}

func (r *Refusal) Error() string {
	if r.Inst == "" {
		return fmt.Sprintf("fbt: not relocatable: %s", r.Reason)
	}
	return fmt.Sprintf("fbt: not relocatable: %s: %s", r.Inst, r.Reason)
}

func (r *Refusal) Is(target error) bool { return target == ErrNotRelocatable }

// Kinds of RIP dependence.
type kind int

const (
	kPlain   kind = iota // no RIP dependence: copy
	kRIPMem              // RIP-relative memory operand
	kJmpRel              // jmp rel8/rel32
	kCondRel             // jcc, jrcxz/jecxz, loop/loope/loopne: rel8 or rel32
	kCallRel             // call rel32
	kCallInd             // call r/m64 (RIP-relative or not): the return address is RIP
	kStop                // ret, jmp r/m (not RIP-relative): never falls through
)

// analysis is what Relocate and PlanStep share.
type analysis struct {
	in     x86asm.Inst
	raw    []byte // the instruction's bytes
	from   uint64
	next   uint64 // from + len: where the instruction falls through to
	kind   kind
	target uint64 // RIP-relative memory address, or branch target
	modrm  int    // offset of ModRM (kRIPMem, kCallInd); -1 if none
	disp   int    // offset of the RIP displacement (kRIPMem)
	ripMem bool   // the memory operand is RIP-relative (kRIPMem, kCallInd)
	enc    encoding
	pfx    int // offset of the first byte after legacy prefixes
	op     int // offset of the opcode (after legacy prefixes, REX, VEX or EVEX)
}

// How the instruction encodes ModRM.rm's fourth bit.
type encoding int

const (
	encLegacy encoding = iota // no REX: one can be inserted
	encREX                    // REX present
	encVEX2                   // C5: B fixed at 0
	encVEX3                   // C4: B inverted in byte 1 bit 5
	encEVEX                   // 62: B inverted in byte 1 bit 5
)

// decode is x86asm.Decode in 64-bit mode with the one length error the differential test
// found: x86asm gives VEX vzeroupper/vzeroall (VEX.0F 77) a ModRM byte they do not have, so
// c5 f8 77 31 decoded as one 4-byte instruction where the CPU runs 3 bytes and then 0x31.
func decode(b []byte) (x86asm.Inst, error) {
	in, err := x86asm.Decode(b, 64)
	if err != nil || (in.Op != x86asm.VZEROUPPER && in.Op != x86asm.VZEROALL) {
		return in, err
	}
	p := 0
	for p < len(b) && isLegacyPrefix(b[p]) {
		p++
	}
	switch {
	case p < len(b) && b[p] == 0xc5:
		in.Len = p + 3
	case p < len(b) && b[p] == 0xc4:
		in.Len = p + 4
	}
	return in, nil
}

func isLegacyPrefix(b byte) bool {
	switch b {
	case 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65, 0x66, 0x67:
		return true
	}
	return false
}

func refuse(r Reason, in *x86asm.Inst, pc uint64) error {
	ref := &Refusal{Reason: r}
	if in != nil {
		ref.Inst = x86asm.GNUSyntax(*in, pc, nil)
	}
	return ref
}

// analyze decodes the first instruction of insn as if it lived at from.
func analyze(insn []byte, from uint64) (*analysis, error) {
	in, err := decode(insn)
	if err != nil || in.Op == 0 || in.Len == 0 || in.Len > len(insn) { // x86asm returns Op 0 for some truncated input
		return nil, refuse(Undecodable, nil, from)
	}
	// x86asm accepts some truncated encodings (an EVEX prefix without its ModRM, say) with a
	// length that changes once more bytes follow; a copy would then run different code.
	// Decode again with two different tails and insist on the same length and operation.
	for _, fill := range []byte{0x90, 0x00} {
		var buf [32]byte
		for i := range buf {
			buf[i] = fill
		}
		copy(buf[:], insn[:in.Len])
		if again, err := decode(buf[:]); err != nil || again.Len != in.Len || again.Op != in.Op {
			return nil, refuse(Undecodable, nil, from)
		}
	}
	a := &analysis{in: in, raw: insn[:in.Len], from: from, next: from + uint64(in.Len), modrm: -1}
	for a.pfx < len(a.raw) && isLegacyPrefix(a.raw[a.pfx]) {
		a.pfx++
	}
	if a.pfx >= len(a.raw) {
		return nil, refuse(Undecodable, &in, from)
	}
	op := a.raw[a.pfx]
	opAt := a.pfx
	switch {
	case op == 0xc5:
		a.enc, opAt = encVEX2, a.pfx+2
	case op == 0xc4:
		a.enc, opAt = encVEX3, a.pfx+3
	case op == 0x62:
		a.enc, opAt = encEVEX, a.pfx+4
	case op&0xf0 == 0x40:
		a.enc, opAt = encREX, a.pfx+1
		// A REX prefix counts only right before the opcode; another REX or a legacy prefix
		// after it makes x86asm and the CPU disagree about which bits apply. Refused.
		if opAt >= len(a.raw) || a.raw[opAt]&0xf0 == 0x40 || isLegacyPrefix(a.raw[opAt]) {
			return nil, refuse(Undecodable, &in, from)
		}
	}
	a.op = opAt
	if r, bad := refused(&in); bad {
		return nil, refuse(r, &in, from)
	}

	rel, isRel := in.Args[0].(x86asm.Rel)
	if isRel || in.Op == x86asm.JMP || in.Op == x86asm.CALL {
		// With 66, Intel ignores the prefix on near branches and AMD truncates RIP to 16 bits
		// (and reads a rel16): the instruction has no single meaning to relocate.
		if in.DataSize == 16 {
			return nil, refuse(Branch16, &in, from)
		}
	}
	if isRel && in.PCRel > 0 {
		a.target = a.next + uint64(int64(rel))
		switch in.Op {
		case x86asm.JMP:
			a.kind = kJmpRel
		case x86asm.CALL:
			a.kind = kCallRel
		default:
			a.kind = kCondRel
		}
		return a, nil
	}

	// RIP-relative memory: x86asm reports legacy/REX forms in PCRel, except with an
	// address-size prefix ([EIP+d], PCRel 0); its VEX/EVEX decoder shows them as absolute
	// [disp32]. Those two are found from ModRM directly.
	switch {
	case in.PCRel == 4:
		a.ripMem, a.disp, a.modrm = true, in.PCRelOff, in.PCRelOff-1
	case memBase(&in, x86asm.EIP):
		if off := eipDispOffset(a.raw); off > 0 {
			a.ripMem, a.disp, a.modrm = true, off, off-1
		} else {
			return nil, refuse(Undecodable, &in, from)
		}
	case a.enc == encVEX2 || a.enc == encVEX3 || a.enc == encEVEX:
		if m := opAt + 1; m+5 <= len(a.raw) && a.raw[m]&0xc7 == 0x05 {
			a.ripMem, a.disp, a.modrm = true, m+1, m
		}
	}
	if a.ripMem {
		d := int64(int32(binary.LittleEndian.Uint32(a.raw[a.disp:])))
		a.target = a.next + uint64(d)
		if in.AddrSize == 32 {
			a.target = uint64(uint32(a.target))
		}
	}

	switch {
	case in.Op == x86asm.CALL: // call r/m64 (rel forms returned above)
		a.kind = kCallInd
		if !a.ripMem {
			a.modrm = opAt + 1
		}
	case in.Op == x86asm.RET:
		a.kind = kStop
	case in.Op == x86asm.JMP && !a.ripMem:
		a.kind = kStop
	case a.ripMem:
		a.kind = kRIPMem
	}
	return a, nil
}

// memBase reports whether a memory operand of in has base register r.
func memBase(in *x86asm.Inst, r x86asm.Reg) bool {
	for _, arg := range in.Args {
		if m, ok := arg.(x86asm.Mem); ok && m.Base == r {
			return true
		}
	}
	return false
}

// eipDispOffset finds the displacement of an [EIP+d] operand in a legacy or REX encoding: the
// same bytes with the address-size prefix turned into a segment prefix (same length, ignored in
// 64-bit mode) decode as [RIP+d], for which x86asm reports where d is.
func eipDispOffset(raw []byte) int {
	b := append([]byte(nil), raw...)
	for i := 0; i < len(b) && isLegacyPrefix(b[i]); i++ {
		if b[i] == 0x67 {
			b[i] = 0x3e
		}
	}
	in, err := decode(b)
	if err != nil || in.Len != len(raw) || in.PCRel != 4 {
		return 0
	}
	return in.PCRelOff
}

// operandSize is the SDM's effective operand size in 64-bit mode (Vol. 2, 2.2.1.7 and the
// d64/f64 marks of Appendix A): near JMP/CALL r/m, RET, PUSH and POP (and their flag and frame
// forms) are 64-bit unless a 66 prefix makes them 16-bit; REX.W changes nothing. x86asm reports
// the encoded size instead, 32 for ff 25 (jmp *[rip]) or ff 35 (push [rip]).
func operandSize(in *x86asm.Inst) int {
	switch in.Op {
	case x86asm.JMP, x86asm.CALL, x86asm.RET, x86asm.PUSH, x86asm.POP, x86asm.PUSHF, x86asm.PUSHFQ,
		x86asm.POPF, x86asm.POPFQ, x86asm.ENTER, x86asm.LEAVE:
		if in.DataSize == 16 {
			return 16
		}
		return 64
	}
	return in.DataSize
}

// isString reports the string instructions, the ones a REP prefix repeats (SDM Vol. 2 REP).
func isString(op x86asm.Op) bool {
	switch op {
	case x86asm.MOVSB, x86asm.MOVSW, x86asm.MOVSD, x86asm.MOVSQ, x86asm.CMPSB, x86asm.CMPSW,
		x86asm.CMPSD, x86asm.CMPSQ, x86asm.STOSB, x86asm.STOSW, x86asm.STOSD, x86asm.STOSQ,
		x86asm.LODSB, x86asm.LODSW, x86asm.LODSD, x86asm.LODSQ, x86asm.SCASB, x86asm.SCASW,
		x86asm.SCASD, x86asm.SCASQ, x86asm.INSB, x86asm.INSW, x86asm.INSD, x86asm.OUTSB,
		x86asm.OUTSW, x86asm.OUTSD:
		return true
	}
	return false
}

// repeated reports a string instruction with a REP, REPE or REPNE prefix: under TF it traps
// after every iteration with RIP still at the instruction (SDM Vol. 3, 18.3.1.4).
func repeated(in *x86asm.Inst) bool { return isString(in.Op) && hasRep(in) }

// hasRep reports a REP, REPE or REPNE prefix.
func hasRep(in *x86asm.Inst) bool {
	for _, p := range in.Prefix {
		if p == 0 {
			break
		}
		if p&0xff == x86asm.PrefixREP || p&0xff == x86asm.PrefixREPN {
			return true
		}
	}
	return false
}

// refused reports the instructions that are never relocated (see Reason).
func refused(in *x86asm.Inst) (Reason, bool) {
	switch in.Op {
	case x86asm.INT, x86asm.INTO, x86asm.ICEBP, x86asm.UD0, x86asm.UD1, x86asm.UD2:
		return Trap, true
	case x86asm.SYSCALL, x86asm.SYSENTER:
		return SavesRIP, true
	case x86asm.LCALL, x86asm.LJMP, x86asm.LRET, x86asm.IRET, x86asm.IRETD, x86asm.IRETQ,
		x86asm.SYSRET, x86asm.SYSEXIT:
		return FarTransfer, true
	case x86asm.XBEGIN:
		return Transactional, true
	case x86asm.STI:
		return InterruptShadow, true
	case x86asm.MOV:
		if r, ok := in.Args[0].(x86asm.Reg); ok && r == x86asm.SS {
			return InterruptShadow, true
		}
	case x86asm.POP:
		if r, ok := in.Args[0].(x86asm.Reg); ok && r == x86asm.SS {
			return InterruptShadow, true
		}
	}
	return "", false
}

// GPR numbers 0..15 in encoding order.
const (
	rAX = iota
	rCX
	rDX
	rBX
	rSP
	rBP
	rSI
	rDI
	r8
	r9
	r10
	r11
	r12
	r13
	r14
	r15
)

// gpr maps any GPR view (AL, AX, EAX, RAX, AH, R8B...) to its number; ok false for others.
func gpr(r x86asm.Reg) (int, bool) {
	switch {
	case r >= x86asm.AL && r <= x86asm.R15B:
		// x86asm orders AL CL DL BL, AH CH DH BH, SPB BPB SIB DIB, R8B..R15B: past BL every
		// byte register sits four places after its GPR (AH..BH are bits 15:8 of RAX..RBX).
		if n := int(r - x86asm.AL); n >= 4 {
			return n - 4, true
		} else {
			return n, true
		}
	case r >= x86asm.AX && r <= x86asm.R15W:
		return int(r - x86asm.AX), true
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return int(r - x86asm.EAX), true
	case r >= x86asm.RAX && r <= x86asm.R15:
		return int(r - x86asm.RAX), true
	}
	return 0, false
}

func isHighByte(r x86asm.Reg) bool { return r >= x86asm.AH && r <= x86asm.BH }

// regsUsed returns a mask of the GPRs the instruction reads or writes, explicitly or
// implicitly, and whether it names AH, CH, DH or BH (which a REX prefix would change).
func regsUsed(in *x86asm.Inst) (mask uint32, highByte bool) {
	for _, arg := range in.Args {
		switch v := arg.(type) {
		case x86asm.Reg:
			if n, ok := gpr(v); ok {
				mask |= 1 << n
			}
			highByte = highByte || isHighByte(v)
		case x86asm.Mem:
			for _, r := range [...]x86asm.Reg{v.Base, v.Index} {
				if n, ok := gpr(r); ok {
					mask |= 1 << n
				}
			}
		}
	}
	return mask | implicitRegs(in), highByte
}

const (
	mAX = 1 << rAX
	mCX = 1 << rCX
	mDX = 1 << rDX
	mBX = 1 << rBX
	mSP = 1 << rSP
	mBP = 1 << rBP
	mSI = 1 << rSI
	mDI = 1 << rDI
)

// implicitRegs: GPRs an instruction uses without naming them (SDM Vol. 2 operand tables).
// Erring on the side of more registers only narrows the scratch choice.
func implicitRegs(in *x86asm.Inst) uint32 {
	var m uint32
	switch in.Op {
	case x86asm.MUL, x86asm.IMUL, x86asm.DIV, x86asm.IDIV, x86asm.CWD, x86asm.CDQ, x86asm.CQO,
		x86asm.CBW, x86asm.CWDE, x86asm.CDQE, x86asm.RDTSC, x86asm.RDPMC, x86asm.RDMSR,
		x86asm.WRMSR, x86asm.XGETBV, x86asm.XSETBV, x86asm.IN, x86asm.OUT, x86asm.MULX:
		m = mAX | mDX | mCX
	case x86asm.RDTSCP, x86asm.MONITOR, x86asm.MWAIT:
		m = mAX | mCX | mDX
	case x86asm.CPUID, x86asm.CMPXCHG8B, x86asm.CMPXCHG16B:
		m = mAX | mBX | mCX | mDX
	case x86asm.CMPXCHG, x86asm.LAHF, x86asm.SAHF:
		m = mAX
	case x86asm.XLATB:
		m = mAX | mBX
	case x86asm.PCMPESTRI, x86asm.PCMPESTRM, x86asm.PCMPISTRI, x86asm.PCMPISTRM,
		x86asm.VPCMPESTRI, x86asm.VPCMPESTRM, x86asm.VPCMPISTRI, x86asm.VPCMPISTRM:
		m = mAX | mCX | mDX
	case x86asm.XSAVE, x86asm.XSAVE64, x86asm.XSAVEOPT, x86asm.XSAVEOPT64, x86asm.XRSTOR,
		x86asm.XRSTOR64, x86asm.XSAVEC, x86asm.XSAVEC64, x86asm.XSAVES, x86asm.XSAVES64,
		x86asm.XRSTORS, x86asm.XRSTORS64:
		m = mAX | mDX
	case x86asm.MASKMOVQ, x86asm.MASKMOVDQU, x86asm.VMASKMOVDQU:
		m = mDI
	case x86asm.ENTER, x86asm.LEAVE:
		m = mBP | mSP
	case x86asm.PUSH, x86asm.POP, x86asm.PUSHF, x86asm.POPF, x86asm.PUSHFQ, x86asm.POPFQ,
		x86asm.CALL, x86asm.RET:
		m = mSP
	}
	if hasRep(in) {
		m |= mCX
	}
	if isString(in.Op) {
		m |= mAX | mCX | mDX | mSI | mDI
	}
	return m
}
