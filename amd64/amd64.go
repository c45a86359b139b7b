// Package amd64 holds the CPU primitives the kernel is built from: CPUID, MSRs, control and
// debug registers, port I/O, the TSC, interrupt-flag control, and the encodings and checks
// that go with them (DR7 fields, canonical addresses, hypervisor signatures).
//
// Every function here is an assembly leaf or plain Go that neither allocates nor locks: safe
// in trap context and usable before the Go runtime has started.
package amd64

// Model-specific registers (Intel SDM Vol. 4, Table 2-2).
const (
	MSR_APIC_BASE      = 0x1b
	MSR_EFER           = 0xc0000080
	MSR_STAR           = 0xc0000081
	MSR_LSTAR          = 0xc0000082
	MSR_SFMASK         = 0xc0000084
	MSR_FS_BASE        = 0xc0000100
	MSR_GS_BASE        = 0xc0000101
	MSR_KERNEL_GS_BASE = 0xc0000102
)

// RFLAGS bits (SDM Vol. 1, 3.4.3).
const (
	RFLAGS_CF = 1 << 0
	RFLAGS_PF = 1 << 2
	RFLAGS_AF = 1 << 4
	RFLAGS_ZF = 1 << 6
	RFLAGS_SF = 1 << 7
	RFLAGS_TF = 1 << 8
	RFLAGS_IF = 1 << 9
	RFLAGS_DF = 1 << 10
	RFLAGS_OF = 1 << 11
	RFLAGS_AC = 1 << 18
)

// CPUID executes CPUID with EAX=leaf, ECX=sub. It serialises (SDM Vol. 3A, 9.3).
//
// Trap context allowed.
func CPUID(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

// RDMSR reads a model-specific register.
//
// Trap context allowed.
func RDMSR(msr uint32) uint64

// WRMSR writes a model-specific register.
//
// Trap context allowed.
func WRMSR(msr uint32, val uint64)

// RDTSC reads the time-stamp counter.
//
// Trap context allowed.
func RDTSC() uint64

// In8 and friends perform port I/O.
func In8(port uint16) uint8
func Out8(port uint16, val uint8)
func In32(port uint16) uint32

// Trap context allowed.
func Out32(port uint16, val uint32)

// ReadCR0 and friends access the control registers.
func ReadCR0() uint64

// Trap context allowed.
func ReadCR2() uint64

// Trap context allowed.
func ReadCR3() uint64
func ReadCR4() uint64

// Trap context allowed.
func WriteCR2(v uint64)

// Trap context allowed.
func WriteCR3(v uint64)
func WriteCR4(v uint64)

// Invlpg invalidates the TLB entry for one virtual address.
func Invlpg(va uintptr)

// CallerFrame returns a PC inside its caller and the caller's frame pointer, to walk the
// caller's own stack (a watchdog report made from a wait). Trap context allowed.
func CallerFrame() (pc, bp uint64)

// LGDT, LIDT load a descriptor-table register from a 10-byte pseudo-descriptor at p.
func LGDT(p uintptr)
func LIDT(p uintptr)

// LTR loads the task register.
func LTR(sel uint16)

// ReloadSegments reloads CS with code and DS, ES, SS with data (FS and GS are left alone: their
// bases live in MSRs).
func ReloadSegments(code, data uint16)

// DisableInterrupts clears IF and returns the previous RFLAGS.
//
// Trap context allowed.
func DisableInterrupts() uint64

// RestoreInterrupts writes back the IF bit of flags.
//
// Trap context allowed.
func RestoreInterrupts(flags uint64)

// Flags returns RFLAGS.
//
// Trap context allowed.
func Flags() uint64

// Halt enables interrupts and halts atomically (STI; HLT): a pending interrupt wakes it. It
// returns with interrupts disabled again.
//
// Kernel context (the idle loop): it opens an interrupt window, so never in trap context.
func Halt()

// Stop halts for good with interrupts disabled (CLI; HLT, again after each NMI).
//
// Trap context allowed.
func Stop()

// Pause is the spin-loop hint.
//
// Trap context allowed.
func Pause()

// Xchg32 atomically swaps *addr and v, returning the old value (a full barrier).
func Xchg32(addr *uint32, v uint32) uint32

// Debug registers (SDM Vol. 3B, 18.2).
//
// Trap context allowed.
func ReadDR6() uint64

// Trap context allowed.
func WriteDR6(v uint64)
func ReadDR7() uint64
func WriteDR7(v uint64)
func WriteDR0to3(a0, a1, a2, a3 uint64)

// DR6 and DR7 bits (SDM Vol. 3B, 18.2.3 and 18.2.4).
const (
	DR6_B0    = 1 << 0     // breakpoint condition 0 (… B3 = 1<<3)
	DR6_BD    = 1 << 13    // debug-register access detected
	DR6_BS    = 1 << 14    // single step
	DR6_BT    = 1 << 15    // task switch
	DR6_Reset = 0xffff0ff0 // the value with no condition recorded (RTM bit 16 set: no RTM)

	DR7_L0 = 1 << 0 // local enable for breakpoint 0; Ln = 1 << 2n
	DR7_GE = 1 << 9 // "exact" breakpoints, recommended by the SDM

	DR7RWExec  = 0 // R/Wn: break on instruction execution (LENn must be 0)
	DR7RWWrite = 1 // break on data writes
	DR7RWRead  = 3 // break on data reads or writes
)

// DR7Breakpoint returns the DR7 bits enabling breakpoint n (0–3) with condition rw and
// length len (1, 2, 4 or 8 bytes; 1 for execution breakpoints).
func DR7Breakpoint(n int, rw uint64, length int) uint64 {
	var lenBits uint64 // 00: 1 byte
	switch length {
	case 2:
		lenBits = 1
	case 8:
		lenBits = 2
	case 4:
		lenBits = 3
	}
	return DR7_L0<<(2*n) | (rw|lenBits<<2)<<(16+4*n)
}

// Canonical reports whether va has bits 63..47 all equal (SDM Vol. 1, 3.3.7.1): other
// addresses raise #GP (#SS through RSP/RBP) when used.
//
// Trap context allowed.
func Canonical(va uint64) bool { return uint64(int64(va<<16)>>16) == va }
