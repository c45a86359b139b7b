#include "textflag.h"

// Code the traps suite traps in. Each routine is a frameless leaf; the suite finds the
// addresses it expects in #DB/#BP/#PF/#GP frames by decoding these bytes (x86asm), so the
// routines only promise the order of their instructions, described beside each. Sequences
// follow kvm-unit-tests x86/debug.c. BP, R14 and R15 are left alone (Go's frame pointer, g).

// int3Site: INT3 (0xcc: the one-byte form; the assembler's INT $3 is 0xcd 0x03), RET.
TEXT ·int3Site(SB),NOSPLIT|NOFRAME,$0-0
	BYTE $0xcc
	RET

// icebpSite: ICEBP (INT1, 0xf1), RET.
TEXT ·icebpSite(SB),NOSPLIT|NOFRAME,$0-0
	BYTE $0xf1
	RET

// stepBasic: set TF with POPFQ; the three instructions after the next one (AND, PUSH, POPFQ)
// each end in a single-step #DB. The POPFQ that clears TF still traps: TF was set when it began.
TEXT ·stepBasic(SB),NOSPLIT|NOFRAME,$0-0
	PUSHFQ
	POPQ AX
	ORQ $0x100, AX
	PUSHQ AX
	POPFQ
	ANDQ $~0x100, AX
	PUSHQ AX
	POPFQ
	RET

// stepEmulated: as stepBasic, with instructions a hypervisor emulates in between: CPUID and
// port I/O to the POST port 0x80. Eight #DBs: AND, MOVL, CPUID, MOVL, IN, OUT, PUSH, POPFQ.
TEXT ·stepEmulated(SB),NOSPLIT|NOFRAME,$0-0
	PUSHFQ
	POPQ R8
	ORQ $0x100, R8
	PUSHQ R8
	POPFQ
	ANDQ $~0x100, R8
	MOVL $0, AX
	CPUID
	MOVL $0x80, DX
	BYTE $0xec // IN AL, DX
	BYTE $0xee // OUT DX, AL
	PUSHQ R8
	POPFQ
	RET

// stepSTI: with IF clear, set TF, then STI. STI blocks interrupts for one instruction but not
// the single-step trap: four #DBs, after STI, AND, PUSH and POPFQ. The caller's RFLAGS (IF)
// is restored at the end, after TF is off.
TEXT ·stepSTI(SB),NOSPLIT|NOFRAME,$0-0
	PUSHFQ
	POPQ R9
	CLI
	PUSHFQ
	POPQ R8
	ORQ $0x100, R8
	PUSHQ R8
	POPFQ
	STI
	ANDQ $~0x100, R8
	PUSHQ R8
	POPFQ
	PUSHQ R9
	POPFQ
	RET

// stepMovSS: set TF, then MOV SS: it blocks debug exceptions for one instruction, so the first
// #DB comes after the AND that follows it; three #DBs: AND, PUSH, POPFQ.
TEXT ·stepMovSS(SB),NOSPLIT|NOFRAME,$0-0
	PUSHFQ
	POPQ R8
	ORQ $0x100, R8
	PUSHQ R8
	BYTE $0x8c; BYTE $0xd1 // MOVL SS, CX
	POPFQ
	BYTE $0x8e; BYTE $0xd1 // MOVL CX, SS
	ANDQ $~0x100, R8
	PUSHQ R8
	POPFQ
	RET

// execSite: the target of an execution breakpoint: NOP, NOP, RET.
TEXT ·execSite(SB),NOSPLIT|NOFRAME,$0-0
	NOP
	BYTE $0x90
	RET

// loadSite loads 8 bytes at addr (its second instruction); storeSite stores v there (its
// third). Unlike trap.SafeLoad*, nothing recovers them: the suite's own handlers do.
TEXT ·loadSite(SB),NOSPLIT|NOFRAME,$0-16
	MOVQ addr+0(FP), AX
	MOVQ (AX), AX
	MOVQ AX, ret+8(FP)
	RET

TEXT ·storeSite(SB),NOSPLIT|NOFRAME,$0-16
	MOVQ addr+0(FP), AX
	MOVQ v+8(FP), BX
	MOVQ BX, (AX)
	RET

// regsAcross sets RCX and R11 to c and r11, calls the site at fn (which traps, and whose
// handler resumes after the trapping instruction), and returns RCX and R11 as they came back.
// The site may clobber nothing but AX, BX, DX (loadSite with addr in AX: see below).
TEXT ·regsAcross(SB),NOSPLIT,$0-48
	MOVQ fn+0(FP), DX
	MOVQ addr+8(FP), BX
	MOVQ c+16(FP), CX
	MOVQ r11+24(FP), R11
	CALL DX
	MOVQ CX, rc+32(FP)
	MOVQ R11, rr11+40(FP)
	RET

// trapSites is the address of every routine above, for decoding and comparison.
TEXT ·trapSites(SB),NOSPLIT,$0-8
	MOVQ out+0(FP), DX
	LEAQ ·int3Site(SB), AX
	MOVQ AX, 0(DX)
	LEAQ ·icebpSite(SB), AX
	MOVQ AX, 8(DX)
	LEAQ ·stepBasic(SB), AX
	MOVQ AX, 16(DX)
	LEAQ ·stepEmulated(SB), AX
	MOVQ AX, 24(DX)
	LEAQ ·stepSTI(SB), AX
	MOVQ AX, 32(DX)
	LEAQ ·stepMovSS(SB), AX
	MOVQ AX, 40(DX)
	LEAQ ·execSite(SB), AX
	MOVQ AX, 48(DX)
	LEAQ ·loadSite(SB), AX
	MOVQ AX, 56(DX)
	LEAQ ·storeSite(SB), AX
	MOVQ AX, 64(DX)
	LEAQ ·bxLoadSite(SB), AX
	MOVQ AX, 72(DX)
	RET

// bxLoadSite loads 8 bytes at BX (a site for regsAcross: a #PF or #GP the handler skips).
TEXT ·bxLoadSite(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ (BX), AX
	RET

// nmiWait sets RCX and R11, stores 1 to *ready, and spins until *count differs from old (an
// NMI handler bumped it) or about 2^31 rounds pass; it returns RCX and R11 as they are then.
TEXT ·nmiWait(SB),NOSPLIT,$0-56
	MOVQ ready+0(FP), BX
	MOVQ count+8(FP), DX
	MOVQ old+16(FP), SI
	MOVQ c+24(FP), CX
	MOVQ r11+32(FP), R11
	MOVL $0x80000000, DI
	MOVL $1, (BX)
spin:
	MOVQ (DX), AX
	CMPQ AX, SI
	JNE done
	PAUSE
	DECL DI
	JNE spin
done:
	MOVQ CX, rc+40(FP)
	MOVQ R11, rr11+48(FP)
	RET
