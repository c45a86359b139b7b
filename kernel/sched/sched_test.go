package sched

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/trap"
)

// newThreads makes n threads, pinned as pins says (-1: any CPU).
func newThreads(t *testing.T, pins ...int32) []int32 {
	t.Helper()
	Reset()
	var ids []int32
	for _, p := range pins {
		i := New()
		require.GreaterOrEqual(t, i, int32(0))
		T(i).Pin = p
		ids = append(ids, i)
	}
	return ids
}

// drain dequeues for cpu until nothing is left for it (or more than every thread came out:
// a queue with a cycle, returned as it is for the assertion to show).
func drain(cpu int) []int32 {
	var got []int32
	for i := Dequeue(cpu); i >= 0 && len(got) <= MaxThreads; i = Dequeue(cpu) {
		got = append(got, i)
	}
	return got
}

// A CPU takes the queued threads it may run in queue order and leaves the others queued, in
// order, for the CPU they are pinned to.
func TestDequeueSkipsThreadsPinnedElsewhere(t *testing.T) {
	ids := newThreads(t, -1, 1, 0, 1, -1, 1)
	for _, i := range ids {
		Enqueue(i)
	}
	assert.Equal(t, int32(6), Queued())
	assert.Equal(t, []int32{ids[0], ids[2], ids[4]}, drain(0))
	assert.Equal(t, int32(3), Queued())
	// The last dequeued thread (ids[4]) was not the tail; the tail (ids[5]) is still queued.
	Enqueue(ids[0])
	assert.Equal(t, []int32{ids[1], ids[3], ids[5], ids[0]}, drain(1))
	assert.Equal(t, int32(0), Queued())
	assert.Equal(t, int32(-1), Dequeue(0))
}

// Taking the tail must leave a queue whose next Enqueue links after the new tail, not after
// the thread just taken.
func TestDequeueOfTheTailKeepsTheQueueLinked(t *testing.T) {
	ids := newThreads(t, 0, 0, 1)
	for _, i := range ids {
		Enqueue(i)
	}
	require.Equal(t, ids[2], Dequeue(1), "the tail, pinned to cpu 1")
	Enqueue(ids[2])
	assert.Equal(t, []int32{ids[0], ids[1]}, drain(0))
	assert.Equal(t, []int32{ids[2]}, drain(1))
}

// Random enqueues and dequeues on four CPUs against a slice model of the queue.
func TestRunQueueAgainstModel(t *testing.T) {
	const cpus = 4
	r := rand.New(rand.NewSource(3))
	pins := make([]int32, 40)
	for i := range pins {
		pins[i] = int32(r.Intn(cpus+1)) - 1
	}
	ids := newThreads(t, pins...)
	var model []int32 // queued threads, head first
	queued := map[int32]bool{}
	for step := 0; step < 20000; step++ {
		if r.Intn(2) == 0 {
			i := ids[r.Intn(len(ids))]
			if queued[i] {
				continue
			}
			Enqueue(i)
			model = append(model, i)
			queued[i] = true
		} else {
			cpu := r.Intn(cpus)
			want := int32(-1)
			for k, i := range model {
				if p := T(i).Pin; p < 0 || p == int32(cpu) {
					want = i
					model = append(model[:k:k], model[k+1:]...)
					break
				}
			}
			require.Equal(t, want, Dequeue(cpu), "step %d cpu %d", step, cpu)
			if want >= 0 {
				delete(queued, want)
				assert.Equal(t, uint32(Runnable), T(want).State)
			}
		}
		require.Equal(t, int32(len(model)), Queued(), "step %d", step)
	}
}

// New hands out increasing TIDs and reuses freed slots; a full table is -1.
func TestNewThreads(t *testing.T) {
	Reset()
	a, b := New(), New()
	assert.NotEqual(t, a, b)
	assert.Equal(t, int32(FirstTID), T(a).TID)
	assert.Equal(t, int32(FirstTID+1), T(b).TID)
	assert.Equal(t, int32(-1), T(a).Pin)
	for New() >= 0 {
	}
	assert.Equal(t, int32(MaxThreads), Count())
	T(a).State = Free
	c := New()
	assert.Equal(t, a, c, "a freed slot is reused")
	assert.Equal(t, int32(FirstTID+MaxThreads), T(c).TID, "with a new TID")
}

// Block saves the frame and takes the thread off every CPU; Wake queues it with the result and
// kicks the CPU it last ran on, or the one it is pinned to.
func TestBlockWakeAndKicks(t *testing.T) {
	ids := newThreads(t, -1, 3)
	for k, i := range ids {
		T(i).State = Running
		T(i).CPU = 2
		f := trap.Frame{RIP: 0x1000 + uint64(k), RAX: 202}
		Block(i, &f, WaitFutex, 0, 0)
		assert.Equal(t, uint32(Blocked), T(i).State)
		assert.Equal(t, uint64(0x1000+k), T(i).Frame.RIP)
	}
	assert.Equal(t, int32(0), Queued())
	assert.Empty(t, TakeKicks())
	Wake(ids[0], 0)
	Wake(ids[1], 7)
	assert.Equal(t, []int32{2, 3}, TakeKicks(), "last CPU, then the pinned CPU")
	assert.Empty(t, TakeKicks(), "kicks are taken once")
	assert.Equal(t, uint64(0), T(ids[0]).Frame.RAX)
	assert.Equal(t, uint64(7), T(ids[1]).Frame.RAX)
	assert.Equal(t, uint32(WaitNone), T(ids[1]).Wait)
	assert.Equal(t, []int32{ids[0]}, drain(0))
	assert.Equal(t, []int32{ids[1]}, drain(3))
}

// More kicks than CPUs: the rest are dropped, and the first ones kept in order.
func TestKicksAreBounded(t *testing.T) {
	Reset()
	for i := 0; i < trap.MaxCPUs+5; i++ {
		Kick(int32(i % 3))
	}
	k := TakeKicks()
	require.Len(t, k, trap.MaxCPUs)
	assert.Equal(t, []int32{0, 1, 2, 0}, k[:4])
}

// Deadlines: the earliest is what the timer is armed for, and WakeExpired wakes exactly the
// threads whose deadline has come, with their timeout result.
func TestDeadlines(t *testing.T) {
	ids := newThreads(t, -1, -1, -1)
	var f trap.Frame
	Block(ids[0], &f, WaitSleep, 300, 0)
	Block(ids[1], &f, WaitFutex, 100, uint64(1<<64-110)) // -ETIMEDOUT
	Block(ids[2], &f, WaitEpoll, 0, 0)                   // no deadline
	assert.Equal(t, int64(100), EarliestDeadline())
	WakeExpired(99)
	assert.Equal(t, int32(0), Queued())
	WakeExpired(100)
	assert.Equal(t, []int32{ids[1]}, drain(0))
	assert.Equal(t, uint64(1<<64-110), T(ids[1]).Frame.RAX)
	assert.Equal(t, int64(300), EarliestDeadline())
	WakeExpired(1000)
	assert.Equal(t, []int32{ids[0]}, drain(0))
	assert.Equal(t, int64(0), EarliestDeadline())
	assert.Equal(t, uint32(Blocked), T(ids[2]).State, "no deadline: only a wake ends it")
}
