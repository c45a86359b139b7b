// Offsets shared by the assembly entry stubs and kernel/frame.go. A host test
// (frame_test.go) checks every one of them against unsafe.Offsetof.

// Frame: the register save area built on a kernel stack by every entry.
#define FRAME_FX      0
#define FRAME_FSBASE  512
#define FRAME_CR2     520
#define FRAME_R15     528
#define FRAME_RAX     640
#define FRAME_VECTOR  648
#define FRAME_ERR     656
#define FRAME_RIP     664
#define FRAME_SIZE    704
// Bytes below the pushed general registers: FX area + FS base + pad.
#define FRAME_LOW     528

// CPU: the per-CPU block, addressed through the GS base.
#define CPU_SELF      0
#define CPU_KSTACK    8
#define CPU_SCRATCH   16
#define CPU_KTLS      24
#define CPU_STKLO     32
#define CPU_STKHI     40
#define CPU_KSTKMIN   48

// Pseudo-vector recorded in Frame.Vector for a SYSCALL entry.
#define VEC_SYSCALL   256

// Segment selectors (kernel/gdt.go).
#define SEL_CODE      0x08
#define SEL_DATA      0x10

// What the idt=pvshim stubs leave in RCX and R11 after saving them, as a hypervisor's own
// code would: a PV stub that forgot to restore them hands this value to the handler.
#define PV_POISON     0x7e57dead0000c0de

// Words an entry has on its stack when commonEntry moves them: saved RAX and RBX, the vector,
// the error code and the five-word hardware frame.
#define ENTRY_WORDS   9
