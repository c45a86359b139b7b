package live

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"tracebed/fbt"
	"tracebed/kernel"
	"tracebed/kernel/sched"
	"tracebed/trap"
)

// Boost slots: allocation, teardown and the reaper.
//
// A site's boosted copy lives in a slot of the XOL area from the enable that plans it until the
// disable that ends it. Disabling detaches the slot from the site (the next enable places a new
// copy) and frees it only when no thread can be inside it. After the disable's synchronisation
// no CPU can take the site's INT3 again and no #BP handler that read the site enabled is still
// running, so no thread can enter the slot any more; a thread already inside stays inside until
// it runs the copy's jump back, and it may be preempted there (the timer interrupt pending
// during the handler is taken at the copy's first instruction). The synchronisation is
// kernel.SyncThreads, which also snapshots every thread's RIP (saved, or read on the CPU running
// it) with no thread switched meanwhile: a slot no RIP lies in is free for good. The others go
// to the reaper, a goroutine that takes a new snapshot about every millisecond until they are
// free (each slot still in use at a snapshot counts a retry).
//
// A freed slot is filled with INT3 before it goes back to the free list (last in, first out, so
// a freed slot is the next one placed). A thread that resumes in a freed slot — what the reaper
// exists to prevent, and what fbt.reap=0 (free at once) lets happen — raises #BP there: counted
// as a use after free; a thread that had not begun the copy re-executes the site's original
// instruction instead, and any other is a fatal #BP.

// reapEvery is how often the reaper looks again at slots still in use.
const reapEvery = time.Millisecond

var (
	freeSlots []uintptr // free boost slots (offsets in the XOL area), last freed last; stale entries skipped
	slotFree  []bool    // per boost slot: on the free list
	owner     []int32   // per boost slot: the site whose copy it holds or last held
	pending   []uintptr // detached slots some thread was inside at the last snapshot
	slotsOut  int       // slots placed and not freed (held by sites or pending)
	reapKick  = make(chan struct{}, 1)
	ripBuf    [sched.MaxThreads + trap.MaxCPUs]uint64
	inUse     []uint64 // bitmap over boost slots, rebuilt per snapshot

	// ReapRetries counts, per snapshot, every pending slot still in use; Reaped the slots the
	// reaper freed after waiting; FreedAtOnce the slots no thread was inside at their disable.
	reapRetries, reaped, freedAtOnce, deferred atomic.Uint64
)

// initSlots prepares the slot tables and starts the reaper. Init; goroutine code.
func initSlots() {
	n := xolSize / slotSize
	owner = make([]int32, n)
	slotFree = make([]bool, n)
	for i := range owner {
		owner[i] = -1
	}
	inUse = make([]uint64, (n+63)/64)
	freeSlots = make([]uintptr, 0, 2*n+1040) // compacted before 2n+1025 entries: never grown, so a disable allocates nothing (live.go: reserve)
	pending = make([]uintptr, 0, n)
	go reaper()
}

var errXOLFull = errors.New("XOL area full")

// placeBoost makes a boosted copy of site id's instruction in a free slot. The site's last
// slot is taken back when it is still free and no other site has had it since (a disable and
// an enable of the same sites, the torture's loop): its copy, kept, is written again as it
// was, without relocating. Otherwise the instruction is relocated into the slot freed last.
// mu held.
func placeBoost(id int32, code []byte) error {
	s := site(id)
	if k := s.lastSlot / slotSize; s.copy != nil && slotFree[k] && owner[k] == id {
		slotFree[k] = false // its stale free-list entry is skipped when popped
		writeSlot(s.lastSlot, s.copy)
		s.boost = xolExec + s.lastSlot
		slotsOut++
		return nil
	}
	off, ok := takeSlot()
	if !ok {
		return errXOLFull
	}
	to := xolExec + off
	c, err := fbt.Relocate(code, uint64(s.Addr), uint64(to))
	if err == nil && len(c.Code) > slotSize {
		err = errors.New("relocated copy longer than a slot")
	}
	if err != nil {
		slotFree[off/slotSize] = true // untouched: still poisoned, or never used
		freeSlots = append(freeSlots, off)
		return err
	}
	writeSlot(off, c.Code)
	owner[off/slotSize] = id
	s.boost, s.lastSlot, s.copy = to, off, c.Code
	slotsOut++
	return nil
}

// takeSlot takes the slot freed last, or a new one. mu held.
func takeSlot() (uintptr, bool) {
	for k := len(freeSlots); k > 0; k = len(freeSlots) {
		off := freeSlots[k-1]
		freeSlots = freeSlots[:k-1]
		if slotFree[off/slotSize] {
			slotFree[off/slotSize] = false
			return off, true
		}
	}
	if xolNext+slotSize > xolSize {
		return 0, false
	}
	xolNext += slotSize
	return xolNext - slotSize, true
}

// writeSlot writes code into the slot at off through the XOL area's alias, INT3 after it.
// mu held.
func writeSlot(off uintptr, code []byte) {
	w := unsafe.Slice((*byte)(unsafe.Pointer(xolWrite+off)), slotSize)
	copy(w[copy(w, code):], poison[:])
}

// poison is what a freed slot holds, and what follows a copy: INT3.
var poison = func() (p [slotSize]byte) {
	for i := range p {
		p[i] = opcodeINT3
	}
	return
}()

