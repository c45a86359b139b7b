package kernel

import "unsafe"

// hvm_start_info (Xen public/arch-x86/hvm/start_info.h), handed over in EBX by PVH loaders.
const (
	pvhMagic          = 0x336ec578
	startInfoMinBytes = 40 // version 0
	startInfoV1Bytes  = 56 // version 1 adds the memory map
	memmapEntryBytes  = 24
)

// E820-style memory types used in the PVH memory map.
const (
	memRAM      = 1
	memReserved = 2
	memACPI     = 3
	memNVS      = 4
)

const (
	maxMemRegions = 64
	maxCmdline    = 1024
)

type memRegion struct {
	base, size uint64
	typ        uint32
}

// bootInfo is what the kernel keeps of hvm_start_info, copied out of loader memory.
type bootInfo struct {
	version uint32
	rsdp    uint64
	cmdline [maxCmdline]byte
	cmdlen  int
	mem     [maxMemRegions]memRegion
	nmem    int
}

// Reasons parseStartInfo refuses a start_info.
const (
	startInfoOK = iota
	startInfoBadMagic
	startInfoNoMemmap
	startInfoLongCmdline // longer than maxCmdline-1 bytes: cut, it would be misread
)

func peek32(p uint64) uint32 { return *(*uint32)(unsafe.Pointer(uintptr(p))) }
func peek64(p uint64) uint64 { return *(*uint64)(unsafe.Pointer(uintptr(p))) }
func peek8(p uint64) byte    { return *(*byte)(unsafe.Pointer(uintptr(p))) }

// parseStartInfo copies the start_info at physical address p into bi.
func parseStartInfo(p uint64, bi *bootInfo) int {
	if peek32(p) != pvhMagic {
		return startInfoBadMagic
	}
	bi.version = peek32(p + 4)
	bi.rsdp = peek64(p + 32)
	bi.cmdlen = 0
	if cl := peek64(p + 24); cl != 0 {
		for {
			c := peek8(cl + uint64(bi.cmdlen))
			if c == 0 {
				break
			}
			if bi.cmdlen == maxCmdline-1 {
				return startInfoLongCmdline
			}
			bi.cmdline[bi.cmdlen] = c
			bi.cmdlen++
		}
	}
	bi.nmem = 0
	if bi.version < 1 {
		return startInfoNoMemmap
	}
	mm, n := peek64(p+40), peek32(p+48)
	for i := uint64(0); i < uint64(n) && bi.nmem < maxMemRegions; i++ {
		e := mm + i*memmapEntryBytes
		bi.mem[bi.nmem] = memRegion{base: peek64(e), size: peek64(e + 8), typ: peek32(e + 16)}
		bi.nmem++
	}
	if bi.nmem == 0 {
		return startInfoNoMemmap
	}
	return startInfoOK
}

func memTypeName(t uint32) string {
	switch t {
	case memRAM:
		return "usable"
	case memReserved:
		return "reserved"
	case memACPI:
		return "ACPI data"
	case memNVS:
		return "ACPI NVS"
	}
	return "other"
}
