package linux

// regionSet is the set of reserved virtual-address ranges: every range mmap has handed out
// (whatever its protection) plus what the kernel keeps for itself. Ranges are kept sorted,
// non-overlapping and merged when adjacent. Pure logic, tested on the host.
type regionSet struct {
	r [maxRegions]vrange
	n int
}

const maxRegions = 4096

type vrange struct{ start, end uint64 }

// overlaps reports whether [start, end) intersects a reserved range.
//
// Kernel context, klock held.
func (s *regionSet) overlaps(start, end uint64) bool {
	for i := 0; i < s.n; i++ {
		if s.r[i].start < end && start < s.r[i].end {
			return true
		}
		if s.r[i].start >= end {
			break
		}
	}
	return false
}

// add reserves [start, end), merging with neighbours; false when the table is full.
//
// Kernel context, klock held. (Or boot, before any other CPU runs.)
func (s *regionSet) add(start, end uint64) bool {
	if start >= end {
		return true
	}
	i := 0
	for i < s.n && s.r[i].end < start {
		i++
	}
	j := i
	for j < s.n && s.r[j].start <= end {
		if s.r[j].start < start {
			start = s.r[j].start
		}
		if s.r[j].end > end {
			end = s.r[j].end
		}
		j++
	}
	// s.r[i:j] merge into one range.
	if i == j {
		if s.n == maxRegions {
			return false
		}
		copy(s.r[i+1:s.n+1], s.r[i:s.n])
		s.n++
	} else {
		copy(s.r[i+1:], s.r[j:s.n])
		s.n -= j - i - 1
	}
	s.r[i] = vrange{start, end}
	return true
}

// remove releases [start, end), splitting a range if needed; false when a split finds the
// table full.
//
// Kernel context, klock held. (Or boot, before any other CPU runs.)
func (s *regionSet) remove(start, end uint64) bool {
	if start >= end {
		return true
	}
	for i := 0; i < s.n; i++ {
		r := s.r[i]
		if r.end <= start || r.start >= end {
			continue
		}
		switch {
		case r.start < start && r.end > end: // split
			if s.n == maxRegions {
				return false
			}
			copy(s.r[i+2:s.n+1], s.r[i+1:s.n])
			s.n++
			s.r[i] = vrange{r.start, start}
			s.r[i+1] = vrange{end, r.end}
			return true
		case r.start < start:
			s.r[i].end = start
		case r.end > end:
			s.r[i].start = end
		default:
			copy(s.r[i:], s.r[i+1:s.n])
			s.n--
			i--
		}
	}
	return true
}

// reserved returns the number of bytes reserved.
func (s *regionSet) reserved() uint64 {
	var n uint64
	for i := 0; i < s.n; i++ {
		n += s.r[i].end - s.r[i].start
	}
	return n
}
