package qemu

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"tracebed/pvh"
)

// LinkFlags place the image for PVH: -T sets where .text starts, and the linker puts the ELF
// headers one page below it, so 0x101000 gives headers at 1 MiB and text right after (with
// -T 0x100000 the headers would land at 0xff000, below 1 MiB). The entry is the 32-bit PVH
// entry point, which the PVH note (package pvh) also names.
const LinkFlags = "-T 0x101000 -E tracebed/kernel.pvhEntry"

// BuildKernel builds ./cmd/kernel of the module at root into out with the stock toolchain, as
// a static linux/amd64 ELF, and adds the PVH note.
func BuildKernel(root, out string) error { return BuildKernelWith(root, out) }

// BuildKernelWith is BuildKernel with extra go build flags (a test builds with
// -gcflags=tracebed/...=-l, say, so that no function of the module is inlined away).
func BuildKernelWith(root, out string, flags ...string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("build kernel: %w", err)
	}
	tmp := out + ".tmp"
	args := append([]string{"build", "-ldflags", LinkFlags, "-o", tmp}, flags...)
	cmd := exec.Command("go", append(args, "./cmd/kernel")...)
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
