// Package apic drives the local APIC through its xAPIC MMIO window (SDM Vol. 3A, chapter 10).
// Register-level operations come from github.com/usbarmory/tamago/amd64/lapic; what that package
// does not offer, or offers in a form unusable in kernel context (its IPI waits with
// runtime.Gosched), is here: timer counts, a bounded IPI and raw register access.
//
// Every method is safe in trap context: MMIO loads and stores, no allocation.
package apic

import (
	"unsafe"

	"github.com/usbarmory/tamago/amd64/lapic"
)

// DefaultBase is the architectural xAPIC base (IA32_APIC_BASE after reset).
const DefaultBase = 0xfee00000

// Registers not named by tamago's lapic (SDM Vol. 3A, Table 10-1).
const (
	RegTimerInitial = 0x380
	RegTimerCurrent = 0x390
	RegTimerDivide  = 0x3e0
	RegSVR          = 0xf0
	RegLVTTimer     = 0x320
	timerMasked     = 1 << 16
	divideBy1       = 0xb
	svrEnable       = 1 << 8
)

// LAPIC is one CPU's local APIC (each CPU sees its own at the same address).
type LAPIC struct {
	lapic.LAPIC
}

// New returns the local APIC at base.
func New(base uint32) LAPIC { return LAPIC{lapic.LAPIC{Base: base}} }

func (l *LAPIC) reg(off uint32) *uint32 {
	return (*uint32)(unsafe.Pointer(uintptr(l.Base + off)))
}

// Read and Write access a 32-bit register.
func (l *LAPIC) Read(off uint32) uint32     { return *l.reg(off) }
func (l *LAPIC) Write(off uint32, v uint32) { *l.reg(off) = v }

// Init software-enables the APIC with the given spurious vector and stops its timer.
func (l *LAPIC) Init(spurious uint8) {
	l.Write(RegSVR, svrEnable|uint32(spurious))
	l.Write(RegTimerDivide, divideBy1)
	l.Write(RegLVTTimer, timerMasked)
	l.Write(RegTimerInitial, 0)
}

// EOI signals the end of the current interrupt.
func (l *LAPIC) EOI() { l.Write(lapic.LAPIC_EOI, 0) }

// OneShot arms the timer to raise vector once after count ticks (0 stops it).
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
