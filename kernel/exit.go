package kernel

import (
	"tracebed/amd64"
	"tracebed/kernel/ktest"
)

// QEMU's isa-debug-exit device (iobase 0xf4) ends the VM with status (value<<1)|1.
const portDebugExit = 0xf4

// debugExit leaves QEMU with one of the ktest exit values, or halts forever when the device is
// missing (the host's timeout then reports a hang).
//
// Trap context allowed.
func debugExit(v uint32) {
	amd64.Out32(portDebugExit, v)
	amd64.Stop() // interrupts stay off: this may be the end of a fatal trap
}

// exitGroup maps the runtime's exit status: 0 pass, 1 fail, anything else (2 is what the
// runtime uses after a panic or a fatal error) fatal.
//
// Kernel context, klock held.
func exitGroup(status int) {
	var k kbuf
	k.s("tracebed: exit_group(").dec(int64(status)).s(")").out()
	switch status {
	case 0:
		debugExit(ktest.ExitPass)
	case 1:
		debugExit(ktest.ExitFail)
	default:
		debugExit(ktest.ExitFatal)
	}
}
