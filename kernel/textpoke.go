package kernel

import (
	"unsafe"

	"tracebed/amd64"
	"tracebed/kernel/ktest"
	"tracebed/xcall"
)

// What function-boundary tracing (package fbt/live) needs from the kernel: writing kernel
// text through a temporary alias, out-of-line (XOL) memory mapped twice, and a point at which
// every CPU has serialised.

// Addresses in the upper half the kernel maps for tracing. UnmappedBase's quarter below them
// is never mapped (the traps suite reads there to fault).
const (
	pokeAlias = 0xffff_d000_0000_0000 // one page: the text page being patched, writable, NX
	// refetchAlias is the page after pokeAlias, and MaxCPUs pages from there are CPU i's own
	// aliases for RefetchText (refetchAlias + i pages), all in pokeAlias's page table.
	refetchAlias = pokeAlias + pageSize
	// XOLFar is at least 4 GiB from the text (which lies in the low 4 GiB): every RIP-relative
	// operand and branch of a copy there takes the relocator's far path.
	XOLFar      = 0xffff_f000_0000_0000
	xolFarWrite = 0xffff_e000_0000_0000
	// XOLNear is within rel32 reach of the text (the top 256 MiB of the address space is at a
	// 32-bit signed distance from the low 2 GiB).
	XOLNear      = 0xffff_ffff_f000_0000
	xolNearWrite = 0xffff_ffff_e000_0000
	// XOLMax bounds an XOL area's size.
	XOLMax = 64 << 20
)

// Poke is one byte for PokeTexts to store.
type Poke struct {
	Addr uintptr
	B    byte
}

// pokeBatch is how many pokes one kernel call of PokeTexts makes at most: about 1 ms with
// interrupts off under TCG. Fewer calls matter when the caller runs under its own probes and
// loaded CPUs: between two calls it can be preempted and wait for a P.
const pokeBatch = 1024

// PokeTexts stores each byte of p at its address, a byte of kernel text, through a writable
// alias of its page (as Linux's text_poke does): the text mapping itself stays read-only. Each
// is one store of one byte, so another CPU executing the instruction sees the old byte or the
// new one, never a mix; the caller serialises pokes and the CPUs (SyncCPUs) as the
// cross-modifying-code rules require. The pokes are made in kernel calls of up to 1,024 that
// map a page's alias once for each run of pokes on that page (sorted by address, p costs one
// mapping per page). It returns how many it stored: len(p), unless p[n].Addr is not kernel
// text.
//
// Goroutine code (kernel calls).
func PokeTexts(p []Poke) int {
	n := 0
	for n < len(p) {
		k := min(len(p)-n, pokeBatch)
		done := int(kcall(kcPokes, uintptr(unsafe.Pointer(&p[n])), uintptr(k)))
		n += done
		if done < k {
			break
		}
	}
	return n
}

// pokeTexts stores p's bytes, mapping the alias again only when the page changes, and returns
// how many it stored.
//
// Kernel context (a kernel call).
func pokeTexts(p []Poke) int {
	vmLock.lock()
	mapped := uint64(0) // the text page the alias maps; 0: none
	n := 0
	for ; n < len(p); n++ {
		addr := p[n].Addr
		if addr < kernelStart() || addr >= kernelTextEnd() {
			break
		}
		if page := uint64(addr) &^ (pageSize - 1); page != mapped { // identity-mapped: the frame is the address
			if mapped != 0 {
				kpt.unmapPage(pokeAlias)
				invlpg(pokeAlias)
				mapped = 0
			}
			if kpt.mapPage(pokeAlias, page, pteWrite|pteNX) != ptOK {
				break
			}
			invlpg(pokeAlias) // no stale (speculatively cached) translation of the alias here
			mapped = page
		}
		*(*byte)(unsafe.Pointer(uintptr(pokeAlias + uint64(addr)%pageSize))) = p[n].B
	}
	if mapped != 0 {
		kpt.unmapPage(pokeAlias)
		invlpg(pokeAlias) // only this CPU ever touched the alias
	}
	vmLock.unlock()
	return n
}

// refetchPTE is each CPU's page-table entry for its refetch alias (made by initRefetch).
var refetchPTE [MaxCPUs]uintptr

