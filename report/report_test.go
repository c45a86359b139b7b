package report

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/matrix"
	"tracebed/qemu"
)

func run(name string, smp int, outcome string, diags map[string]any) matrix.Result {
	return matrix.Result{Config: matrix.Config{Name: name, Machine: "q35", SMP: smp},
		Run: qemu.JSONRun{Outcome: outcome, Results: []qemu.JSONResult{
			{Path: "xcall", Name: "xcall", Outcome: "pass"},
			{Path: "xcall/all_to_all_storm", Depth: 1, Name: "all_to_all_storm", Outcome: "pass", Diags: diags},
		}}}
}

// Regressions follow the direction a figure's name implies; noise below 25% is no regression.
func TestBaselineRegressions(t *testing.T) {
	now := &matrix.Matrix{RunID: "now", Results: []matrix.Result{
		run("a", 2, "PASS", map[string]any{"calls_per_sec": 500.0, "latency_p99_ns": 900.0, "latency_us_log2_hist": []any{1.0, 5.0, 2.0}}),
		run("b", 4, "FAIL", map[string]any{"calls_per_sec": 1000.0, "latency_p99_ns": 5000.0}),
	}}
	base := &matrix.Matrix{RunID: "base", Results: []matrix.Result{
		run("a", 2, "PASS", map[string]any{"calls_per_sec": 1000.0, "latency_p99_ns": 1000.0}),
		run("b", 4, "PASS", map[string]any{"calls_per_sec": 1100.0, "latency_p99_ns": 1000.0}),
	}}
	p, err := Build(now, base)
	require.NoError(t, err)
	reg := map[string]bool{}
	for _, c := range p.Changes {
		reg[c.Config+" "+c.Figure] = c.Regression
	}
	assert.True(t, reg["a xcall/all_to_all_storm:calls_per_sec"], "half the rate")
	assert.False(t, reg["a xcall/all_to_all_storm:latency_p99_ns"], "lower latency is better")
	assert.False(t, reg["b xcall/all_to_all_storm:calls_per_sec"], "9% is noise")
	assert.True(t, reg["b xcall/all_to_all_storm:latency_p99_ns"], "5x the latency")
	require.Len(t, p.OutcomeChg, 1)
	assert.True(t, p.OutcomeChg[0].Regression, "a PASS lost")
	assert.Equal(t, 3, p.Regressed)
	ids := map[string]bool{}
	for _, c := range p.Charts {
		ids[c.ID] = true
		assert.Contains(t, string(c.SVG), "<svg")
	}
	assert.True(t, ids["chart-xcall-latency"])
	assert.True(t, ids["chart-xcall-rate"])
	assert.False(t, ids["chart-futex-wake-latency"], "no data, no chart")
	assert.NotEmpty(t, p.Missing)
	var b bytes.Buffer
	require.NoError(t, p.Write(&b))
	assert.Contains(t, b.String(), `id="chart-xcall-latency"`)
	assert.Contains(t, b.String(), `class="regression"`)
}

func TestNamesAreEscaped(t *testing.T) {
	m := &matrix.Matrix{RunID: "<script>", Results: []matrix.Result{run("<b>x</b>", 1, "PASS", nil)}}
	p, err := Build(m, nil)
	require.NoError(t, err)
	var b bytes.Buffer
	require.NoError(t, p.Write(&b))
	assert.NotContains(t, b.String(), "<script>")
	assert.NotContains(t, b.String(), "<b>x</b>")
}
