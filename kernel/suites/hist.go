package suites

import (
	"math/bits"
	"strconv"
	"strings"
)

// log2Hist is a latency histogram for a diagnostic line: counts of samples in [0, 2), [2, 4),
// [4, 8), ... of the samples' unit, up to the largest bucket used ("3,10,2"). The host's
// report draws it.
func log2Hist(samples []uint64) string {
	var counts [64]int
	top := 0
	for _, s := range samples {
		b := 0
		if s > 1 {
			b = bits.Len64(s) - 1
		}
		counts[b]++
		top = max(top, b)
	}
	parts := make([]string, top+1)
	for i := range parts {
		parts[i] = strconv.Itoa(counts[i])
	}
	return strings.Join(parts, ",")
}