// freeSlot poisons a slot and returns it to the free list. mu held.
func freeSlot(off uintptr) {
	if off < stepArea || off >= xolSize || off%slotSize != 0 {
		panic(fmt.Sprintf("fbt: freeing %#x, not a boost slot", off))
	}
	writeSlot(off, nil)
	slotFree[off/slotSize] = true
	freeSlots = append(freeSlots, off)
	slotsOut--
	if len(freeSlots) > 2*(int((xolNext-stepArea)/slotSize)-slotsOut)+1024 { // mostly stale: compact
		kept := freeSlots[:0]
		for _, o := range freeSlots {
			if slotFree[o/slotSize] {
				kept = append(kept, o)
			}
		}
		freeSlots = kept
	}
}

// release detaches the boost slots of sites ids (just disabled, after the synchronisation that
// took rips) and frees those no RIP lies in; the rest wait for the reaper. With fbt.reap=0
// every slot is freed at once. ok false: the synchronisation failed, so the snapshot may lack
// a thread: every slot waits. mu held.
func release(ids []int32, rips []uint64, ok bool) {
	if cfg.Reap && ok {
		markInUse(rips)
	}
	for _, id := range ids {
		s := site(id)
		if s.boost == 0 {
			continue
		}
		off := s.boost - xolExec
		s.boost = 0
		switch {
		case !cfg.Reap:
			freeSlot(off)
			freedAtOnce.Add(1)
		case ok && !slotInUse(off):
			freeSlot(off)
			freedAtOnce.Add(1)
		default:
			pending = append(pending, off)
			deferred.Add(1)
		}
	}
	if len(pending) > 0 {
		select {
		case reapKick <- struct{}{}:
		default:
		}
	}
}

// markInUse rebuilds the in-use bitmap from a snapshot of RIPs. mu held.
func markInUse(rips []uint64) {
	clear(inUse)
	for _, r := range rips {
		if r >= uint64(xolExec) && r < uint64(xolExec)+xolSize {
			k := (uintptr(r) - xolExec) / slotSize
			inUse[k/64] |= 1 << (k % 64)
		}
	}
}

// slotInUse reports whether the last snapshot had a RIP in the slot at off. mu held.
func slotInUse(off uintptr) bool {
	k := off / slotSize
	return inUse[k/64]&(1<<(k%64)) != 0
}

// reaper frees pending slots once no thread is inside them. Goroutine code.
func reaper() {
	for range reapKick {
		for {
			time.Sleep(reapEvery)
			mu.Lock()
			if len(pending) > 0 {
				reapOnce()
			}
			left := len(pending)
			mu.Unlock()
			if left == 0 {
				break
			}
		}
	}
}

// reapOnce takes a snapshot and frees the pending slots no thread is inside. mu held.
func reapOnce() {
	n, ok := kernel.SyncThreads(ripBuf[:])
	if !ok {
		reapRetries.Add(uint64(len(pending)))
		return
	}
	markInUse(ripBuf[:n])
	kept := pending[:0]
	for _, off := range pending {
		if slotInUse(off) {
			reapRetries.Add(1)
			kept = append(kept, off)
		} else {
			freeSlot(off)
			reaped.Add(1)
		}
	}
	pending = kept
}

// ReapStats are the teardown's slot figures: slots a disable found a thread inside (deferred
// to the reaper), snapshots that found a pending slot still in use (retries), slots the reaper
// freed, slots freed at their disable, slots still pending, slots
// held by sites (enabled ones, or disabled ones planned by EnableSelection and never enabled),
// and leaked slots: placed, not freed, and neither held nor pending (0 unless the accounting
// is broken).
type ReapStats struct {
	Deferred, Retries, Reaped, FreedAtOnce uint64
	Pending, Held, Leaked                  int
}

// Reaping is the teardown's slot figures now. Goroutine code.
func Reaping() ReapStats {
	mu.Lock()
	defer mu.Unlock()
	held := 0
	for id := int32(0); id < int32(len(sites))+nOffsets.Load(); id++ {
		if site(id).boost != 0 {
			held++
		}
	}
	return ReapStats{Deferred: deferred.Load(), Retries: reapRetries.Load(), Reaped: reaped.Load(), FreedAtOnce: freedAtOnce.Load(),
		Pending: len(pending), Held: held, Leaked: slotsOut - held - len(pending)}
}

// freedSlotHit handles a #BP at addr inside a freed boost slot (its first byte is INT3: a copy
// never starts with one). At the slot's first byte the thread had not begun the copy, and it
// re-executes the site's original instruction; anywhere else false (a fatal #BP).
//
// Trap context, interrupts off.
func freedSlotHit(f *trap.Frame, c *cpuState, addr uintptr) bool {
	if addr < xolExec+stepArea || addr >= xolExec+xolSize {
		return false
	}
	start := addr &^ (slotSize - 1)
	if *(*byte)(unsafe.Pointer(start)) != opcodeINT3 {
		return false // a live copy's guard: not a freed slot
	}
	c.UseAfterFree++
	id := owner[(start-xolExec)/slotSize]
	if addr != start || id < 0 {
		return false
	}
	f.RIP = uint64(site(id).Addr)
	return true
}
