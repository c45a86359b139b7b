// Package pvh is the host side of the PVH boot protocol: it turns a static Go ELF into an image
// that QEMU -kernel, Xen PVH, Firecracker and Cloud Hypervisor enter in 32-bit mode.
package pvh

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
)

// The PVH entry note (Xen public/elfnote.h): name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY, and
// a descriptor holding the 32-bit physical entry address. QEMU reads the descriptor as a
// size_t, so it is 8 bytes here.
const (
	noteTypePhys32Entry = 18
	noteName            = "Xen\x00"
	noteDescBytes       = 8
	noteBytes           = 12 + len(noteName) + noteDescBytes
	phdrBytes           = 56
	shdrBytes           = 64
)

// ErrNoRoom: the image has no PT_NOTE segment that can hold the note.
var ErrNoRoom = errors.New("no PT_NOTE segment large enough for the PVH note")

// AddNote rewrites the only PT_NOTE segment of an ELF64 image (the Go linker's
// .note.go.buildid) into the PVH entry note pointing at the ELF entry, in place, and trims the
// segment and its section to the note's size. The image length does not change.
func AddNote(img []byte) error {
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return fmt.Errorf("pvh: not an ELF file: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("pvh: want an ELF64 x86-64 image, have %v %v", f.Class, f.Machine)
	}
	if f.Entry >= 1<<32 {
		return fmt.Errorf("pvh: entry %#x is above 4 GiB: PVH enters in 32-bit mode", f.Entry)
	}
	var note *elf.Prog
	idx := -1
	for i, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			if note != nil {
				return fmt.Errorf("pvh: more than one PT_NOTE segment")
			}
			note, idx = p, i
		}
	}
	if note == nil || note.Filesz < uint64(noteBytes) {
		return fmt.Errorf("pvh: %w", ErrNoRoom)
	}
	if note.Off+uint64(noteBytes) > uint64(len(img)) {
		return fmt.Errorf("pvh: PT_NOTE at %#x lies outside the file", note.Off)
	}
	le := binary.LittleEndian
	n := img[note.Off : note.Off+uint64(noteBytes)]
	le.PutUint32(n[0:], uint32(len(noteName)))
	le.PutUint32(n[4:], noteDescBytes)
	le.PutUint32(n[8:], noteTypePhys32Entry)
	copy(n[12:], noteName)
	le.PutUint64(n[12+len(noteName):], f.Entry)

	phoff := le.Uint64(img[32:])
	ph := img[phoff+uint64(idx)*phdrBytes:]
	le.PutUint64(ph[32:], uint64(noteBytes)) // p_filesz
	le.PutUint64(ph[40:], uint64(noteBytes)) // p_memsz

	shoff := le.Uint64(img[40:])
	for i, s := range f.Sections {
		if s.Type == elf.SHT_NOTE && s.Offset == note.Off {
			le.PutUint64(img[shoff+uint64(i)*shdrBytes+32:], uint64(noteBytes)) // sh_size
		}
	}
	return nil
}

// Entry returns the entry address recorded in an image's PVH note, if it has one.
func Entry(img []byte) (uint64, bool) {
	f, err := elf.NewFile(bytes.NewReader(img))
	if err != nil {
		return 0, false
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE || p.Off+p.Filesz > uint64(len(img)) {
			continue
		}
		b := img[p.Off : p.Off+p.Filesz]
		for len(b) >= 12 {
			le := binary.LittleEndian
			nsz, dsz, typ := le.Uint32(b), le.Uint32(b[4:]), le.Uint32(b[8:])
			nend := 12 + (uint64(nsz)+3)&^3
			dend := nend + (uint64(dsz)+3)&^3
			if dend > uint64(len(b)) {
				break
			}
			if typ == noteTypePhys32Entry && string(b[12:12+nsz]) == noteName && dsz >= 4 {
				if dsz >= 8 {
					return le.Uint64(b[nend:]), true
				}
				return uint64(le.Uint32(b[nend:])), true
			}
			b = b[dend:]
		}
	}
	return 0, false
}
