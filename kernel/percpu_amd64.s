#include "textflag.h"

TEXT ·thisCPU(SB),NOSPLIT,$0-8
	MOVQ 0(GS), AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·invlpg(SB),NOSPLIT,$0-8
	MOVQ va+0(FP), AX
	INVLPG (AX)
	RET

TEXT ·stubAddr(SB),NOSPLIT,$0-16
	MOVQ v+0(FP), BX
	LEAQ ·stubTable(SB), AX
	MOVQ (AX)(BX*8), AX
	MOVQ AX, ret+8(FP)
	RET

TEXT ·syscallEntryAddr(SB),NOSPLIT,$0-8
	LEAQ ·syscallEntry(SB), AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·rt0Addr(SB),NOSPLIT,$0-8
	LEAQ _rt0_amd64_linux(SB), AX
	MOVQ AX, ret+0(FP)
	RET

TEXT ·apEntryAddr(SB),NOSPLIT,$0-8
	LEAQ ·apEntry(SB), AX
	MOVQ AX, ret+0(FP)
	RET
