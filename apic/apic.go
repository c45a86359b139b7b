// Package apic drives the local APIC (SDM Vol. 3A, chapter 10): xAPIC through its MMIO window,
// or x2APIC through MSRs when CPUID offers it (QEMU's TCG does not; KVM does).
//
// github.com/usbarmory/tamago/amd64/lapic supplies the register offsets and ICR field names.
// Its methods are not used: they are MMIO-only (no x2APIC), its ID reads 4 bits where xAPIC
// IDs have 8, and its IPI waits with runtime.Gosched, which cannot run in kernel context. The
// IPIs here wait for the delivery-status bit with a bound instead.
//
// Every method is safe in trap context: register loads and stores, no allocation, no locks.
package apic

import (
	"unsafe"

	"github.com/usbarmory/tamago/amd64/lapic"

	"tracebed/amd64"
)

// DefaultBase is the architectural xAPIC base (IA32_APIC_BASE after reset).
const DefaultBase = 0xfee00000

// Registers (SDM Vol. 3A, Table 10-1), tamago's names where it has them.
const (
	RegID           = lapic.LAPIC_ID
	RegVersion      = lapic.LAPIC_VER
	RegEOI          = lapic.LAPIC_EOI
	RegSVR          = lapic.LAPIC_SVR
	RegICRLow       = lapic.LAPIC_ICRL
	RegICRHigh      = lapic.LAPIC_ICRH
	RegLVTTimer     = lapic.LAPIC_LVT_TIMER
	RegTimerInitial = 0x380
	RegTimerCurrent = 0x390
	RegTimerDivide  = 0x3e0
	RegLVTLINT1     = 0x360
	lvtNMI          = 4 << 8 // delivery mode NMI (SDM Vol. 3A, Figure 10-8)
	timerMasked     = 1 << 16
	divideBy1       = 0xb
	svrEnable       = 1 << lapic.SVR_ENABLE
)

// MSRs of x2APIC mode (SDM Vol. 3A, 10.12): register offset off is MSR 0x800 + off/16; the
// ICR is one 64-bit MSR.
const (
	msrAPICBase   = 0x1b
	apicBaseEN    = 1 << 11
	apicBaseEXTD  = 1 << 10
	msrX2APICBase = 0x800
	msrX2ICR      = 0x830
)

// ICR fields (SDM Vol. 3A, Figure 10-12).
const (
	DeliveryFixed = lapic.ICR_DLV_IRQ
	DeliveryNMI   = lapic.ICR_DLV_NMI
	DeliveryINIT  = lapic.ICR_DLV_INIT
	DeliverySIPI  = lapic.ICR_DLV_SIPI
	levelAssert   = 1 << lapic.ICR_INIT
	deliveryBusy  = 1 << lapic.ICR_DLV_STATUS

	ToDest       = 0
	ToSelf       = lapic.ICR_DST_SELF
	ToAll        = lapic.ICR_DST_ALL
	ToAllButSelf = lapic.ICR_DST_REST
)

// icrSpins bounds the wait for an xAPIC IPI to leave the ICR. QEMU clears the busy bit at
// once; real hardware within microseconds. Each spin is one MMIO read.
const icrSpins = 1 << 20

// LAPIC is one CPU's local APIC. Every CPU sees its own at the same base (xAPIC) or through
// the same MSRs (x2APIC), so one LAPIC value serves all CPUs.
type LAPIC struct {
	Base uint32 // xAPIC MMIO base
	X2   bool   // x2APIC mode: registers are MSRs
}

// New returns the xAPIC at base.
func New(base uint32) LAPIC { return LAPIC{Base: base} }

// HasX2APIC reports whether CPUID offers x2APIC mode (leaf 1, ECX bit 21).
func HasX2APIC() bool {
	_, _, ecx, _ := amd64.CPUID(1, 0)
	return ecx&(1<<21) != 0
}

// EnableX2APIC switches the running CPU's APIC to x2APIC mode (each CPU does it for itself).
func (l *LAPIC) EnableX2APIC() {
	amd64.WRMSR(msrAPICBase, amd64.RDMSR(msrAPICBase)|apicBaseEN|apicBaseEXTD)
	l.X2 = true
}

// X2APICMSR is the MSR that holds xAPIC register off in x2APIC mode.
//
// Trap context allowed.
func X2APICMSR(off uint32) uint32 { return msrX2APICBase + off>>4 }

// Trap context allowed.
func (l *LAPIC) reg(off uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(uintptr(l.Base + off)))
}

// Read and Write access a 32-bit register by its xAPIC offset.
//
// Trap context allowed.
func (l *LAPIC) Read(off uint32) uint32 {
	if l.X2 {
		return uint32(amd64.RDMSR(X2APICMSR(off)))
	}
	return *l.reg(off)
}

