package acpi

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// image is physical memory rebuilt from a capture made with the kernel's acpidump=1: one
// "tracebed: acpi <address> <hex bytes>" line per table, the RSDP first.
type image struct {
	rsdp uint64
	seg  map[uint64][]byte
}

func load(t *testing.T, name string) *image {
	f, err := os.Open("testdata/" + name)
	require.NoError(t, err)
	defer f.Close()
	im := &image{seg: map[uint64][]byte{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		require.Len(t, fs, 4, "line %q", sc.Text())
		addr, err := strconv.ParseUint(fs[2], 0, 64)
		require.NoError(t, err)
		b, err := hex.DecodeString(fs[3])
		require.NoError(t, err)
		if len(im.seg) == 0 {
			im.rsdp = addr
		}
		im.seg[addr] = b
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, im.seg)
	return im
}

func (im *image) mem(addr uint64, n int) []byte {
	for base, b := range im.seg {
		if addr >= base && addr+uint64(n) <= base+uint64(len(b)) {
			return b[addr-base : addr-base+uint64(n)]
		}
	}
	return nil
}

func TestParseCapturedTables(t *testing.T) {
	for _, tc := range []struct {
		file             string
		rev              uint8
		root             string
		tables           []string
		apicIDs          []uint32
		disabled, ioapic int
	}{
		{"q35-smp4.txt", 0, "RSDT", []string{"FACP", "APIC", "HPET", "MCFG", "WAET"}, []uint32{0, 1, 2, 3}, 0, 1},
		{"q35-smp2-maxcpus4.txt", 0, "RSDT", []string{"FACP", "APIC", "HPET", "MCFG", "WAET"}, []uint32{0, 1}, 2, 1},
		{"pc-smp3.txt", 0, "RSDT", []string{"FACP", "APIC", "HPET", "WAET"}, []uint32{0, 1, 2}, 0, 1},
		// microvm: revision 2 with a zero RSDT, so only the XSDT leads anywhere; two IOAPICs.
		{"microvm-smp2.txt", 2, "XSDT", []string{"FACP", "APIC"}, []uint32{0, 1}, 0, 2},
	} {
		t.Run(tc.file, func(t *testing.T) {
			im := load(t, tc.file)
			var info Info
			require.Equal(t, OK, Parse(im.mem, im.rsdp, &info))
			assert.Equal(t, tc.rev, info.Revision)
			assert.Equal(t, "BOCHS ", string(info.OEM[:]))
			assert.Equal(t, tc.root, string(info.Root[:]))
			var tables []string
			for i := 0; i < info.NTables; i++ {
				tables = append(tables, string(info.Tables[i][:]))
			}
			assert.Equal(t, tc.tables, tables)
			assert.Equal(t, uint64(0xfee00000), info.LAPICAddr)
			assert.True(t, info.PCAT)
			require.Equal(t, len(tc.apicIDs), info.NCPU)
			for i, id := range tc.apicIDs {
				assert.Equal(t, id, info.CPUs[i].APICID)
				assert.Equal(t, id, info.CPUs[i].UID)
			}
			assert.Equal(t, tc.disabled, info.Disabled)
			require.Equal(t, tc.ioapic, info.NIOAPIC)
			assert.Equal(t, IOAPIC{ID: 0, Addr: 0xfec00000, GSIBase: 0}, info.IOAPICs[0])
			if tc.ioapic == 2 {
				assert.Equal(t, IOAPIC{ID: 1, Addr: 0xfec10000, GSIBase: 24}, info.IOAPICs[1])
			}
			assert.Positive(t, info.NMIs)

			// Walk visits the RSDP, the root and every table, in that order.
			var seen []string
			require.Equal(t, OK, Walk(im.mem, im.rsdp, func(addr uint64, b []byte) {
				seen = append(seen, string(b[:4]))
			}))
			assert.Equal(t, append([]string{"RSD ", tc.root}, tc.tables...), seen)
		})
	}
}

// clone returns a deep copy of the image so a test can corrupt it.
func (im *image) clone() *image {
	c := &image{rsdp: im.rsdp, seg: map[uint64][]byte{}}
	for a, b := range im.seg {
		c.seg[a] = append([]byte(nil), b...)
	}
	return c
}

func (im *image) table(sig string) (uint64, []byte) {
	for a, b := range im.seg {
		if string(b[:4]) == sig {
			return a, b
		}
	}
	return 0, nil
}

// fixSum makes b's checksum byte (at off) valid again after an edit.
func fixSum(b []byte, off int) {
	b[off] = 0
	b[off] = -checksum(b)
}

func TestParseRejectsBrokenTables(t *testing.T) {
	base := load(t, "q35-smp4.txt")
	for _, tc := range []struct {
		name string
		edit func(im *image)
		want Error
	}{
		{"no RSDP signature", func(im *image) { im.seg[im.rsdp][0] = 'X' }, ErrNoRSDP},
		{"RSDP checksum", func(im *image) { im.seg[im.rsdp][9]++ }, ErrRSDPChecksum},
		{"RSDP unreadable", func(im *image) { im.rsdp += 1 << 30 }, ErrNoRSDP},
		{"root checksum", func(im *image) { _, b := im.table("RSDT"); b[10]++ }, ErrRootChecksum},
		{"root missing", func(im *image) { a, _ := im.table("RSDT"); delete(im.seg, a) }, ErrRootUnreadable},
		{"root signature", func(im *image) { _, b := im.table("RSDT"); b[0] = 'Q'; fixSum(b, 9) }, ErrRootSignature},
		{"no MADT", func(im *image) { _, b := im.table("APIC"); b[0] = 'X' }, ErrNoMADT},
		{"MADT checksum", func(im *image) { _, b := im.table("APIC"); b[40]++ }, ErrMADTChecksum},
		{"MADT entry too long", func(im *image) {
			_, b := im.table("APIC")
			b[madtEntries+1] = 200
			fixSum(b, 9)
		}, ErrMADTTruncated},
		{"MADT entry length 0", func(im *image) {
			_, b := im.table("APIC")
			b[madtEntries+1] = 0
			fixSum(b, 9)
		}, ErrMADTTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			im := base.clone()
			tc.edit(im)
			var info Info
			got := Parse(im.mem, im.rsdp, &info)
			assert.Equal(t, tc.want, got)
			assert.NotEmpty(t, got.Error())
		})
	}
}

