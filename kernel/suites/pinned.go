package suites

import (
	"runtime"
	"sync"

	"tracebed/kernel"
)

// onCPUs runs body(cpu, pinned) at once for every cpu in [first, n), each on a thread locked
// to it and pinned to that CPU (pinned is false if the pin failed), and returns when all have.
func onCPUs(first, n int, body func(cpu int, pinned bool)) {
	var wg sync.WaitGroup
	for cpu := first; cpu < n; cpu++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			defer kernel.UnpinCPU()
			body(cpu, kernel.PinCPU(cpu))
		}()
	}
	wg.Wait()
}
