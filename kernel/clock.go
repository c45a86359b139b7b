package kernel

import (
	"math/bits"

	"tracebed/amd64"
)

// Time. The monotonic clock is the TSC, calibrated at boot against channel 2 of the 8254 PIT
// (a fixed 1.193182 MHz reference, SDM-independent: Intel 8254 datasheet, and how Linux's
// pit_calibrate_tsc does it). The wall clock is the CMOS RTC read once at boot plus the
// monotonic clock. Under QEMU TCG the TSC follows the host's, and the PIT follows QEMU's
// virtual clock, which tracks real time.

const (
	pitHz           = 1193182
	pitCalibrateMs  = 50
	portPITCh2      = 0x42
	portPITCommand  = 0x43
	portSysCtrlB    = 0x61 // bit 0: channel 2 gate, bit 1: speaker, bit 5: channel 2 output
	pitCh2Mode0     = 0xb0 // channel 2, lobyte/hibyte, mode 0 (interrupt on terminal count)
	calibrateBudget = 1 << 36
)

var (
	tscHz    uint64
	tscMult  uint64 // ns = (ticks * tscMult) >> 32
	tscBase  uint64
	wallBase int64 // Unix ns at tscBase
)

// calibrateTSC measures the TSC against the PIT; false if the PIT never reached zero.
func calibrateTSC() bool {
	count := uint16(pitHz * pitCalibrateMs / 1000)
	ctrl := amd64.In8(portSysCtrlB)
	amd64.Out8(portSysCtrlB, ctrl&^3) // gate low, speaker off
	amd64.Out8(portPITCommand, pitCh2Mode0)
	amd64.Out8(portPITCh2, uint8(count))
	amd64.Out8(portPITCh2, uint8(count>>8))
	amd64.Out8(portSysCtrlB, ctrl&^2|1) // gate high: counting starts
	t0 := amd64.RDTSC()
	for amd64.In8(portSysCtrlB)&0x20 == 0 {
		if amd64.RDTSC()-t0 > calibrateBudget {
			return false
		}
	}
	t1 := amd64.RDTSC()
	amd64.Out8(portSysCtrlB, ctrl)
	tscHz = (t1 - t0) * 1000 / pitCalibrateMs
	tscMult = (uint64(1e9) << 32) / tscHz
	tscBase = amd64.RDTSC()
	return true
}

// nanotime is the monotonic clock in ns since calibration.
func nanotime() int64 {
	hi, lo := bits.Mul64(amd64.RDTSC()-tscBase, tscMult)
	return int64(hi<<32 | lo>>32)
}

// walltime is Unix time in ns.
func walltime() int64 { return wallBase + nanotime() }

// CMOS RTC (MC146818) registers.
const (
	portCMOSIndex = 0x70
	portCMOSData  = 0x71
)

func cmos(reg uint8) uint8 {
	amd64.Out8(portCMOSIndex, reg)
	return amd64.In8(portCMOSData)
}

// readRTC returns the RTC's time as Unix seconds.
func readRTC() int64 {
	for cmos(0x0a)&0x80 != 0 { // update in progress
	}
	sec, min, hour := cmos(0x00), cmos(0x02), cmos(0x04)
	day, mon, year, cent := cmos(0x07), cmos(0x08), cmos(0x09), cmos(0x32)
	statusB := cmos(0x0b)
	if statusB&0x04 == 0 { // BCD
		bcd := func(v uint8) uint8 { return v>>4*10 + v&15 }
		sec, min, day, mon, year, cent = bcd(sec), bcd(min), bcd(day), bcd(mon), bcd(year), bcd(cent)
		hour = bcd(hour&0x7f) | hour&0x80
	}
	if statusB&0x02 == 0 && hour&0x80 != 0 { // 12-hour clock, PM
		hour = (hour&0x7f)%12 + 12
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