// Trap context allowed.
func (l *LAPIC) Write(off uint32, v uint32) {
	if l.X2 {
		amd64.WRMSR(X2APICMSR(off), uint64(v))
		return
	}
	*l.reg(off) = v
}

// ID returns the running CPU's APIC ID: bits 31:24 of the ID register in xAPIC mode, all 32
// bits in x2APIC mode.
func (l *LAPIC) ID() uint32 {
	if l.X2 {
		return l.Read(RegID)
	}
	return l.Read(RegID) >> 24
}

// Init software-enables the APIC with the given spurious vector, stops its timer, and makes
// LINT1 an unmasked NMI on every CPU (Linux leaves it to the boot CPU): an external NMI, such
// as QEMU's inject-nmi (delivered through each CPU's LINT1) or a BMC's, reaches all CPUs, so a
// host diagnosing a hung guest gets every CPU's backtrace.
func (l *LAPIC) Init(spurious uint8) {
	l.Write(RegSVR, svrEnable|uint32(spurious))
	l.Write(RegLVTLINT1, lvtNMI)
	l.Write(RegTimerDivide, divideBy1)
	l.Write(RegLVTTimer, timerMasked)
	l.Write(RegTimerInitial, 0)
}

// EOI signals the end of the current interrupt.
//
// Trap context allowed.
func (l *LAPIC) EOI() { l.Write(RegEOI, 0) }

// OneShot arms the timer to raise vector once after count ticks (0 stops it).
//
// Trap context allowed.
func (l *LAPIC) OneShot(vector uint8, count uint32) {
	l.Write(RegLVTTimer, uint32(vector)) // one-shot mode, unmasked
	l.Write(RegTimerInitial, count)
}

// StartCount starts a free countdown from 0xffffffff with the timer masked, for calibration.
func (l *LAPIC) StartCount() {
	l.Write(RegLVTTimer, timerMasked)
	l.Write(RegTimerInitial, 0xffffffff)
}

// Current returns the timer's current count.
func (l *LAPIC) Current() uint32 { return l.Read(RegTimerCurrent) }

// ICR encodes an interrupt command: delivery mode, destination shorthand and vector, with the
// destination APIC ID in the high half (bits 63:56 for xAPIC, 63:32 for x2APIC). INIT is sent
// with the level asserted, as the SDM's MP start-up sequence does (8.4.4.1).
//
// Trap context allowed.
func ICR(x2 bool, dest uint32, vector uint8, delivery, shorthand uint32) uint64 {
	lo := uint64(delivery | shorthand | uint32(vector))
	if delivery == DeliveryINIT || delivery == DeliveryNMI {
		lo |= levelAssert
	}
	if x2 {
		return uint64(dest)<<32 | lo
	}
	return uint64(dest&0xff)<<56 | lo
}

// Send issues an interrupt command and reports whether the APIC accepted it within the bound
// (x2APIC has no busy bit: the write is the delivery).
//
// Trap context allowed.
func (l *LAPIC) Send(dest uint32, vector uint8, delivery, shorthand uint32) bool {
	v := ICR(l.X2, dest, vector, delivery, shorthand)
	if l.X2 {
		amd64.WRMSR(msrX2ICR, v)
		return true
	}
	l.Write(RegICRHigh, uint32(v>>32))
	l.Write(RegICRLow, uint32(v))
	for i := 0; i < icrSpins; i++ {
		if l.Read(RegICRLow)&deliveryBusy == 0 {
			return true
		}
		amd64.Pause()
	}
	return false
}

// IPI sends a fixed interrupt with vector to the CPU with APIC ID dest.
//
// Trap context allowed.
func (l *LAPIC) IPI(dest uint32, vector uint8) bool {
	return l.Send(dest, vector, DeliveryFixed, ToDest)
}

// NMI sends a non-maskable interrupt to dest.
//
// Trap context allowed.
func (l *LAPIC) NMI(dest uint32) bool { return l.Send(dest, 0, DeliveryNMI, ToDest) }

// Self sends vector to the running CPU.
func (l *LAPIC) Self(vector uint8) bool { return l.Send(0, vector, DeliveryFixed, ToSelf) }

// AllButSelf sends vector to every other CPU.
//
// Trap context allowed.
func (l *LAPIC) AllButSelf(vector uint8) bool {
	return l.Send(0, vector, DeliveryFixed, ToAllButSelf)
}

// INIT resets dest into wait-for-SIPI; SIPI starts it in real mode at page<<12
// (SDM Vol. 3A, 8.4.4).
func (l *LAPIC) INIT(dest uint32) bool { return l.Send(dest, 0, DeliveryINIT, ToDest) }

func (l *LAPIC) SIPI(dest uint32, page uint8) bool {
	return l.Send(dest, page, DeliverySIPI, ToDest)
}
