package kernel

import "tracebed/amd64"

// idle halts until the next interrupt (STI;HLT is atomic: an interrupt made pending before
// the HLT still wakes it). Interrupts are off again on return.
//
// Kernel context, klock held: it drops klock while halted and takes it again.
func (c *CPU) idle() { amd64.Halt() }
