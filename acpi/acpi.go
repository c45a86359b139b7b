// Package acpi finds the CPUs and I/O APICs of the machine in its ACPI tables (ACPI 6.5,
// chapter 5): RSDP → XSDT (or RSDT when the RSDP is revision 0) → MADT.
//
// The kernel parses the tables before the Go runtime starts, so nothing here allocates, and
// errors are constants of type Error (returning one never allocates). Memory is read through a
// Memory function so that host tests can parse table images captured from QEMU.
package acpi

import "encoding/binary"

// Memory returns the n bytes at physical address addr, or nil when they cannot be read.
type Memory func(addr uint64, n int) []byte

// Limits of what Info records. Counts go on past them, so callers can report the overflow.
const (
	MaxCPUs    = 64
	MaxIOAPICs = 8
	MaxTables  = 32
)

// Error is a parse failure.
type Error uint8

const (
	OK Error = iota
	ErrNoRSDP
	ErrRSDPChecksum
	ErrRootUnreadable
	ErrRootChecksum
	ErrRootSignature
	ErrNoMADT
	ErrMADTChecksum
	ErrMADTTruncated
)

var errorText = [...]string{
	OK:                "no error",
	ErrNoRSDP:         "acpi: no RSDP at the given address",
	ErrRSDPChecksum:   "acpi: RSDP checksum mismatch",
	ErrRootUnreadable: "acpi: RSDT/XSDT outside readable memory",
	ErrRootChecksum:   "acpi: RSDT/XSDT checksum mismatch",
	ErrRootSignature:  "acpi: root table has neither an RSDT nor an XSDT signature",
	ErrNoMADT:         "acpi: no MADT (APIC) table",
	ErrMADTChecksum:   "acpi: MADT checksum mismatch",
	ErrMADTTruncated:  "acpi: MADT entry runs past the table's end",
}

func (e Error) Error() string {
	if int(e) < len(errorText) {
		return errorText[e]
	}
	return "acpi: unknown error"
}

// CPU is one enabled processor of the MADT.
type CPU struct {
	APICID uint32 // local APIC ID (x2APIC ID for type-9 entries)
	UID    uint32 // ACPI processor UID
}

// IOAPIC is one I/O APIC of the MADT.
type IOAPIC struct {
	ID      uint8
	Addr    uint32
	GSIBase uint32
}

// Info is what the tables say about the machine.
type Info struct {
	Revision  uint8   // RSDP revision: 0 means RSDT only, 2 means XSDT
	OEM       [6]byte // RSDP OEM ID
	Root      [4]byte // "XSDT" or "RSDT", the table actually used
	Tables    [MaxTables][4]byte
	NTables   int    // tables listed by the root (Tables holds the first MaxTables)
	LAPICAddr uint64 // from the MADT, or its type-5 override
	PCAT      bool   // MADT flag PCAT_COMPAT: 8259 PICs present (mask them)
	CPUs      [MaxCPUs]CPU
	NCPU      int // enabled processors (CPUs holds the first MaxCPUs)
	Disabled  int // processor entries neither enabled nor online-capable
	Hotplug   int // online-capable processors: not running now, not to be started
	IOAPICs   [MaxIOAPICs]IOAPIC
	NIOAPIC   int
	Overrides int // interrupt source overrides (type 2)
	NMIs      int // local APIC NMI entries (types 4 and 10)
}

const (
	rsdpV1Bytes   = 20
	rsdpV2Bytes   = 36
	headerBytes   = 36
	madtEntries   = headerBytes + 8
	flagEnabled   = 1 << 0
	flagOnlineCap = 1 << 1
)

// MADT entry types (ACPI 6.5, Table 5.45).
const (
	madtLAPIC           = 0
	madtIOAPIC          = 1
	madtOverride        = 2
	madtLAPICNMI        = 4
	madtLAPICAddr       = 5
	madtX2APIC          = 9
	madtX2APICNMI       = 10
	x2apicIDPlaceholder = 0xffffffff
)

