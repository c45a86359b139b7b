#include "textflag.h"

TEXT ·CPUID(SB),NOSPLIT,$0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

TEXT ·RDMSR(SB),NOSPLIT,$0-16
	MOVL msr+0(FP), CX
	RDMSR
	SHLQ $32, DX
	ORQ DX, AX
	MOVQ AX, ret+8(FP)
	RET

TEXT ·WRMSR(SB),NOSPLIT,$0-16
	MOVL msr+0(FP), CX
	MOVQ val+8(FP), AX
	MOVQ AX, DX
	SHRQ $32, DX
	WRMSR
	RET

TEXT ·RDTSC(SB),NOSPLIT,$0-8
	RDTSC
	SHLQ $32, DX
	ORQ DX, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·In8(SB),NOSPLIT,$0-9
	MOVW port+0(FP), DX
	INB
	MOVB AX, ret+8(FP)
	RET

TEXT ·Out8(SB),NOSPLIT,$0-3
	MOVW port+0(FP), DX
	MOVB val+2(FP), AX
	OUTB
	RET

TEXT ·In32(SB),NOSPLIT,$0-12
	MOVW port+0(FP), DX
	INL
	MOVL AX, ret+8(FP)
	RET

TEXT ·Out32(SB),NOSPLIT,$0-8
	MOVW port+0(FP), DX
	MOVL val+4(FP), AX
	OUTL
	RET

TEXT ·ReadCR0(SB),NOSPLIT,$0-8
	MOVQ CR0, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·ReadCR2(SB),NOSPLIT,$0-8
	MOVQ CR2, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·ReadCR3(SB),NOSPLIT,$0-8
	MOVQ CR3, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·ReadCR4(SB),NOSPLIT,$0-8
	MOVQ CR4, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·WriteCR3(SB),NOSPLIT,$0-8
	MOVQ v+0(FP), AX
	MOVQ AX, CR3
	RET

TEXT ·WriteCR4(SB),NOSPLIT,$0-8
	MOVQ v+0(FP), AX
	MOVQ AX, CR4
	RET

TEXT ·Invlpg(SB),NOSPLIT,$0-8
	MOVQ va+0(FP), AX
	INVLPG (AX)
	RET

TEXT ·LGDT(SB),NOSPLIT,$0-8
	MOVQ p+0(FP), AX
	LGDT (AX)
	RET

TEXT ·LIDT(SB),NOSPLIT,$0-8
	MOVQ p+0(FP), AX
	LIDT (AX)
	RET

TEXT ·LTR(SB),NOSPLIT,$0-2
	MOVW sel+0(FP), AX
	LTR AX
	RET

// ReloadSegments reloads CS with a far return and the data segment registers directly.
TEXT ·ReloadSegments(SB),NOSPLIT|NOFRAME,$0-4
	MOVWQZX data+2(FP), AX
	MOVW AX, DS
	MOVW AX, ES
	MOVW AX, SS
	MOVWQZX code+0(FP), AX
	// Build [return RIP][CS] below the return address and far-return through it.
	SUBQ $8, SP
	MOVQ 8(SP), BX
	MOVQ BX, 0(SP)
	MOVQ AX, 8(SP)
	BYTE $0x48; BYTE $0xcb   // lretq

TEXT ·DisableInterrupts(SB),NOSPLIT,$0-8
	PUSHFQ
	POPQ AX
	CLI
	MOVQ AX, ret+0(FP)
	RET

TEXT ·RestoreInterrupts(SB),NOSPLIT,$0-8
	MOVQ flags+0(FP), AX
	BTQ $9, AX
	JCC off
	STI
	RET
off:
	CLI
	RET

TEXT ·Flags(SB),NOSPLIT,$0-8
	PUSHFQ
	POPQ AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·Halt(SB),NOSPLIT,$0
	STI
	HLT
	CLI
	RET

TEXT ·Stop(SB),NOSPLIT,$0
	CLI
stop:
	HLT
	JMP stop

TEXT ·Pause(SB),NOSPLIT,$0
	PAUSE
	RET

TEXT ·Xchg32(SB),NOSPLIT,$0-20
	MOVQ addr+0(FP), BX
	MOVL v+8(FP), AX
	XCHGL AX, 0(BX)
	MOVL AX, ret+16(FP)
	RET

TEXT ·ReadDR6(SB),NOSPLIT,$0-8
	MOVQ DR6, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·WriteDR6(SB),NOSPLIT,$0-8
	MOVQ v+0(FP), AX
	MOVQ AX, DR6
	RET

TEXT ·ReadDR7(SB),NOSPLIT,$0-8
	MOVQ DR7, AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·WriteDR7(SB),NOSPLIT,$0-8
	MOVQ v+0(FP), AX
	MOVQ AX, DR7
	RET

// WriteDR0to3 loads the four breakpoint address registers.
TEXT ·WriteDR0to3(SB),NOSPLIT,$0-32
	MOVQ a0+0(FP), AX
	MOVQ AX, DR0
	MOVQ a1+8(FP), AX
	BYTE $0x0f; BYTE $0x23; BYTE $0xc8   // MOVQ AX, DR1 (not in the Go assembler)
	MOVQ a2+16(FP), AX
	BYTE $0x0f; BYTE $0x23; BYTE $0xd0   // MOVQ AX, DR2 (not in the Go assembler)
	MOVQ a3+24(FP), AX
	BYTE $0x0f; BYTE $0x23; BYTE $0xd8   // MOVQ AX, DR3 (not in the Go assembler)
	RET

TEXT ·WriteCR2(SB),NOSPLIT,$0-8
	MOVQ v+0(FP), AX
	MOVQ AX, CR2
	RET

// func CallerFrame() (pc, bp uint64): frameless, so BP is still the caller's frame pointer and
// 0(SP) a return address inside the caller.
TEXT ·CallerFrame(SB),NOSPLIT,$0-16
	MOVQ 0(SP), AX
	MOVQ AX, pc+0(FP)
	MOVQ BP, bp+8(FP)
	RET
