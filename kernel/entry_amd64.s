#include "textflag.h"
#include "frame_amd64.h"

// Kernel entry and exit. Every way into the kernel builds one Frame (frame.go) on a kernel
// stack and calls trap(f) with FS pointing at the CPU's kernel TLS, so Go code finds a g whose
// stack bounds are that kernel stack; the way out restores whatever Frame trap left in f —
// the same context, or another thread's after a switch.
//
// Stacks: SYSCALL switches to CPU.kstack by hand (SYSCALL does not switch stacks); interrupts
// and exceptions arrive on IST stacks chosen by their IDT gates, so a Go goroutine's small
// stack never receives a hardware frame.

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
	JMP ·commonEntry(SB)

// commonEntry: the vector and error code are on the stack above the hardware frame.
TEXT ·commonEntry(SB),NOSPLIT|NOFRAME,$0
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
	MOVQ CPU_KTLS(GS), AX
	MOVQ AX, DX
	SHRQ $32, DX
	WRMSR
	MOVQ SP, BX
	SUBQ $16, SP
	MOVQ BX, 0(SP)
	CALL ·trap(SB)
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
