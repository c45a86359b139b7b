// Package amd64 holds the CPU primitives the kernel is built from: CPUID, MSRs, control
// registers, port I/O, the TSC and interrupt-flag control.
//
// Every function here is a leaf written in assembly, safe in trap context (no stack growth,
// no allocation) and usable before the Go runtime has started.
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
	RFLAGS_TF = 1 << 8
	RFLAGS_IF = 1 << 9
	RFLAGS_DF = 1 << 10
	RFLAGS_AC = 1 << 18
)

// CPUID executes CPUID with EAX=leaf, ECX=sub.
func CPUID(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

// RDMSR reads a model-specific register.
func RDMSR(msr uint32) uint64

// WRMSR writes a model-specific register.
func WRMSR(msr uint32, val uint64)

// RDTSC reads the time-stamp counter.
func RDTSC() uint64

// In8 and friends perform port I/O.
func In8(port uint16) uint8
func Out8(port uint16, val uint8)
func In32(port uint16) uint32
func Out32(port uint16, val uint32)

// ReadCR0 and friends access the control registers.
func ReadCR0() uint64
func ReadCR2() uint64
func ReadCR3() uint64
func ReadCR4() uint64
func WriteCR3(v uint64)
func WriteCR4(v uint64)

// Invlpg invalidates the TLB entry for one virtual address.
func Invlpg(va uintptr)

// LGDT, LIDT load a descriptor-table register from a 10-byte pseudo-descriptor at p.
func LGDT(p uintptr)
func LIDT(p uintptr)

// LTR loads the task register.
func LTR(sel uint16)

// ReloadSegments reloads CS with code and DS, ES, SS with data (FS and GS are left alone: their
// bases live in MSRs).
func ReloadSegments(code, data uint16)

// DisableInterrupts clears IF and returns the previous RFLAGS.
func DisableInterrupts() uint64

// RestoreInterrupts writes back the IF bit of flags.
func RestoreInterrupts(flags uint64)

// Flags returns RFLAGS.
func Flags() uint64

// Halt enables interrupts and halts atomically (STI; HLT): a pending interrupt wakes it. It
// returns with interrupts disabled again.
func Halt()

// Pause is the spin-loop hint.
func Pause()

// Xchg32 atomically swaps *addr and v, returning the old value (a full barrier).
func Xchg32(addr *uint32, v uint32) uint32
