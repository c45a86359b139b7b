#include "textflag.h"
#include "frame_amd64.h"

// Kernel entry and exit. Every way into the kernel builds one Frame (frame.go) on a kernel
// stack and calls kernelEntry(f) with FS pointing at the CPU's kernel TLS, so Go code finds a g whose
// stack bounds are that kernel stack; the way out restores whatever Frame trap left in f —
// the same context, or another thread's after a switch.
//
// Stacks: SYSCALL switches to CPU.kstack by hand (SYSCALL does not switch stacks). Interrupts
// and exceptions arrive on the IST stacks their gates name; commonEntry then moves the entry
// words to the kernel stack before anything can nest (the protocol is in package trap's doc):
// below the interrupted RSP when that lies in this CPU's stack region [CPU.stkLo, CPU.stkHi),
// at the kernel stack's top otherwise. A Go goroutine's small stack never receives a frame.
// An interrupted RSP below CPU.kstkMin means the kernel stack has overflowed (into its reserve
// or its guard page): that entry stays where the CPU delivered it, on its IST stack, and
// kernelEntry reports the overflow.

// syscallEntry is MSR_LSTAR. SYSCALL put the return RIP in RCX and RFLAGS in R11, and SFMASK
// cleared IF, TF, DF and AC. GS base permanently points at this CPU's block.
TEXT ·syscallEntry(SB),NOSPLIT|NOFRAME,$0
	MOVQ SP, CPU_SCRATCH(GS)
	MOVQ CPU_KSTACK(GS), SP
	PUSHQ $SEL_DATA                // SS
	PUSHQ CPU_SCRATCH(GS)          // RSP
	PUSHQ R11                      // RFLAGS
	PUSHQ $SEL_CODE                // CS
	PUSHQ CX                       // RIP
	PUSHQ $0                       // error code
	PUSHQ $VEC_SYSCALL             // vector
	JMP ·saveFrame(SB)             // already at the kernel stack's top

// commonEntry: the vector and error code are on the stack above the hardware frame, on an IST
// stack (or the interrupted stack, for a gate without one). Move the nine entry words (with
// RAX and RBX, saved to have two registers) to where this frame belongs, then save the rest.
// Each IST slot serves vectors that cannot nest inside each other before this move is done
// (idt.DefaultConfig), so no entry can overwrite these words while they are being moved.
TEXT ·commonEntry(SB),NOSPLIT|NOFRAME,$0
	PUSHQ AX
	PUSHQ BX
	MOVQ (8*7)(SP), AX             // the interrupted RSP
	MOVQ CPU_KSTACK(GS), BX        // a thread was interrupted: the kernel stack's top
	CMPQ AX, CPU_STKLO(GS)
	JCS  move
	CMPQ AX, CPU_STKHI(GS)
	JCC  move
	CMPQ AX, CPU_KSTKMIN(GS)
	JCS  stay                      // the kernel stack overflowed: no room to nest
	MOVQ AX, BX                    // kernel code was interrupted: just below its RSP
	ANDQ $~15, BX
move:
	SUBQ $(8*ENTRY_WORDS), BX
	// Copy upwards: the destination is below the source or is the source itself.
	MOVQ (8*0)(SP), AX
	MOVQ AX, (8*0)(BX)
	MOVQ (8*1)(SP), AX
	MOVQ AX, (8*1)(BX)
	MOVQ (8*2)(SP), AX
	MOVQ AX, (8*2)(BX)
	MOVQ (8*3)(SP), AX
	MOVQ AX, (8*3)(BX)
	MOVQ (8*4)(SP), AX
	MOVQ AX, (8*4)(BX)
	MOVQ (8*5)(SP), AX
	MOVQ AX, (8*5)(BX)
	MOVQ (8*6)(SP), AX
	MOVQ AX, (8*6)(BX)
	MOVQ (8*7)(SP), AX
	MOVQ AX, (8*7)(BX)
	MOVQ (8*8)(SP), AX
	MOVQ AX, (8*8)(BX)
	MOVQ BX, SP
stay:
	POPQ BX
	POPQ AX
	JMP ·saveFrame(SB)

// saveFrame: the vector and error code are on the stack above the hardware frame, where the
// Frame is to be built.
TEXT ·saveFrame(SB),NOSPLIT|NOFRAME,$0
	PUSHQ AX
	PUSHQ BX
	PUSHQ CX
	PUSHQ DX
	PUSHQ SI
	PUSHQ DI
	PUSHQ BP
	PUSHQ R8
	PUSHQ R9
	PUSHQ R10
	PUSHQ R11
	PUSHQ R12
	PUSHQ R13
	PUSHQ R14
	PUSHQ R15
	SUBQ $FRAME_LOW, SP
	FXSAVE64 (SP)
	MOVL $0xc0000100, CX           // FS_BASE
	RDMSR
	MOVL AX, FRAME_FSBASE(SP)
	MOVL DX, (FRAME_FSBASE+4)(SP)
	MOVQ CR2, AX
	MOVQ AX, FRAME_CR2(SP)
	MOVQ CPU_KTLS(GS), AX
	MOVQ AX, DX
	SHRQ $32, DX
	WRMSR
	MOVQ SP, BX
	SUBQ $16, SP
	MOVQ BX, 0(SP)
	CALL ·kernelEntry(SB)
	ADDQ $16, SP
	JMP ·frameReturn(SB)

// frameReturn: SP points at a Frame; restore it and IRETQ. IRETQ (not SYSRET, which always
// drops to ring 3) also restores RSP and RFLAGS, so it serves SYSCALL returns too.
TEXT ·frameReturn(SB),NOSPLIT|NOFRAME,$0
	MOVL FRAME_FSBASE(SP), AX
	MOVL (FRAME_FSBASE+4)(SP), DX
	MOVL $0xc0000100, CX
	WRMSR
	FXRSTOR64 (SP)
	ADDQ $FRAME_LOW, SP
	POPQ R15
	POPQ R14
	POPQ R13
	POPQ R12
	POPQ R11
	POPQ R10
	POPQ R9
	POPQ R8
	POPQ BP
	POPQ DI
	POPQ SI
	POPQ DX
	POPQ CX
	POPQ BX
	POPQ AX
	ADDQ $16, SP
	IRETQ
