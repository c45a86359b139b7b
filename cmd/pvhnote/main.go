// Command pvhnote makes a static Go ELF bootable through PVH (QEMU -kernel, Xen PVH,
// Firecracker, Cloud Hypervisor) by turning its build-ID note into a PVH entry note.
//
//	pvhnote kernel.elf
package main

import (
	"fmt"
	"os"

	"tracebed/pvh"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: pvhnote KERNEL.elf")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(path string) error {
	img, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("pvhnote: %w", err)
	}
	if err := pvh.AddNote(img); err != nil {
		return fmt.Errorf("%w (%s)", err, path)
	}
	return os.WriteFile(path, img, 0o755)
}
