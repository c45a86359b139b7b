#include "textflag.h"

// Fault-safe loads and stores. Each is a leaf with no frame, whose one access through AX is the
// only instruction that can fault; recoverSafeLoad recognises that instruction's address and
// returns from the function on its behalf with the fault written into its results. Layout:
//   func safeLoadN(addr uintptr) (v uint64, vec uint64, faultAddr uintptr)
//   func safeStoreN(addr uintptr, v uint64) (vec uint64, faultAddr uintptr)
// addr at 8(SP), v at 16(SP), vec at 24(SP), faultAddr at 32(SP) at the faulting instruction
// (0(SP) is the return address): the recovery code depends on exactly this layout (it zeroes
// 16(SP), a store's input, which nobody reads after the call).

TEXT ·safeLoad8(SB),NOSPLIT|NOFRAME,$0-32
	MOVQ addr+0(FP), AX
	MOVBQZX (AX), AX
	MOVQ AX, v+8(FP)
	MOVQ $0, vec+16(FP)
	MOVQ $0, faultAddr+24(FP)
	RET

TEXT ·safeLoad16(SB),NOSPLIT|NOFRAME,$0-32
	MOVQ addr+0(FP), AX
	MOVWQZX (AX), AX
	MOVQ AX, v+8(FP)
	MOVQ $0, vec+16(FP)
	MOVQ $0, faultAddr+24(FP)
	RET

TEXT ·safeLoad32(SB),NOSPLIT|NOFRAME,$0-32
	MOVQ addr+0(FP), AX
	MOVL (AX), AX
	MOVQ AX, v+8(FP)
	MOVQ $0, vec+16(FP)
	MOVQ $0, faultAddr+24(FP)
	RET

TEXT ·safeLoad64(SB),NOSPLIT|NOFRAME,$0-32
	MOVQ addr+0(FP), AX
	MOVQ (AX), AX
	MOVQ AX, v+8(FP)
	MOVQ $0, vec+16(FP)
	MOVQ $0, faultAddr+24(FP)
	RET

TEXT ·safeStore8(SB),NOSPLIT|NOFRAME,$0-32
	MOVQ v+8(FP), CX
	MOVQ addr+0(FP), AX
	MOVB CX, (AX)
	MOVQ $0, vec+16(FP)
	MOVQ $0, faultAddr+24(FP)
	RET

TEXT ·safeStore64(SB),NOSPLIT|NOFRAME,$0-32
	MOVQ v+8(FP), CX
	MOVQ addr+0(FP), AX
	MOVQ CX, (AX)
	MOVQ $0, vec+16(FP)
	MOVQ $0, faultAddr+24(FP)
	RET

// safeLoadEntries writes the entry addresses of the four loads and two stores to *out.
TEXT ·safeLoadEntries(SB),NOSPLIT,$0-8
	MOVQ out+0(FP), BX
	LEAQ ·safeLoad8(SB), AX
	MOVQ AX, 0(BX)
	LEAQ ·safeLoad16(SB), AX
	MOVQ AX, 8(BX)
	LEAQ ·safeLoad32(SB), AX
	MOVQ AX, 16(BX)
	LEAQ ·safeLoad64(SB), AX
	MOVQ AX, 24(BX)
	LEAQ ·safeStore8(SB), AX
	MOVQ AX, 32(BX)
	LEAQ ·safeStore64(SB), AX
	MOVQ AX, 40(BX)
	RET
