package kernel

import "math/bits"

const pageSize = 4096

// frames is the physical page allocator: one bit per 4 KiB frame (1 = in use) over
// [base, base+n*pageSize). Everything starts in use; the memory map releases RAM and the boot
// code reserves what the kernel occupies. Callers serialise access with vmLock.
type frames struct {
	base uint64
	bits []uint64
	n    uint64
	free uint64
	next uint64 // word index where the next search starts
}

func (f *frames) init(base uint64, bitmap []uint64, n uint64) {
	if n > uint64(len(bitmap))*64 {
		n = uint64(len(bitmap)) * 64
	}
	f.base, f.bits, f.n, f.free, f.next = base, bitmap, n, 0, 0
	for i := range bitmap {
		bitmap[i] = ^uint64(0)
	}
}

// span clips [pa, pa+size) to whole frames inside the managed range; round selects whether
// partial frames at the edges are included (reserve) or excluded (release).
func (f *frames) span(pa, size uint64, round bool) (lo, hi uint64) {
	end := pa + size
	if end < pa {
		end = ^uint64(0)
	}
	if pa < f.base {
		pa = f.base
	}
	if end <= pa {
		return 0, 0
	}
	if round {
		lo, hi = (pa-f.base)/pageSize, (end-f.base+pageSize-1)/pageSize
	} else {
		lo, hi = (pa-f.base+pageSize-1)/pageSize, (end-f.base)/pageSize
	}
	if hi > f.n {
		hi = f.n
	}
	if lo > hi {
		lo = hi
	}
	return lo, hi
}

// release marks the whole frames inside [pa, pa+size) free.
func (f *frames) release(pa, size uint64) {
	lo, hi := f.span(pa, size, false)
	for i := lo; i < hi; i++ {
		if f.bits[i/64]&(1<<(i%64)) != 0 {
			f.bits[i/64] &^= 1 << (i % 64)
			f.free++
		}
	}
}

// reserve marks every frame touching [pa, pa+size) in use.
func (f *frames) reserve(pa, size uint64) {
	lo, hi := f.span(pa, size, true)
	for i := lo; i < hi; i++ {
		if f.bits[i/64]&(1<<(i%64)) == 0 {
			f.bits[i/64] |= 1 << (i % 64)
			f.free--
		}
	}
}

// alloc takes one free frame and returns its physical address.
//
// Kernel context, vmLock held. (Or boot, before any other CPU runs.)
func (f *frames) alloc() (uint64, bool) {
	words := (f.n + 63) / 64
	for k := uint64(0); k < words; k++ {
		w := (f.next + k) % words
		inv := ^f.bits[w]
		if w == words-1 && f.n%64 != 0 {
			inv &= 1<<(f.n%64) - 1
		}
		if inv == 0 {
			continue
		}
		b := uint64(bits.TrailingZeros64(inv))
		f.bits[w] |= 1 << b
		f.free--
		f.next = w
		return f.base + (w*64+b)*pageSize, true
	}
	return 0, false
}

// put returns a frame from alloc. It reports false for an address that is not a frame in use.
//
// Kernel context, vmLock held.
func (f *frames) put(pa uint64) bool {
	if pa < f.base || pa%pageSize != 0 || (pa-f.base)/pageSize >= f.n {
		return false
	}
	i := (pa - f.base) / pageSize
	if f.bits[i/64]&(1<<(i%64)) == 0 {
		return false
	}
	f.bits[i/64] &^= 1 << (i % 64)
	f.free++
	return true
}

func (f *frames) inUse(pa uint64) bool {
	i := (pa - f.base) / pageSize
	return pa >= f.base && i < f.n && f.bits[i/64]&(1<<(i%64)) != 0
}
