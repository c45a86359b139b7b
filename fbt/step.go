package fbt

import "golang.org/x/arch/x86/x86asm"

// Step is the single-step way to run a displaced instruction: the #BP handler places Code at
// To, loads Scratch (if any) with ScratchValue after saving it, and resumes at To with TF set;
// the #DB handler that follows restores Scratch, fixes the return address of a call, and moves
// RIP with Resume. The analysis is Relocate's; only the layout differs (one instruction, the
// rest done by the handlers).
type Step struct {
	Code         []byte
	To           uint64
	Scratch      int    // GPR number (0 RAX … 15 R15) to save, load and restore; -1 for none
	ScratchValue uint64 // what Scratch holds while Code runs
	FallThrough  uint64 // from+len(insn)
	Branch       bool   // Code is a relocated relative branch, taken when it reaches the marker
	Taken        uint64 // that branch's target
	Call         bool   // Code pushed To+len(Code) as a return address: replace it by FallThrough
	Repeat       bool   // a REP string instruction: each iteration traps with RIP = To
}

// marker is where a relocated relative branch in Code goes when taken: one byte past Code,
// never executed — the #DB arrives first and Resume maps it to Taken.
//
// Trap context allowed.
func (s *Step) marker() uint64 { return s.To + uint64(len(s.Code)) + 1 }

// Resume maps the RIP the #DB reported to where the original instruction would have gone, and
// says whether the step is done. A REP string instruction traps after every iteration with RIP
// still at To: not done, so the handler keeps TF, the scratch register and the slot, and lets
// the next iteration run.
//
// Trap context allowed.
func (s *Step) Resume(rip uint64) (uint64, bool) {
	switch {
	case s.Repeat && rip == s.To:
		return rip, false
	case rip == s.To+uint64(len(s.Code)):
		return s.FallThrough, true
	case s.Branch && rip == s.marker():
		return s.Taken, true
	}
	return rip, true
}

// ReturnAddress is the value a call's pushed return address must be replaced with, given the
// value found at [RSP] after the step (which is To+len(Code) when the step was a call).
//
// Trap context allowed.
func (s *Step) ReturnAddress(pushed uint64) uint64 {
	if s.Call && pushed == s.To+uint64(len(s.Code)) {
		return s.FallThrough
	}
	return pushed
}

// PlanStep prepares insn, which lives at from, for single-stepping at to.
func PlanStep(insn []byte, from, to uint64) (*Step, error) {
	a, err := analyze(insn, from)
	if err != nil {
		return nil, err
	}
	switch a.in.Op {
	case x86asm.PUSHF, x86asm.PUSHFQ, x86asm.POPF, x86asm.POPFQ, x86asm.CLI:
		return nil, refuse(StepFlags, &a.in, from)
	}
	s := &Step{To: to, Scratch: -1, FallThrough: a.next, Repeat: repeated(&a.in)}
	switch a.kind {
	case kPlain, kStop:
		s.Code = append([]byte(nil), a.raw...)
	case kJmpRel:
		s.Code, s.Taken, s.Branch = []byte{0xeb, 1}, a.target, true // jmp .+1: straight to the marker
	case kCondRel:
		op, ok := shortCond(a)
		if !ok {
			return nil, refuse(Undecodable, &a.in, from)
		}
		s.Code, s.Taken, s.Branch = append(op, 1), a.target, true
	case kCallRel:
		s.Code, s.Taken, s.Branch, s.Call = []byte{0xe8, 1, 0, 0, 0}, a.target, true, true
	case kCallInd, kRIPMem:
		s.Call = a.kind == kCallInd
		if !a.ripMem {
			s.Code = append([]byte(nil), a.raw...)
			break
		}
		if b, ok := nearCopy(a, to); ok {
			s.Code = b
			break
		}
		if a.in.Op == x86asm.LEA {
			e := &emitter{to: to}
			if e.leaAsMove(a) {
				s.Code = e.b
				break
			}
		}
		used, high := regsUsed(&a.in)
		b, r, ok := withScratch(a, used, high)
		if !ok {
			return nil, refuse(NoScratch, &a.in, from)
		}
		s.Code, s.Scratch, s.ScratchValue = b, r, a.target
	}
	if !(&emitter{b: s.Code}).decodes() {
		return nil, refuse(Undecodable, &a.in, from)
	}
	return s, nil
}
