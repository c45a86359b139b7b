package matrix

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/qemu"
)

func TestBadGridsAreRefusedBeforeAnythingRuns(t *testing.T) {
	base := qemu.Config{Kernel: "k"}
	for name, f := range map[string]func() error{
		"unknown machine": func() error {
			_, err := Grid{[]string{"q35", "virt"}, []int{1}, []string{""}, base}.Configs()
			return err
		},
		"empty machines": func() error { _, err := ParseList("--machine", " "); return err },
		"empty item":     func() error { _, err := ParseList("--machine", "q35,,pc"); return err },
		"smp 0":          func() error { _, err := ParseSMP("1,0"); return err },
		"smp 33":         func() error { _, err := ParseSMP("33"); return err },
		"smp word":       func() error { _, err := ParseSMP("four"); return err },
		"empty set":      func() error { _, err := ParseVariants(""); return err },
		"empty variant":  func() error { _, err := ParseVariants("idt=native||idt=pvshim"); return err },
		"duplicate": func() error {
			_, err := Grid{[]string{"q35", "q35"}, []int{1}, []string{""}, base}.Configs()
			return err
		},
		"empty grid": func() error { _, err := Grid{nil, []int{1}, []string{""}, base}.Configs(); return err },
	} {
		assert.Error(t, f(), name)
	}
	v, err := ParseVariants("idt=native | idt=pvshim  watchdog=0|-")
	require.NoError(t, err)
	assert.Equal(t, []string{"idt=native", "idt=pvshim watchdog=0", ""}, v)
	cfgs, err := Grid{[]string{"q35", "pc"}, []int{1, 2}, v, qemu.Config{Kernel: "k", Append: "suite=smp"}}.Configs()
	require.NoError(t, err)
	require.Len(t, cfgs, 12)
	assert.Equal(t, "q35-smp1-idt=native", cfgs[0].Name)
	assert.Equal(t, "suite=smp idt=pvshim watchdog=0", cfgs[1].QEMU.Append)
	assert.Equal(t, "q35-smp1-idt=pvshim_watchdog=0", cfgs[1].Name)
}

// The scheduler keeps the vCPUs of the runs under way within the budget, and runs what fits
// side by side. (The runs here are the scheduler's test doubles; make test runs a real grid in
// QEMU in package qemu's tests.)
func TestBudgetBoundsConcurrentRuns(t *testing.T) {
	cfgs, err := Grid{[]string{"q35"}, []int{1, 1, 1, 2, 4}, []string{""}, qemu.Config{Kernel: "k"}}.Configs()
	if err != nil { // duplicate names: build by hand
		cfgs = nil
		for i, n := range []int{1, 1, 1, 2, 4} {
			cfgs = append(cfgs, Config{Name: fmt.Sprintf("c%d", i), SMP: n, QEMU: qemu.Config{SMP: n}})
		}
	}
	var mu sync.Mutex
	used, peak, together := 0, 0, 0
	r := &Runner{Dir: t.TempDir(), Budget: 2, run: func(c qemu.Config, live io.Writer) (*qemu.Report, error) {
		cost := min(c.SMP, 2)
		mu.Lock()
		used += cost
		peak = max(peak, used)
		if used == 2 && cost == 1 {
			together++
		}
		mu.Unlock()
		fmt.Fprintf(live, "KTAP version 1\n1..0 # SKIP test double\n")
		time.Sleep(30 * time.Millisecond)
		mu.Lock()
		used -= cost
		mu.Unlock()
		return &qemu.Report{Outcome: qemu.Pass, Total: 30 * time.Millisecond}, nil
	}}
	m, err := r.Run(cfgs)
	require.NoError(t, err)
	assert.LessOrEqual(t, peak, 2)
	assert.Positive(t, together, "1-CPU runs went side by side")
	assert.Equal(t, 0, m.Failed())
	for _, c := range cfgs {
		b, err := os.ReadFile(filepath.Join(r.Dir, c.Name, "serial.log"))
		require.NoError(t, err)
		assert.Contains(t, string(b), "1..0 # SKIP")
		assert.FileExists(t, filepath.Join(r.Dir, c.Name, "result.json"))
	}
	back, err := Load(r.Dir)
	require.NoError(t, err)
	assert.Len(t, back.Results, len(cfgs))
	assert.Less(t, back.WallSeconds, back.SerialSeconds, "side by side beats one after another")
	var sum bytes.Buffer
	back.Summary(&sum)
	assert.Contains(t, sum.String(), "wall time")
}
