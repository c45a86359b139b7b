package live

import (
	"sync/atomic"
	"unsafe"

	"tracebed/amd64"
	"tracebed/fbt"
	"tracebed/kernel"
	"tracebed/trap"
)

// onBreakpoint is the #BP handler (see the package comment for the protocol).
//
// Trap context.
func onBreakpoint(f *trap.Frame) bool {
	fl := amd64.DisableInterrupts() // a trap gate leaves IF on: keep SyncCPUs waiting for us
	handled := breakpoint(f)
	amd64.RestoreInterrupts(fl)
	if !handled {
		cpus[kernel.CurrentCPU()].PassedBP++
		return prevBP != nil && prevBP(f)
	}
	return true
}

// Trap context, interrupts off.
func breakpoint(f *trap.Frame) bool {
	cpu := kernel.CurrentCPU()
	c := &cpus[cpu]
	c.bpSeq++
	addr := uintptr(f.RIP - 1)
	if c.stepping != 0 && addr >= stepExec(cpu)+uintptr(len(site(c.stepSite).step.Code)) && addr < stepExec(cpu)+slotSize {
		// A guard after the step copy: the step's #DB never came. Finish as it would have.
		c.MissedDB++
		finishStep(f, c, cpu, uint64(addr))
		return true
	}
	id := lookup(addr)
	if id < 0 {
		return freedSlotHit(f, c, addr)
	}
	s := site(id)
	if atomic.LoadUint32(&s.enabled) == 0 {
		// Disabled between the INT3 and this handler (the original byte is back), or being
		// enabled again right now (its INT3 written after its flag, which this CPU will see
		// next time): either way re-executing at the site is right.
		c.Raced++
		return raced(f, c, s, addr)
	}
	atomic.AddUint64(&counts[cpu][id], 1)
	c.Hits++
	switch {
	case c.inAction != 0:
		c.NestedDropped++
	case !cfg.Unsafe && f.RFLAGS&rflagsIF == 0:
		c.SafeSkipped++
		c.lastSafe = id
		c.lastSafeDepth = trap.Depth(cpu)
		bp := f.RBP
		for i := range c.lastSafeStack {
			ret, f1 := trap.SafeLoad64(uintptr(bp + 8))
			next, f2 := trap.SafeLoad64(uintptr(bp))
			if f1.Failed() || f2.Failed() {
				c.lastSafeStack[i] = 0
				break
			}
			c.lastSafeStack[i], bp = ret, next
		}
	default:
		c.inAction = 1
		action(f, c, s, id, cpu)
		c.inAction = 0
	}
	how := s.how
	if f.RFLAGS&rflagsTF != 0 && s.step != nil && c.stepping == 0 {
		how = howStep // the code is being single-stepped: only a step gives its #DB where it expects
	}
	if how == howEmulate {
		if !(s.emu.WritesStack() && kernel.OnCPUStacks(f.RSP)) && s.emu.Run(f) {
			c.Emulated++
			return true
		}
		c.EmuFallback++
		how = howStep
		if s.boost != 0 {
			how = howBoost
		}
	}
	if how == howStep && c.stepping != 0 {
		how = howBoost // a probe hit while this CPU's step slot is in use (a #DB handler's)
	}
	switch how {
	case howBoost:
		if s.boost == 0 {
			return false // nothing can run it: reported as a fatal #BP
		}
		c.Boosted++
		f.RIP = uint64(s.boost)
	case howStep:
		startStep(f, c, s, id, cpu)
	default:
		return false // no way planned: reported as a fatal #BP rather than run from mid-instruction
	}
	return true
}

// staleLimit is how many times in a row a CPU may take a disabled site's INT3 again, its byte
// stored anew each time, before the #BP is reported as fatal rather than left to loop.
const staleLimit = 1000

// raced re-executes the instruction at addr, a site found disabled. Memory holds the original
// byte again (a site is marked disabled only after it is back), and the byte is stored again
// before the re-execution: QEMU's TCG can keep a translation of the INT3 for good after the
// restore (kernel.RefetchText), and did, in CI and here — a vCPU re-executing the site trapped
// again on every try, or, with two such sites in one translation, took them in turn on every
// call — and the store drops it. (On hardware the store changes nothing, and raced hits are
// rare: the INT3 must have been fetched before the restore.) A hit is counted stale when the
// INT3 was certainly fetched after the restore: this CPU has just re-executed the site (the
// IRET serialises), or the disable that restored it has completed its synchronisation. A site
// whose INT3 keeps coming back in a row is a fatal #BP, never a silent livelock. No other CPU
// stores to the byte meanwhile: an enable marks the site before it synchronises and only then
// writes the INT3, and the synchronisation waits for this handler (interrupts off, and no lock
// wait — which would run cross-CPU calls — between reading the site and the store).
//
// Trap context, interrupts off.
func raced(f *trap.Frame, c *cpuState, s *Site, addr uintptr) bool {
	// The very next #BP on this CPU at the site it has just re-executed (after an IRET, which
	// serialises): a stale fetch.
	again := c.racedAt == addr && c.racedSeq+1 == c.bpSeq
	c.racedAt, c.racedSeq = addr, c.bpSeq
	if !again {
		c.racedRun = 0
	} else if c.racedRun++; c.racedRun > staleLimit {
		return false
	}
	if *(*byte)(unsafe.Pointer(addr)) != opcodeINT3 {
		if again || atomic.LoadUint64(&s.offGen) <= disablesDone.Load() {
			c.StaleINT3++
		}
		kernel.RefetchText(addr)
	}
	f.RIP = uint64(addr)
	return true
}

