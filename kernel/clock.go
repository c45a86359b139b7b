package kernel

import (
	"math/bits"

	"tracebed/amd64"
)

// Time. The monotonic clock is the TSC, calibrated at boot against channel 0 of the 8254 PIT
// (a fixed 1.193182 MHz reference: Intel 8254 datasheet). Channel 0 counts with its gate tied
// high, so it needs no port 0x61 (which microvm lacks; channel 2's gate lives there, and
// calibrating through it there gave a TSC of 1.4 MHz). The kernel latches and reads the
// down-counter in a tight loop, summing the ticks between reads, until 50 ms of PIT time
// have passed. Its IRQ0 stays masked at the PIC. The wall clock is the CMOS RTC read once at
// boot plus the monotonic clock. Under QEMU TCG the TSC follows the host's, and the PIT
// follows QEMU's virtual clock, which tracks real time.

const (
	pitHz           = 1193182
	pitCalibrateMs  = 50
	portPITCh0      = 0x40
	portPITCommand  = 0x43
	pitCh0Mode2     = 0x34 // channel 0, lobyte/hibyte, mode 2 (rate generator), binary
	pitCh0Latch     = 0x00 // counter latch command for channel 0
	calibrateBudget = 1 << 36
)

var (
	tscHz    uint64
	tscMult  uint64 // ns = (ticks * tscMult) >> 32
	tscBase  uint64
	wallBase int64 // Unix ns at tscBase
)

func pitRead() uint16 {
	amd64.Out8(portPITCommand, pitCh0Latch)
	lo := amd64.In8(portPITCh0)
	hi := amd64.In8(portPITCh0)
	return uint16(hi)<<8 | uint16(lo)
}

// calibrateTSC measures the TSC against the PIT; false if the PIT does not count.
func calibrateTSC() bool {
	amd64.Out8(portPITCommand, pitCh0Mode2)
	amd64.Out8(portPITCh0, 0) // reload value 0 means 65536
	amd64.Out8(portPITCh0, 0)
	want := uint64(pitHz * pitCalibrateMs / 1000)
	prev := pitRead()
	t0 := amd64.RDTSC()
	var ticks uint64
	for ticks < want {
		cur := pitRead()
		ticks += uint64(prev - cur) // counts down; uint16 arithmetic handles the wrap
		prev = cur
		if amd64.RDTSC()-t0 > calibrateBudget {
			return false
		}
	}
	t1 := amd64.RDTSC()
	tscHz = (t1 - t0) * pitHz / ticks
	tscMult = (uint64(1e9) << 32) / tscHz
	tscBase = amd64.RDTSC()
	return true
}

// nanotime is the monotonic clock in ns since calibration.
//
// Trap context allowed.
func nanotime() int64 {
	hi, lo := bits.Mul64(amd64.RDTSC()-tscBase, tscMult)
	return int64(hi<<32 | lo>>32)
}

// walltime is Unix time in ns.
//
// Trap context allowed.
func walltime() int64 { return wallBase + nanotime() }

// CMOS RTC (MC146818) ports and registers.
const (
	portCMOSIndex = 0x70
	portCMOSData  = 0x71

	rtcSeconds = 0x00
	rtcMinutes = 0x02
	rtcHours   = 0x04 // bit 7: PM, in 12-hour mode
	rtcDay     = 0x07
	rtcMonth   = 0x08
	rtcYear    = 0x09
	rtcStatusA = 0x0a // bit 7: update in progress
	rtcStatusB = 0x0b // bit 1: 24-hour mode; bit 2: binary, not BCD
	rtcCentury = 0x32 // the ACPI FADT's customary century register
	rtcUIP     = 0x80
	rtc24Hour  = 0x02
	rtcBinary  = 0x04
	rtcHourPM  = 0x80
)

func cmos(reg uint8) uint8 {
	amd64.Out8(portCMOSIndex, reg)
	return amd64.In8(portCMOSData)
}

// readRTC returns the RTC's time as Unix seconds.
func readRTC() int64 {
	for cmos(rtcStatusA)&rtcUIP != 0 {
	}
	sec, min, hour := cmos(rtcSeconds), cmos(rtcMinutes), cmos(rtcHours)
	day, mon, year, cent := cmos(rtcDay), cmos(rtcMonth), cmos(rtcYear), cmos(rtcCentury)
	statusB := cmos(rtcStatusB)
	if statusB&rtcBinary == 0 { // BCD
		bcd := func(v uint8) uint8 { return v>>4*10 + v&15 }
		sec, min, day, mon, year, cent = bcd(sec), bcd(min), bcd(day), bcd(mon), bcd(year), bcd(cent)
		hour = bcd(hour&^rtcHourPM) | hour&rtcHourPM
	}
	if statusB&rtc24Hour == 0 { // 12-hour clock: 12 AM is hour 0, 12 PM hour 12
		pm := hour&rtcHourPM != 0
		hour = (hour &^ rtcHourPM) % 12
		if pm {
			hour += 12
		}
	}
	y := int64(year) + 100*int64(cent)
	if cent == 0 {
		y += 2000
	}
	return unixSeconds(y, int64(mon), int64(day), int64(hour), int64(min), int64(sec))
}

// unixSeconds converts a proleptic Gregorian date to Unix time (days-from-civil).
func unixSeconds(y, m, d, hh, mm, ss int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	days := era*146097 + doe - 719468
	return days*86400 + hh*3600 + mm*60 + ss
}
