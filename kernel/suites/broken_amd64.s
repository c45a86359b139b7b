#include "textflag.h"

// pushUntil(limit uintptr): pushes the word 0x5ac0ffee (pushMarker) until RSP is at or below
// limit, then puts RSP back: the way a deep chain of frames overruns a stack. Frameless: it
// runs on whatever stack its caller has, to the end of it if limit says so. (Each push is a
// store below RSP and a move of RSP, as PUSHQ does, which the assembler refuses unbalanced.)
TEXT ·pushUntil(SB),NOSPLIT|NOFRAME,$0-8
	MOVQ limit+0(FP), AX
	MOVQ SP, DX
loop:
	MOVQ $0x5ac0ffee, -8(SP)
	SUBQ $8, SP
	CMPQ SP, AX
	JHI  loop
	MOVQ DX, SP
	RET
