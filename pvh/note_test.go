package pvh

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// buildELF links a tiny static Go program at the kernel's address, as the kernel is built.
func buildELF(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\ngo 1.26\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), []byte("package main\nfunc main() {}\n"), 0o644))
	cmd := exec.Command("go", "build", "-ldflags", "-T 0x101000", "-o", "x.elf", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	img, err := os.ReadFile(filepath.Join(dir, "x.elf"))
	require.NoError(t, err)
	return img
}

func TestAddNoteOnARealGoBinary(t *testing.T) {
	img := buildELF(t)
	size := len(img)
	_, ok := Entry(img)
	require.False(t, ok, "a fresh Go binary has no PVH note")
	require.NoError(t, AddNote(img))
	assert.Equal(t, size, len(img), "rewritten in place")

	f, err := elf.NewFile(bytes.NewReader(img))
	require.NoError(t, err)
	entry, ok := Entry(img)
	require.True(t, ok)
	assert.Equal(t, f.Entry, entry)
	var notes int
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			notes++
			assert.Equal(t, uint64(noteBytes), p.Filesz)
			assert.Equal(t, uint64(noteBytes), p.Memsz)
		}
	}
	assert.Equal(t, 1, notes)
	for _, s := range f.Sections {
		if s.Name == ".note.go.buildid" {
			assert.Equal(t, uint64(noteBytes), s.Size)
		}
	}
	// Exactly QEMU's view: name "Xen\0", type 18, an 8-byte descriptor.
	n := img[f.Progs[1].Off:]
	assert.Equal(t, []byte{4, 0, 0, 0, 8, 0, 0, 0, 18, 0, 0, 0, 'X', 'e', 'n', 0}, n[:16])
	// Running it again rewrites the same note.
	require.NoError(t, AddNote(img))
	again, _ := Entry(img)
	assert.Equal(t, entry, again)
}

func TestAddNoteRefusesBadInput(t *testing.T) {
	assert.ErrorContains(t, AddNote([]byte("not an elf")), "not an ELF")
	assert.ErrorContains(t, AddNote(nil), "not an ELF")
	img := buildELF(t)
	f, err := elf.NewFile(bytes.NewReader(img))
	require.NoError(t, err)
	// Shrink the PT_NOTE below the note's size.
	phoff := binary.LittleEndian.Uint64(img[32:])
	for i, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			binary.LittleEndian.PutUint64(img[phoff+uint64(i)*phdrBytes+32:], 8) // p_filesz
		}
	}
	err = AddNote(img)
	assert.ErrorIs(t, err, ErrNoRoom)
	// Truncated image.
	assert.Error(t, AddNote(buildELF(t)[:100]))
}
