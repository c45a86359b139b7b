package kernel

import "encoding/binary"

// The AP trampoline. A started AP begins in real mode at CS:IP = (page<<8):0000 of the SIPI's
// page (SDM Vol. 3A, 8.4.4). The Go assembler cannot emit 16-bit code, so the trampoline is
// assembled here, byte by byte, into the page at trampolineBase (below 1 MiB, which the frame
// allocator never hands out). A host test decodes every instruction back with x86asm.
//
// Path: real mode → LGDT (the trampoline's own GDT) → CR0.PE → far jump into a 32-bit code
// segment → CR4.PAE|OSFXSR|OSXMMEXCPT, CR3 = the kernel's page tables, EFER.LME|SCE|NXE →
// CR0.PG|WP|MP → far jump into the 64-bit code segment → RSP, RDI and the jump target from
// the data block → apEntry (boot_amd64.s). The same control bits as the boot CPU's
// (pvhEntry), the same order as the SDM's (9.8.5).

const (
	trampolineBase = 0x8000 // SIPI vector 0x08
	stuckBase      = 0x9000 // SIPI vector 0x09: a page that halts forever (ap_stuck=N)

	// Data block offsets within the trampoline page.
	trGDT   = 0x100 // 4 descriptors
	trGDTR  = 0x120 // limit:16, base:32
	trCR3   = 0x128
	trStack = 0x130
	trCPU   = 0x138
	trEntry = 0x140
	trBytes = 0x148

	selCode32  = 0x18 // the trampoline GDT's 32-bit code segment
	descCode32 = 0x00cf9a000000ffff
)

// trampolineCode assembles the trampoline for a page at base into b (at least trBytes long)
// and returns the offsets where the 32-bit and the 64-bit code start and where the code ends.
func trampolineCode(b []byte, base uint32) (pm32, lm64, end int) {
	le := binary.LittleEndian
	n := 0
	emit := func(bs ...byte) {
		n += copy(b[n:], bs)
	}
	u16 := func(v uint16) { le.PutUint16(b[n:], v); n += 2 }
	u32 := func(v uint32) { le.PutUint32(b[n:], v); n += 4 }

	// 16-bit real mode.
	emit(0xfa)                   // cli
	emit(0xfc)                   // cld
	emit(0x8c, 0xc8)             // mov %cs, %ax
	emit(0x8e, 0xd8)             // mov %ax, %ds: data at DS:offset
	emit(0x66, 0x0f, 0x01, 0x16) // lgdtl trGDTR (32-bit base)
	u16(trGDTR)
	emit(0x0f, 0x20, 0xc0)       // mov %cr0, %eax
	emit(0x66, 0x83, 0xc8, 0x01) // or $1, %eax (PE)
	emit(0x0f, 0x22, 0xc0)       // mov %eax, %cr0
	emit(0x66, 0xea)             // ljmpl $selCode32, $pm32
	pm32Fix := n
	u32(0)
	u16(selCode32)

	// 32-bit protected mode, paging off.
	pm32 = n
	le.PutUint32(b[pm32Fix:], base+uint32(pm32))
	emit(0xb8) // mov $selData, %eax
	u32(selData)
	emit(0x8e, 0xd8)       // mov %eax, %ds
	emit(0x8e, 0xc0)       // mov %eax, %es
	emit(0x8e, 0xd0)       // mov %eax, %ss
	emit(0x0f, 0x20, 0xe0) // mov %cr4, %eax
	emit(0x0d)             // or $(PAE|OSFXSR|OSXMMEXCPT), %eax
	u32(0x620)
	emit(0x0f, 0x22, 0xe0) // mov %eax, %cr4
	emit(0xa1)             // mov trCR3, %eax
	u32(base + trCR3)
	emit(0x0f, 0x22, 0xd8) // mov %eax, %cr3
	emit(0xb9)             // mov $EFER, %ecx
	u32(0xc0000080)
	emit(0x0f, 0x32) // rdmsr
	emit(0x0d)       // or $(SCE|LME|NXE), %eax
	u32(0x901)
	emit(0x0f, 0x30)       // wrmsr
	emit(0x0f, 0x20, 0xc0) // mov %cr0, %eax
	emit(0x0d)             // or $(PG|WP|MP), %eax
	u32(0x80010002)
	emit(0x25) // and $~EM, %eax
	u32(^uint32(4))
	emit(0x0f, 0x22, 0xc0) // mov %eax, %cr0: long mode active
	emit(0xea)             // ljmp $selCode, $lm64
	lm64Fix := n
	u32(0)
	u16(selCode)

	// 64-bit mode.
	lm64 = n
	le.PutUint32(b[lm64Fix:], base+uint32(lm64))
	emit(0x48, 0x8b, 0x24, 0x25) // mov trStack, %rsp
	u32(base + trStack)
	emit(0x48, 0x8b, 0x3c, 0x25) // mov trCPU, %rdi
	u32(base + trCPU)
	emit(0x48, 0x8b, 0x04, 0x25) // mov trEntry, %rax
	u32(base + trEntry)
	emit(0xff, 0xe0) // jmp *%rax
	end = n          // the host test checks end <= trGDT

	// Data: GDT (null, 64-bit code, data, 32-bit code), GDTR.
	le.PutUint64(b[trGDT+8:], descCode64)
	le.PutUint64(b[trGDT+16:], descData)
	le.PutUint64(b[trGDT+24:], descCode32)
	le.PutUint16(b[trGDTR:], 4*8-1)
	le.PutUint32(b[trGDTR+2:], base+trGDT)
	return pm32, lm64, end
}

// trampolineData fills the per-AP words the trampoline reads.
func trampolineData(b []byte, cr3 uint32, stack, cpu, entry uint64) {
	le := binary.LittleEndian
	le.PutUint32(b[trCR3:], cr3)
	le.PutUint64(b[trStack:], stack)
	le.PutUint64(b[trCPU:], cpu)
	le.PutUint64(b[trEntry:], entry)
}

// stuckCode is what a CPU told to start at stuckBase runs: cli; hlt; jmp back to the hlt.
var stuckCode = [...]byte{0xfa, 0xf4, 0xeb, 0xfd}
