package kernel

import (
	"tracebed/acpi"
	"tracebed/amd64"
	"tracebed/idt"
)

// CPUID feature bits shown in the boot banner (SDM Vol. 2A, CPUID, Tables 3-10, 3-11).
var (
	featEDX1 = [...]struct {
		bit  uint
		name string
	}{{0, "fpu"}, {4, "tsc"}, {5, "msr"}, {6, "pae"}, {9, "apic"}, {15, "cmov"}, {19, "clflush"}, {24, "fxsr"}, {25, "sse"}, {26, "sse2"}, {28, "htt"}}
	featECX1 = [...]struct {
		bit  uint
		name string
	}{{0, "sse3"}, {9, "ssse3"}, {12, "fma"}, {13, "cx16"}, {19, "sse4.1"}, {20, "sse4.2"}, {21, "x2apic"}, {22, "movbe"}, {23, "popcnt"}, {24, "tsc-deadline"}, {26, "xsave"}, {28, "avx"}, {30, "rdrand"}, {31, "hypervisor"}}
	featEBX7 = [...]struct {
		bit  uint
		name string
	}{{0, "fsgsbase"}, {3, "bmi1"}, {5, "avx2"}, {7, "smep"}, {8, "bmi2"}, {9, "erms"}, {18, "rdseed"}, {20, "smap"}}
)

func banner() {
	var k kbuf
	_, b, cx, d := amd64.CPUID(0, 0)
	var vendor [12]byte
	for i := 0; i < 4; i++ {
		vendor[i], vendor[4+i], vendor[8+i] = byte(b>>(8*i)), byte(d>>(8*i)), byte(cx>>(8*i))
	}
	var brand [48]byte
	for l := uint32(0); l < 3; l++ {
		a, b, c, d := amd64.CPUID(0x80000002+l, 0)
		for i, r := range [4]uint32{a, b, c, d} {
			for j := 0; j < 4; j++ {
				brand[int(l)*16+i*4+j] = byte(r >> (8 * j))
			}
		}
	}
	n := 0
	for n < len(brand) && brand[n] != 0 {
		n++
	}
	sig, _, ecx1, edx1 := amd64.CPUID(1, 0)
	family := (sig >> 8) & 0xf
	model := (sig >> 4) & 0xf
	if family == 6 || family == 15 {
		model |= (sig >> 12) & 0xf0
	}
	if family == 15 {
		family += (sig >> 20) & 0xff
	}
	k.s("tracebed: cpu ").bytes(vendor[:]).s(" \"").bytes(brand[:n]).s("\" family ").dec(int64(family)).
		s(" model ").dec(int64(model)).s(" stepping ").dec(int64(sig & 0xf)).out()
	k.s("tracebed: cpu features")
	for _, f := range featEDX1 {
		if edx1&(1<<f.bit) != 0 {
			k.c(' ').s(f.name)
		}
	}
	for _, f := range featECX1 {
		if ecx1&(1<<f.bit) != 0 {
			k.c(' ').s(f.name)
		}
	}
	_, ebx7, _, _ := amd64.CPUID(7, 0)
	for _, f := range featEBX7 {
		if ebx7&(1<<f.bit) != 0 {
			k.c(' ').s(f.name)
		}
	}
	k.out()
	for i := 0; i < boot.nmem; i++ {
		r := boot.mem[i]
		k.s("tracebed: memory ").hex(r.base).s("-").hex(r.base + r.size - 1).s(" ").s(memTypeName(r.typ)).out()
	}
	k.s("tracebed: memory free ").dec(int64(pmem.free * pageSize >> 20)).s(" MiB, kernel ").
		hex(uint64(kernelStart())).s("-").hex(uint64(kernelEnd())).out()
	k.s("tracebed: cmdline \"").bytes(boot.cmdline[:boot.cmdlen]).s("\"").out()
	k.s("tracebed: hypervisor ").s(string(hypervisor))
	if hvLeaf != 0 {
		k.s(" (CPUID ").hex(uint64(hvLeaf)).c(')')
	}
	k.s("; idt ").s(idtConfig.Mode.String()).s(", trap gates:")
	ntrap := 0
	for v := 0; v < 256; v++ {
		if idtConfig.Type[v] == idt.TypeTrap {
			k.c(' ').dec(int64(v))
			ntrap++
		}
	}
	if ntrap == 0 {
		k.s(" none")
	}
	k.out()
	k.s("tracebed: clock TSC ").dec(int64(tscHz / 1000)).s(" kHz calibrated against PIT channel 0, LAPIC timer ").
		dec(int64(lapicHz / 1000)).s(" kHz, RTC wall clock ").dec(wallBase / 1e9).out()
	bannerCPUs()
}

// bannerCPUs reports what ACPI listed and which CPUs came online.
func bannerCPUs() {
	var k kbuf
	if acpiStatus == acpi.OK && boot.rsdp != 0 {
		k.s("tracebed: acpi RSDP rev ").dec(int64(acpiInfo.Revision)).s(" OEM ").bytes(acpiInfo.OEM[:]).
			s(", ").bytes(acpiInfo.Root[:]).s(":")
		for i := 0; i < acpiInfo.NTables && i < acpi.MaxTables; i++ {
			k.c(' ').bytes(acpiInfo.Tables[i][:])
		}
		k.out()
		k.s("tracebed: acpi MADT: ").dec(int64(acpiInfo.NCPU)).s(" enabled CPUs, ").
			dec(int64(acpiInfo.Disabled)).s(" disabled, ").dec(int64(acpiInfo.Hotplug)).
			s(" hot-pluggable; LAPIC ").hex(acpiInfo.LAPICAddr)
		for i := 0; i < acpiInfo.NIOAPIC && i < acpi.MaxIOAPICs; i++ {
			io := acpiInfo.IOAPICs[i]
			k.s("; IOAPIC ").dec(int64(io.ID)).s(" at ").hex(uint64(io.Addr)).s(" GSI ").dec(int64(io.GSIBase))
		}
		k.out()
	}
	mode := "xAPIC MMIO"
	if lapic.X2 {
		mode = "x2APIC MSRs"
	}
	k.s("tracebed: cpus ").dec(int64(ncpuOnline)).s(" online (").s(mode).s("):")
	for i := 0; i < ncpuOnline; i++ {
		c := &cpus[i]
		k.s(" cpu").dec(int64(i)).s("=apic").dec(int64(c.apicID))
		if i > 0 {
			k.c('/').dec(c.startNs / 1000).s("us")
		}
	}
	k.out()
}