// initRefetch makes the page tables of every CPU's refetch alias, so that RefetchText only
// writes its own entry. Boot, before any AP runs.
func initRefetch() {
	for i := range refetchPTE {
		e, r := kpt.entry(refetchAlias+uint64(i)*pageSize, true)
		if r != ptOK || e == nil {
			var k kbuf
			k.s("tracebed: fatal: no page table for the refetch alias (").dec(int64(r)).s(")").out()
			debugExit(ktest.ExitFatal)
		}
		refetchPTE[i] = uintptr(unsafe.Pointer(e))
	}
}

// RefetchText stores the byte at addr, a byte of kernel text, again as it already is, through
// this CPU's own alias of its page. On hardware that changes nothing. Under QEMU's TCG it makes
// every vCPU drop its translations of that byte: a vCPU that translated an INT3 while another
// vCPU was restoring the original byte can link the translation to its page after the
// restore's invalidation went by, and then run that INT3 for good while memory holds the
// original (a disabled probe's site, re-executed by the #BP handler, trapped again on every
// try: CI's hang in the fbt scale case, one vCPU per run looping at a runtime function's
// entry with the right byte in memory). false when addr is not kernel text.
//
// Trap context allowed, interrupts off. No lock: the alias is this CPU's alone (no other CPU
// ever uses its address, so none caches its translation); the caller makes sure that no other
// CPU stores to addr meanwhile — fbt's #BP handler by answering no cross-CPU call between
// reading its site disabled and this store (so no lock wait, which drains calls, may come in
// between).
func RefetchText(addr uintptr) bool {
	if addr < kernelStart() || addr >= kernelTextEnd() {
		return false
	}
	id := thisCPU().id
	e := (*uint64)(unsafe.Pointer(refetchPTE[id]))
	if e == nil {
		return false
	}
	va := refetchAlias + uint64(id)*pageSize
	*e = uint64(addr)&^(pageSize-1) | pteWrite | pteNX | ptePresent
	invlpg(va)
	*(*byte)(unsafe.Pointer(uintptr(va + uint64(addr)%pageSize))) = *(*byte)(unsafe.Pointer(addr))
	*e = 0
	invlpg(va)
	return true
}

// MapXOL maps size bytes of fresh zeroed memory twice: at exec read-only and executable, and at
// the matching write address (XOLFar's or XOLNear's alias) writable and NX, so that copies are
// written through one mapping and run from the other (W^X). It returns the write address.
//
// Goroutine code (a kernel call), once per area.
func MapXOL(exec uintptr, size uintptr) (write uintptr, ok bool) {
	w := kcall(kcMapXOL, exec, size)
	return w, w != 0
}

// Kernel context (a kernel call).
func mapXOL(exec uintptr, size uintptr) (write uintptr, ok bool) {
	switch exec {
	case XOLFar:
		write = xolFarWrite
	case XOLNear:
		write = xolNearWrite
	default:
		return 0, false
	}
	if size == 0 || size > XOLMax {
		return 0, false
	}
	vmLock.lock()
	ok = true
	for off := uint64(0); off < uint64(size) && ok; off += pageSize {
		pa, got := pmem.alloc()
		ok = got && kpt.mapPage(uint64(exec)+off, pa, 0) == ptOK &&
			kpt.mapPage(uint64(write)+off, pa, pteWrite|pteNX) == ptOK
		if ok {
			zeroPage(pa)
		}
	}
	vmLock.unlock()
	return write, ok
}

var syncCall xcall.Func

// serialize is SyncCPUs' cross-CPU call: CPUID serialises (SDM Vol. 3A, 9.3).
//
// Trap context (a cross-CPU call).
func serialize(uintptr) { amd64.CPUID(0, 0) }

// SyncCPUs returns once every online CPU has executed a serialising instruction after the
// call began: after it, no CPU runs an instruction fetched before a preceding PokeTexts, and
// none is inside a trap handler that began before it (handlers run with interrupts off, so
// the call waits for them). false if a CPU did not answer.
//
// Goroutine code (a kernel call).
func SyncCPUs() bool { return kcall(kcSync, 0, 0) == 1 }

// OnCPUStacks reports whether a lies in this CPU's kernel or IST stacks: a trap that
// interrupted code running there has its frame right below the interrupted RSP.
//
// Trap context allowed.
func OnCPUStacks(a uint64) bool { return thisCPU().onStacks(a) }
