package live

import (
	"fmt"
	"sort"
	"sync"

	"tracebed/kernel"
	"tracebed/xcall"
)

// Per-CPU double buffers: how records leave the CPUs that fire them.
//
// Each CPU's actions write into its active buffer; nothing else writes there, and an action
// runs with interrupts off, so no lock is needed. Drain, the consumer, swaps active and
// inactive on every CPU with one cross-CPU broadcast (the swap runs on each CPU with interrupts
// off, so never in the middle of one of its actions) and then reads each CPU's inactive
// buffer, which its CPU no longer writes, and empties it. A full buffer drops the record and
// counts the drop; it never overwrites. Every record carries its CPU's sequence number (every
// action takes one, kept or dropped), and Drain checks them: per CPU increasing with no
// duplicate, and the numbers missing equal to the drops counted — so records + drops ==
// actions is proven, not assumed.

// bufRecs is each buffer's size in records unless fbt.bufrecs= says otherwise.
const bufRecs = 4096

type cpuBufs struct {
	active uint32 // which of buf the actions write; changed only by swapBufs, on this CPU
	n      [2]uint32
	buf    [2][]Record
	seq    uint64 // records offered: the next record's sequence number
	drops  uint64
}

var (
	bufs     []cpuBufs // per CPU; allocated by Init
	swapCall = xcall.Register(swapBufs)

	drainMu sync.Mutex
	check   []bufCheck // the consumer's view, per CPU
)

type bufCheck struct {
	next     uint64 // the sequence number expected next
	consumed uint64
	missing  uint64 // sequence numbers skipped: must be the drops
	dups     uint64 // a number not above the last one seen: must be 0
}

// initBufs allocates every online CPU's buffers. Init; goroutine code.
func initBufs() {
	bufs = make([]cpuBufs, ncpu)
	n := cfg.BufRecs
	if n <= 0 {
		n = bufRecs
	}
	for i := range bufs {
		bufs[i].buf[0] = make([]Record, n)
		bufs[i].buf[1] = make([]Record, n)
	}
	check = make([]bufCheck, ncpu)
}

// offer puts r in this CPU's active buffer, or counts it dropped.
//
// Trap context, interrupts off.
func offer(cpu int, r Record) {
	b := &bufs[cpu]
	r.Seq = b.seq
	b.seq++
	a := b.active
	if int(b.n[a]) == len(b.buf[a]) {
		if cfg.BufWrap { // the mutation: overwrite the oldest, count nothing
			copy(b.buf[a], b.buf[a][1:])
			b.buf[a][b.n[a]-1] = r
			return
		}
		b.drops++
		return
	}
	b.buf[a][b.n[a]] = r
	b.n[a]++
}

// swapBufs is the swap: run on each CPU by Drain's broadcast.
//
// Trap context (a cross-CPU call).
func swapBufs(uintptr) {
	cpu := kernel.CurrentCPU()
	if cpu < len(bufs) {
		bufs[cpu].active ^= 1
	}
}

// Drain swaps every CPU's buffers and calls fn with each CPU's records since the last Drain,
// oldest first, checking their sequence numbers. fn must not keep recs. false if a CPU did not
// answer the swap (its records wait for the next Drain). Goroutine code; one Drain at a time.
func Drain(fn func(cpu int, recs []Record)) bool {
	if len(bufs) == 0 {
		return false
	}
	drainMu.Lock()
	defer drainMu.Unlock()
	ok := kernel.CrossBroadcast(1<<uint(ncpu)-1, swapCall, 0) == xcall.OK
	if !ok {
		return false
	}
	for cpu := range bufs {
		b := &bufs[cpu]
		in := b.active ^ 1
		recs := b.buf[in][:b.n[in]]
		k := &check[cpu]
		for _, r := range recs {
			switch {
			case r.Seq < k.next:
				k.dups++
			default:
				k.missing += r.Seq - k.next
				k.next = r.Seq + 1
			}
		}
		k.consumed += uint64(len(recs))
		if fn != nil && len(recs) > 0 {
			fn(cpu, recs)
		}
		b.n[in] = 0
	}
	return true
}

// BufStats are one CPU's buffer figures as the consumer has seen them.
type BufStats struct {
	Offered, Consumed, Drops, Missing, Dups uint64
}

// CheckBuffers drains once more, then checks every CPU's records: no duplicate sequence number,
// the numbers missing (skipped, or after the last record) equal to the drops, and consumed +
// drops == offered. Call it with no probe enabled, so that nothing is offered meanwhile. It
// returns the totals and the first inconsistency ("" if none). Goroutine code.
func CheckBuffers() (BufStats, string) {
	if !Drain(nil) {
		return BufStats{}, "a CPU did not answer the buffer swap"
	}
	drainMu.Lock()
	defer drainMu.Unlock()
	var t BufStats
	bad := ""
	for cpu := range bufs {
		b, k := &bufs[cpu], &check[cpu]
		missing := k.missing + (b.seq - k.next)
		t.Offered += b.seq
		t.Consumed += k.consumed
		t.Drops += b.drops
		t.Missing += missing
		t.Dups += k.dups
		if bad == "" && (k.dups != 0 || missing != b.drops || k.consumed+b.drops != b.seq) {
			bad = fmt.Sprintf("cpu %d: %d offered, %d consumed, %d dropped, %d missing, %d duplicated",
				cpu, b.seq, k.consumed, b.drops, missing, k.dups)
		}
	}
	return t, bad
}

// TopFuncs names the n functions with the most records in counts (site id → records), with
// their counts, most first: "name=count".
func TopFuncs(counts map[int32]uint64, n int) []string {
	byFunc := map[int32]uint64{}
	for id, c := range counts {
		byFunc[site(id).Func] += c
	}
	type fc struct {
		f int32
		c uint64
	}
	var all []fc
	for f, c := range byFunc {
		all = append(all, fc{f, c})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].c > all[j].c || all[i].c == all[j].c && all[i].f < all[j].f })
	var out []string
	for i := 0; i < n && i < len(all); i++ {
		out = append(out, fmt.Sprintf("%s=%d", funcs[all[i].f].name, all[i].c))
	}
	return out
}
