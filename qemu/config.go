// Package qemu is the host side of tracebed: it builds the kernel image, starts QEMU without
// a shell, streams the serial console live, parses the KTAP it carries, enforces a timeout and
// turns the exit status into an outcome.
package qemu

import (
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Config describes one boot.
type Config struct {
	QEMU      string        // binary; default qemu-system-x86_64
	Kernel    string        // PVH ELF image
	Machine   string        // default q35
	CPU       string        // default max (host with kvm)
	Accel     string        // tcg (default) or kvm
	SMP       int           // CPUs; default 1
	MemoryMiB int           // default 1024
	Append    string        // kernel command line
	Extra     []string      // further QEMU arguments
	Timeout   time.Duration // the run is killed and reported as a hang after this
	GDB       bool          // -s -S: wait for GDB on tcp::1234

	DiagnoseAfter time.Duration // if > 0: diagnose the guest over QMP after this long (Run)
}

// Limits on what a Config may ask for.
const (
	MaxSMP       = 32 // kernel.MaxCPUs
	MinMemoryMiB = 128
	MaxMemoryMiB = 3072 // the kernel manages RAM below 4 GiB only
)

func (c Config) withDefaults() Config {
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.Machine == "" {
		c.Machine = "q35"
	}
	if c.Accel == "" {
		c.Accel = "tcg"
	}
	if c.CPU == "" {
		c.CPU = "max"
		if c.Accel == "kvm" {
			c.CPU = "host"
		}
	}
	if c.SMP == 0 {
		c.SMP = 1
	}
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 1024
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	return c
}

// Validate reports the first thing wrong with c.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Kernel == "":
		return fmt.Errorf("qemu: no kernel image given")
	case c.SMP < 1 || c.SMP > MaxSMP:
		return fmt.Errorf("qemu: %d CPUs requested; the kernel drives 1 to %d", c.SMP, MaxSMP)
	case c.MemoryMiB < MinMemoryMiB || c.MemoryMiB > MaxMemoryMiB:
		return fmt.Errorf("qemu: %d MiB of memory requested; use %d to %d", c.MemoryMiB, MinMemoryMiB, MaxMemoryMiB)
	case c.Accel != "tcg" && c.Accel != "kvm":
		return fmt.Errorf("qemu: accelerator %q: use tcg or kvm", c.Accel)
	case c.Timeout < 0:
		return fmt.Errorf("qemu: negative timeout %v", c.Timeout)
	case c.DiagnoseAfter < 0:
		return fmt.Errorf("qemu: negative diagnosis delay %v", c.DiagnoseAfter)
	case !machineRE.MatchString(c.Machine):
		return fmt.Errorf("qemu: machine %s: use q35, pc or microvm (or a versioned pc-q35-X.Y, pc-i440fx-X.Y), optionally with ,key=value options", Quote(c.Machine))
	}
	return nil
}

// Machines is what Validate accepts as a machine name: the x86 machines that boot a PVH
// kernel, versioned or not, with QEMU's ",key=value" options.
var machineRE = regexp.MustCompile(`^(q35|pc|microvm|pc-q35-\d+\.\d+|pc-i440fx-\d+\.\d+)(,[a-z0-9-]+=[a-z0-9-]+)*$`)

// Args is QEMU's argument list for c (without the binary).
func (c Config) Args() []string {
	c = c.withDefaults()
	a := []string{
		"-machine", c.Machine,
		"-accel", c.Accel,
		"-cpu", c.CPU,
		"-smp", strconv.Itoa(c.SMP),
		"-m", strconv.Itoa(c.MemoryMiB),
		"-display", "none",
		"-monitor", "none",
		"-serial", "stdio",
		"-no-reboot",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel", c.Kernel,
	}
	if c.Append != "" {
		a = append(a, "-append", c.Append)
	}
	if c.GDB {
		a = append(a, "-s", "-S")
	}
	return append(a, c.Extra...)
}
