#include "textflag.h"
#include "frame_amd64.h"

// PVH boot: QEMU -kernel (like Xen PVH, Firecracker and Cloud Hypervisor) finds the entry in the
// ELF note of type 18, XEN_ELFNOTE_PHYS32_ENTRY (package pvh writes it), and enters pvhEntry in
// 32-bit protected mode with
// paging off and EBX = physical address of hvm_start_info. Everything up to the far return
// into entry64 executes in 32-bit mode, so it uses only encodings that mean the same in 32-
// and 64-bit mode (no REX prefix, no RIP-relative operands) and BYTE for the rest; check with
// `objdump -d -M i386`. Symbol addresses are found position-independently: a CALL/POP gives
// the current address, and the displacement is read out of a never-executed 64-bit LEA whose
// rel32 the linker filled in (LEA_TEMPLATE below).

// bootMem, after rounding up to a page: 0 PML4, 1 PDPT, 2..5 four PDs identity-mapping 4 GiB
// with 2 MiB pages, 6 GDT + GDTR, 7 the 32-bit stack. One spare page for the rounding.
GLOBL ·bootMem(SB), NOPTR, $(9*4096)

// Leaves in reg the address of sym. Clobbers AX. 10 bytes from the POP to the template's end.
#define LEA_TEMPLATE(sym, reg, lea) \
	BYTE $0xe8; LONG $0; \
	BYTE $0x58; \
	BYTE $0xeb; BYTE $0x07; \
	lea sym, reg; \
	MOVL 6(AX), reg; \
	ADDL AX, reg; \
	ADDL $10, reg

TEXT ·pvhEntry(SB),NOSPLIT|NOFRAME,$0
	CLI
	CLD
	MOVL BX, SI                  // SI = hvm_start_info, carried into 64-bit mode
	LEA_TEMPLATE(·bootMem(SB), DI, LEAQ)
	ADDL $4095, DI
	ANDL $~4095, DI

	// Zero the 8 pages.
	MOVL DI, BX
	XORL AX, AX
	MOVL $(8*1024), CX
	BYTE $0xf3; BYTE $0xab       // rep stosl
	MOVL BX, DI

	// PML4[0] -> PDPT; PDPT[0..3] -> PD0..PD3 (present, writable).
	LEAL (4096+3)(DI), AX
	MOVL AX, 0(DI)
	LEAL (8192+3)(DI), AX
	MOVL AX, 4096(DI)
	ADDL $4096, AX
	MOVL AX, 4104(DI)
	ADDL $4096, AX
	MOVL AX, 4112(DI)
	ADDL $4096, AX
	MOVL AX, 4120(DI)

	// 2048 PD entries: 2 MiB pages, present|writable|PS.
	LEAL 8192(DI), BX
	MOVL $0x83, AX
	MOVL $2048, CX
ptloop:
	MOVL AX, 0(BX)
	ADDL $0x200000, AX
	ADDL $8, BX
	DECL CX
	JNZ ptloop

	// GDT: null, 64-bit code (0x08), data (0x10); GDTR right after it.
	LEAL 24576(DI), BX
	MOVL $0x0000ffff, 8(BX)
	MOVL $0x00af9a00, 12(BX)
	MOVL $0x0000ffff, 16(BX)
	MOVL $0x00cf9200, 20(BX)
	MOVW $23, 32(BX)
	MOVL BX, 34(BX)
	BYTE $0x0f; BYTE $0x01; BYTE $0x53; BYTE $0x20   // lgdt 32(%ebx)

	// CR4: PAE | OSFXSR | OSXMMEXCPT (SDM Vol. 3A, 2.5). OSXSAVE stays clear on purpose:
	// the runtime then uses SSE only, and FXSAVE covers all the state it touches.
	BYTE $0x0f; BYTE $0x20; BYTE $0xe0   // mov %cr4, %eax
	ORL $0x620, AX
	BYTE $0x0f; BYTE $0x22; BYTE $0xe0   // mov %eax, %cr4
	MOVL DI, AX
	BYTE $0x0f; BYTE $0x22; BYTE $0xd8   // mov %eax, %cr3
	// EFER: SCE | LME | NXE.
	MOVL $0xc0000080, CX
	RDMSR
	ORL $0x901, AX
	WRMSR
	// CR0: PG | WP | MP, clear EM.
	BYTE $0x0f; BYTE $0x20; BYTE $0xc0   // mov %cr0, %eax
	ORL $0x80010002, AX
	ANDL $~4, AX
	BYTE $0x0f; BYTE $0x22; BYTE $0xc0   // mov %eax, %cr0

	// Compatibility mode now; far-return into 64-bit code.
	LEAL 32768(DI), SP
	PUSHQ $SEL_CODE                      // 6a 08: push imm8 in both modes
	LEA_TEMPLATE(·entry64(SB), CX, LEAQ)
	BYTE $0x51                           // push %ecx
	BYTE $0xcb                           // lret

