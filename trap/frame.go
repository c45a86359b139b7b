package trap

// Frame is the complete register state of an interrupted context, built on a kernel stack by
// every entry (SYSCALL, interrupt, exception) and consumed by the common return path, which
// restores it with FXRSTOR, WRMSR(FS_BASE), POPs and IRETQ. A thread's state at rest is a Frame
// too: switching threads is copying one Frame over another. Layout: kernel/frame_amd64.h.
type Frame struct {
	FX     [512]byte // FXSAVE image (x87, MXCSR, XMM0–15); 16-byte aligned
	FSBase uint64
	CR2    uint64 // read at entry, before anything can nest and fault again
	R15    uint64
	R14    uint64
	R13    uint64
	R12    uint64
	R11    uint64
	R10    uint64
	R9     uint64
	R8     uint64
	RBP    uint64
	RDI    uint64
	RSI    uint64
	RDX    uint64
	RCX    uint64
	RBX    uint64
	RAX    uint64
	Vector uint64 // IDT vector, or VecSyscall
	Err    uint64 // hardware error code, 0 when the vector has none
	// The hardware interrupt frame (SDM Vol. 3A, 6.14.2).
	RIP    uint64
	CS     uint64
	RFLAGS uint64
	RSP    uint64
	SS     uint64
}

// VecSyscall marks a Frame built by the SYSCALL entry.
const VecSyscall = 256
