package kernel

import "tracebed/amd64"

// idle halts until the next interrupt (STI;HLT is atomic: an interrupt made pending before
// the HLT still wakes it). Interrupts are off again on return.
func (c *CPU) idle() { amd64.Halt() }