func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// sdt returns the whole table at addr after checking that it is readable and sums to zero.
func sdt(mem Memory, addr uint64) ([]byte, bool, bool) {
	h := mem(addr, headerBytes)
	if h == nil {
		return nil, false, false
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if n < headerBytes {
		return nil, false, false
	}
	b := mem(addr, int(n))
	if b == nil {
		return nil, false, false
	}
	return b, true, checksum(b) == 0
}

// Walk calls fn for the RSDP and then for every table the root table lists, in order, with
// its address and bytes. It stops at the first error.
func Walk(mem Memory, rsdp uint64, fn func(addr uint64, b []byte)) Error {
	root, at, r, e := rootTable(mem, rsdp)
	if e != OK {
		return e
	}
	fn(rsdp, r)
	fn(at, root)
	forEachEntry(root, func(addr uint64) {
		if b, ok, _ := sdt(mem, addr); ok {
			fn(addr, b)
		}
	})
	return OK
}

// rootTable checks the RSDP and returns the root table, its address and the RSDP's bytes.
func rootTable(mem Memory, rsdp uint64) (root []byte, at uint64, r []byte, e Error) {
	r = mem(rsdp, rsdpV1Bytes)
	if r == nil || string(r[:8]) != "RSD PTR " {
		return nil, 0, nil, ErrNoRSDP
	}
	if checksum(r) != 0 {
		return nil, 0, nil, ErrRSDPChecksum
	}
	if r[15] >= 2 {
		if r = mem(rsdp, rsdpV2Bytes); r == nil {
			return nil, 0, nil, ErrNoRSDP
		}
		if checksum(r) != 0 {
			return nil, 0, nil, ErrRSDPChecksum
		}
	}
	at = rootAddr(r)
	root, ok, sum := sdt(mem, at)
	switch {
	case !ok:
		return nil, 0, nil, ErrRootUnreadable
	case !sum:
		return nil, 0, nil, ErrRootChecksum
	case string(root[:4]) != "XSDT" && string(root[:4]) != "RSDT":
		return nil, 0, nil, ErrRootSignature
	}
	return root, at, r, OK
}

// rootAddr is the XSDT when the (checked) RSDP r is revision 2 or later and gives one, else
// the RSDT (microvm's RSDP is revision 2 with a zero RSDT).
func rootAddr(r []byte) uint64 {
	if r[15] >= 2 {
		if x := binary.LittleEndian.Uint64(r[24:]); x != 0 {
			return x
		}
	}
	return uint64(binary.LittleEndian.Uint32(r[16:]))
}

func forEachEntry(root []byte, fn func(addr uint64)) {
	size := 4
	if string(root[:4]) == "XSDT" {
		size = 8
	}
	for off := headerBytes; off+size <= len(root); off += size {
		if size == 8 {
			fn(binary.LittleEndian.Uint64(root[off:]))
		} else {
			fn(uint64(binary.LittleEndian.Uint32(root[off:])))
		}
	}
}

// Parse reads the RSDP at rsdp, its root table and the MADT into info.
func Parse(mem Memory, rsdp uint64, info *Info) Error {
	*info = Info{}
	root, _, r, e := rootTable(mem, rsdp)
	if e != OK {
		return e
	}
	info.Revision = r[15]
	copy(info.OEM[:], r[9:15])
	copy(info.Root[:], root[:4])
	var madt uint64
	forEachEntry(root, func(addr uint64) {
		h := mem(addr, headerBytes)
		if h == nil {
			return
		}
		if info.NTables < MaxTables {
			copy(info.Tables[info.NTables][:], h[:4])
		}
		info.NTables++
		if string(h[:4]) == "APIC" && madt == 0 {
			madt = addr
		}
	})
	if madt == 0 {
		return ErrNoMADT
	}
	b, ok, sum := sdt(mem, madt)
	switch {
	case !ok || len(b) < madtEntries:
		return ErrNoMADT
	case !sum:
		return ErrMADTChecksum
	}
	return parseMADT(b, info)
}

func parseMADT(b []byte, info *Info) Error {
	le := binary.LittleEndian
	info.LAPICAddr = uint64(le.Uint32(b[headerBytes:]))
	info.PCAT = le.Uint32(b[headerBytes+4:])&1 != 0
	for off := madtEntries; off < len(b); {
		if off+2 > len(b) {
			return ErrMADTTruncated
		}
		typ, n := b[off], int(b[off+1])
		if n < 2 || off+n > len(b) {
			return ErrMADTTruncated
		}
		e := b[off : off+n]
		switch {
		case typ == madtLAPIC && n >= 8:
			info.addCPU(uint32(e[3]), uint32(e[2]), le.Uint32(e[4:]))
		case typ == madtX2APIC && n >= 16:
			if id := le.Uint32(e[4:]); id != x2apicIDPlaceholder {
				info.addCPU(id, le.Uint32(e[12:]), le.Uint32(e[8:]))
			}
		case typ == madtIOAPIC && n >= 12:
			if info.NIOAPIC < MaxIOAPICs {
				info.IOAPICs[info.NIOAPIC] = IOAPIC{ID: e[2], Addr: le.Uint32(e[4:]), GSIBase: le.Uint32(e[8:])}
			}
			info.NIOAPIC++
		case typ == madtOverride:
			info.Overrides++
		case typ == madtLAPICNMI || typ == madtX2APICNMI:
			info.NMIs++
		case typ == madtLAPICAddr && n >= 12:
			info.LAPICAddr = le.Uint64(e[4:])
		}
		off += n
	}
	return OK
}

func (info *Info) addCPU(apicID, uid, flags uint32) {
	switch {
	case flags&flagEnabled != 0:
		if info.NCPU < MaxCPUs {
			info.CPUs[info.NCPU] = CPU{APICID: apicID, UID: uid}
		}
		info.NCPU++
	case flags&flagOnlineCap != 0:
		info.Hotplug++
	default:
		info.Disabled++
	}
}