// action is the probe's work: a record in this CPU's ring (the newest few, for tests) and in
// its active double buffer (for the consumer, buffers.go) and, when asked, a string copied
// from the first argument.
//
// Trap context, interrupts off.
func action(f *trap.Frame, c *cpuState, s *Site, id int32, cpu int) {
	c.Actions++
	r := Record{Site: id, CPU: int32(cpu), TSC: amd64.RDTSC(), RAX: f.RAX, RBX: f.RBX, RCX: f.RCX, RDI: f.RDI}
	c.ring[c.ringHead%ringSize] = r
	c.ringHead++
	offer(cpu, r)
	if s.copyin {
		n, flt := trap.CopyInString(c.str[:], uintptr(f.RAX))
		c.strLen = n
		if flt.Failed() {
			c.CopyFault++
		} else {
			c.CopyOK++
		}
	}
	if h := nestHook; h != nil {
		h()
	}
}

// startStep puts the step copy of s in this CPU's slot, followed by two INT3 guards (the
// fall-through and the branch marker), and resumes there with TF set and IF clear.
//
// Trap context, interrupts off.
func startStep(f *trap.Frame, c *cpuState, s *Site, id int32, cpu int) {
	st := s.step
	w := unsafe.Slice((*byte)(unsafe.Pointer(stepWrite(cpu))), slotSize)
	n := copy(w, st.Code)
	w[n], w[n+1] = opcodeINT3, opcodeINT3
	if s.stepRel >= 0 { // rebase the rel32 from CPU 0's slot to this one
		p := (*int32)(unsafe.Pointer(&w[s.stepRel]))
		*p -= int32(stepExec(cpu) - stepExec(0))
	}
	c.stepSite = id
	c.savedFlags = f.RFLAGS & (rflagsIF | rflagsTF)
	if st.Scratch >= 0 {
		r := fbt.Reg(f, st.Scratch)
		c.scratchOld = *r
		*r = st.ScratchValue
	}
	c.drop++
	tf := uint64(rflagsTF)
	if cfg.DropDB != 0 && c.drop%cfg.DropDB == 0 && !s.leaves {
		tf = 0 // fault injection: the #DB will not come; the guard must catch it
	}
	f.RFLAGS = f.RFLAGS&^rflagsIF | tf
	f.RIP = uint64(stepExec(cpu))
	c.stepping = 1
	c.Steps++
}

// finishStep completes the step in flight on this CPU given the RIP its #DB reported (or the
// guard's address): scratch register, a call's return address, RIP, IF and TF as they were.
// A REP string instruction that is not finished keeps stepping.
//
// Trap context, interrupts off.
func finishStep(f *trap.Frame, c *cpuState, cpu int, rip uint64) {
	s := site(c.stepSite)
	st := s.step
	slot := uint64(stepExec(cpu))
	base := uint64(stepExec(0)) // the slot the Step was planned for
	inSlot := rip >= slot && rip < slot+slotSize
	r := rip
	if inSlot {
		r = rip - slot + base
	}
	resume, done := st.Resume(r)
	if !done {
		f.RIP = rip
		f.RFLAGS |= rflagsTF
		return
	}
	if inSlot && resume != r {
		f.RIP = resume
	} else {
		f.RIP = rip // a ret or indirect branch went where it goes (or a trap stayed in the slot)
	}
	if st.Scratch >= 0 {
		*fbt.Reg(f, st.Scratch) = c.scratchOld
	}
	if st.Call {
		if v, flt := trap.SafeLoad64(uintptr(f.RSP)); !flt.Failed() && v == slot+uint64(len(st.Code)) {
			trap.SafeStore64(uintptr(f.RSP), st.ReturnAddress(base+uint64(len(st.Code))))
		}
	}
	f.RFLAGS = f.RFLAGS&^(rflagsIF|rflagsTF) | c.savedFlags
	c.stepping = 0
}

// onDebug is the #DB handler: the end of a step, or someone else's #DB.
//
// Trap context.
func onDebug(f *trap.Frame) bool {
	cpu := kernel.CurrentCPU()
	c := &cpus[cpu]
	if c.stepping == 0 {
		c.PassedDB++
		return prevDB != nil && prevDB(f)
	}
	dr6 := amd64.ReadDR6()
	if dr6&dr6BS == 0 {
		c.PassedDB++ // a hardware breakpoint, not our step
		return prevDB != nil && prevDB(f)
	}
	outerTF := c.savedFlags&rflagsTF != 0
	finishStep(f, c, cpu, f.RIP)
	if c.stepping != 0 {
		amd64.WriteDR6(amd64.DR6_Reset)
		return true // a REP iteration
	}
	if outerTF || dr6&dr6Bn != 0 {
		// The interrupted code was being single-stepped (or a data breakpoint matched during
		// the step): its own #DB, for the displaced instruction, with DR6 as the CPU left it.
		c.PassedDB++
		return prevDB != nil && prevDB(f)
	}
	amd64.WriteDR6(amd64.DR6_Reset)
	return true
}