// madt builds an image with one MADT holding the given entries behind an XSDT.
func madt(entries ...[]byte) *image {
	le := binary.LittleEndian
	const rsdpAt, xsdtAt, madtAt = 0x1000, 0x2000, 0x3000
	m := make([]byte, madtEntries)
	copy(m, "APIC")
	le.PutUint32(m[headerBytes:], 0xfee00000)
	for _, e := range entries {
		m = append(m, e...)
	}
	le.PutUint32(m[4:], uint32(len(m)))
	fixSum(m, 9)
	x := make([]byte, headerBytes+8)
	copy(x, "XSDT")
	le.PutUint32(x[4:], uint32(len(x)))
	le.PutUint64(x[headerBytes:], madtAt)
	fixSum(x, 9)
	r := make([]byte, rsdpV2Bytes)
	copy(r, "RSD PTR ")
	r[15] = 2
	le.PutUint32(r[20:], rsdpV2Bytes)
	le.PutUint64(r[24:], xsdtAt)
	fixSum(r[:rsdpV1Bytes], 8)
	fixSum(r, 32)
	return &image{rsdp: rsdpAt, seg: map[uint64][]byte{rsdpAt: r, xsdtAt: x, madtAt: m}}
}

func lapicEntry(uid, id byte, flags uint32) []byte {
	e := []byte{madtLAPIC, 8, uid, id, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(e[4:], flags)
	return e
}

func x2apicEntry(id, uid, flags uint32) []byte {
	e := make([]byte, 16)
	e[0], e[1] = madtX2APIC, 16
	binary.LittleEndian.PutUint32(e[4:], id)
	binary.LittleEndian.PutUint32(e[8:], flags)
	binary.LittleEndian.PutUint32(e[12:], uid)
	return e
}

func TestMADTEntryKinds(t *testing.T) {
	override := make([]byte, 12)
	override[0], override[1] = madtLAPICAddr, 12
	binary.LittleEndian.PutUint64(override[4:], 0xfee10000)
	im := madt(
		lapicEntry(0, 0, flagEnabled),
		lapicEntry(1, 4, 0),             // disabled
		lapicEntry(2, 6, flagOnlineCap), // hot-pluggable, not running
		x2apicEntry(300, 7, flagEnabled),
		x2apicEntry(x2apicIDPlaceholder, 8, flagEnabled), // placeholder: ignored
		[]byte{0x7f, 4, 0, 0},                            // unknown type: skipped
		override,
	)
	var info Info
	require.Equal(t, OK, Parse(im.mem, im.rsdp, &info))
	assert.Equal(t, "XSDT", string(info.Root[:]))
	require.Equal(t, 2, info.NCPU)
	assert.Equal(t, CPU{APICID: 0, UID: 0}, info.CPUs[0])
	assert.Equal(t, CPU{APICID: 300, UID: 7}, info.CPUs[1])
	assert.Equal(t, 1, info.Disabled)
	assert.Equal(t, 1, info.Hotplug)
	assert.Equal(t, uint64(0xfee10000), info.LAPICAddr)
	assert.False(t, info.PCAT)
}

func TestMADTCountsCPUsBeyondTheArray(t *testing.T) {
	var es [][]byte
	for i := 0; i < MaxCPUs+5; i++ {
		es = append(es, lapicEntry(byte(i), byte(i), flagEnabled))
	}
	var info Info
	require.Equal(t, OK, Parse(madt(es...).mem, 0x1000, &info))
	assert.Equal(t, MaxCPUs+5, info.NCPU, "the count goes on so the kernel can report too many CPUs")
	assert.Equal(t, uint32(MaxCPUs-1), info.CPUs[MaxCPUs-1].APICID)
}

// FuzzParse: arbitrary bytes in place of the MADT never panic or read out of range.
func FuzzParse(f *testing.F) {
	f.Add(lapicEntry(0, 0, 1))
	f.Add([]byte{madtIOAPIC, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0})
	f.Add([]byte{0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var info Info
		e := Parse(madt(b).mem, 0x1000, &info)
		if e != OK && e != ErrMADTTruncated {
			t.Fatalf("unexpected %v", e)
		}
		assert.LessOrEqual(t, info.NCPU, len(b)/8)
	})
}
