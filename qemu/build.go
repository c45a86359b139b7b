package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"tracebed/pvh"
)

// LinkFlags place the image for PVH: ELF headers at 1 MiB, text right after (DESIGN.md §2),
// entry at the 32-bit PVH entry point.
const LinkFlags = "-T 0x101000 -E tracebed/kernel.pvhEntry"

// BuildKernel builds ./cmd/kernel of the module at root into out with the stock toolchain, as
// a static linux/amd64 ELF, and adds the PVH note.
func BuildKernel(root, out string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("build kernel: %w", err)
	}
	tmp := out + ".tmp"
	cmd := exec.Command("go", "build", "-ldflags", LinkFlags, "-o", tmp, "./cmd/kernel")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build kernel: %v\n%s", err, b)
	}
	img, err := os.ReadFile(tmp)
	if err != nil {
		return fmt.Errorf("build kernel: %w", err)
	}
	if err := pvh.AddNote(img); err != nil {
		return fmt.Errorf("build kernel: %w", err)
	}
	if err := os.WriteFile(tmp, img, 0o755); err != nil {
		return fmt.Errorf("build kernel: %w", err)
	}
	return os.Rename(tmp, out)
}
