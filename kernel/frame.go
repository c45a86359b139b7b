package kernel

import "tracebed/trap"

// Frame is trap.Frame: the register state every kernel entry saves (layout: frame_amd64.h).
type Frame = trap.Frame

// VecSyscall marks a Frame built by the SYSCALL entry.
const VecSyscall = trap.VecSyscall