TEXT ·entry64(SB),NOSPLIT|NOFRAME,$0
	MOVL $SEL_DATA, AX
	MOVW AX, DS
	MOVW AX, ES
	MOVW AX, SS
	XORL AX, AX
	MOVW AX, FS
	MOVW AX, GS
	MOVL SI, SI                          // zero-extend the start_info address
	LEAQ ·bootStack+65536(SB), SP
	// The boot CPU's kernel g: stack bounds only (kernel/percpu.go explains why).
	LEAQ ·bootStack(SB), AX
	MOVQ AX, ·bootG+0(SB)
	LEAQ 65536(AX), BX
	MOVQ BX, ·bootG+8(SB)
	ADDQ $4096, AX
	MOVQ AX, ·bootG+16(SB)
	MOVQ AX, ·bootG+24(SB)
	LEAQ ·bootG(SB), AX
	MOVQ AX, ·bootTLS+0(SB)
	LEAQ ·bootTLS+8(SB), AX
	MOVQ AX, DX
	SHRQ $32, DX
	MOVL $0xc0000100, CX                 // FS_BASE: g at FS:-8
	WRMSR
	SUBQ $16, SP
	MOVQ SI, 0(SP)
	CALL ·kmain(SB)
halt:
	HLT
	JMP halt

// kernelEnd returns the first address past the kernel image (bss included).
TEXT ·kernelEnd(SB),NOSPLIT,$0-8
	LEAQ runtime·end(SB), AX
	MOVQ AX, ret+0(FP)
	RET

// kernelStart returns the lowest address of the kernel image.
TEXT ·kernelStart(SB),NOSPLIT,$0-8
	LEAQ runtime·text(SB), AX
	MOVQ AX, ret+0(FP)
	RET

// enterFrame loads the register state in f and resumes it: the way into a thread for the first
// time, and the tail of every kernel entry.
TEXT ·enterFrame(SB),NOSPLIT|NOFRAME,$0-8
	MOVQ f+0(FP), SP
	JMP ·frameReturn(SB)

// apEntry is where the AP trampoline (trampoline.go) jumps in 64-bit mode, with RSP on the
// AP's kernel stack below its Frame and RDI = its CPU block. It points FS at the CPU's kernel
// TLS (the g every Go function reads) and GS at the block, then calls apMain, which never
// returns.
TEXT ·apEntry(SB),NOSPLIT|NOFRAME,$0
	XORL AX, AX
	MOVW AX, FS
	MOVW AX, GS
	MOVQ DI, BX
	MOVQ CPU_KTLS(BX), AX
	MOVQ AX, DX
	SHRQ $32, DX
	MOVL $0xc0000100, CX                 // FS_BASE
	WRMSR
	MOVQ BX, AX
	MOVQ BX, DX
	SHRQ $32, DX
	MOVL $0xc0000101, CX                 // GS_BASE
	WRMSR
	SUBQ $16, SP
	MOVQ BX, 0(SP)
	CALL ·apMain(SB)
aphalt:
	HLT
	JMP aphalt

// kernelTextEnd returns the first address past the kernel's text.
TEXT ·kernelTextEnd(SB),NOSPLIT,$0-8
	LEAQ runtime·etext(SB), AX
	MOVQ AX, ret+0(FP)
	RET

// pclntab returns the bounds of the Go pclntab (the symbol table the runtime reads).
TEXT ·pclntab(SB),NOSPLIT,$0-16
	LEAQ runtime·pclntab(SB), AX
	MOVQ AX, start+0(FP)
	LEAQ runtime·epclntab(SB), AX
	MOVQ AX, end+8(FP)
	RET

// kernelRodata returns the start of the kernel's read-only data segment (.rodata onwards).
TEXT ·kernelRodata(SB),NOSPLIT,$0-8
	LEAQ runtime·rodata(SB), AX
	MOVQ AX, ret+0(FP)
	RET

// kernelNoptrdata returns the start of .noptrdata, in the first page of the writable segment.
TEXT ·kernelNoptrdata(SB),NOSPLIT,$0-8
	LEAQ runtime·noptrdata(SB), AX
	MOVQ AX, ret+0(FP)
	RET
