// Package report turns a matrix's results (results/<run-id>/matrix.json) into one
// self-contained HTML file: the pass/fail matrix, plots drawn as inline SVG with gonum/plot
// (latency histograms, speed-up and call rate against CPU count, FBT figures when the run has
// them), and a comparison with a baseline run, regressions highlighted. Nothing is fetched
// when the page is viewed.
package report

import (
	"bytes"
	"fmt"
	"html/template"
	"io"
	"math"
	"sort"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"tracebed/matrix"
	"tracebed/qemu"
)

// Chart is one plot of the report.
type Chart struct {
	ID    string // the figure's element id, "chart-<name>"
	Title string
	SVG   template.HTML
}

// Histograms are the latency histograms a run can carry: "suite/case:key" of a log2 histogram
// diagnostic, with the chart's name and title.
var Histograms = []struct{ Figure, Name, Title string }{
	{"smp/futex_wake_cross_cpu:wake_us_log2_hist", "futex-wake-latency", "futex wake latency across CPUs (µs, log2 buckets)"},
	{"smp/ipi_fixed_each_cpu:seen_us_log2_hist", "ipi-latency", "IPI delivery latency (µs, log2 buckets)"},
	{"xcall/all_to_all_storm:latency_us_log2_hist", "xcall-latency", "cross-CPU call latency in the all-to-all storm (µs, log2 buckets)"},
}

// Scaling are the figures drawn against CPU count.
var Scaling = []struct{ Figure, Name, Title, Y string }{
	{"smp/parallel_speedup:speedup", "speedup", "speed-up of a CPU-bound job against CPU count", "speed-up"},
	{"xcall/all_to_all_storm:calls_per_sec", "xcall-rate", "cross-CPU calls per second against CPU count", "calls/s"},
}

// FBT figures, drawn when a run has them (issues 12 and 13).
var FBT = []struct{ Prefix, Name, Title string }{
	{"fbt/probe_cost:", "fbt-probe-cost", "probe cost per FBT mode (ns)"},
	{"fbt/teardown:", "fbt-teardown", "teardown time against probe count (log-log)"},
}

// Row is one configuration in the pass/fail matrix.
type Row struct {
	Name    string
	Outcome string
	Seconds float64
	Cells   []Cell
}

// Cell is one suite of one configuration.
type Cell struct {
	Text  string
	Class string // pass, fail, none
}

// Change is one figure compared with the baseline.
type Change struct {
	Config, Figure string
	Base, Now      string
	Delta          string
	Regression     bool
}

// Page is what the template draws.
type Page struct {
	RunID      string
	Baseline   string
	Wall       float64
	Serial     float64
	Budget     int
	Suites     []string
	Rows       []Row
	Charts     []Chart
	Missing    []string // charts the run has no data for
	Changes    []Change
	Regressed  int
	OutcomeChg []Change
}

// Build makes the page for m, compared with base (nil for none).
func Build(m *matrix.Matrix, base *matrix.Matrix) (*Page, error) {
	p := &Page{RunID: m.RunID, Wall: m.WallSeconds, Serial: m.SerialSeconds, Budget: m.Budget}
	suites := map[string]bool{}
	for _, r := range m.Results {
		for _, j := range r.Run.Results {
			if j.Depth == 0 {
				suites[j.Name] = true
			}
		}
	}
	for s := range suites {
		p.Suites = append(p.Suites, s)
	}
	sort.Strings(p.Suites)
	for _, r := range m.Results {
		row := Row{Name: r.Config.Name, Outcome: r.Run.Outcome, Seconds: r.Seconds}
		if r.Error != "" {
			row.Outcome = "ERROR"
		}
		for _, s := range p.Suites {
			row.Cells = append(row.Cells, suiteCell(r.Run, s))
		}
		p.Rows = append(p.Rows, row)
	}
	for _, h := range Histograms {
		c, err := histogram(m, h.Figure, h.Name, h.Title)
		if err != nil {
			return nil, err
		}
		if c == nil {
			p.Missing = append(p.Missing, h.Title)
			continue
		}
		p.Charts = append(p.Charts, *c)
	}
	for _, s := range Scaling {
		c, err := scaling(m, s.Figure, s.Name, s.Title, s.Y)
		if err != nil {
			return nil, err
		}
		if c == nil {
			p.Missing = append(p.Missing, s.Title)
			continue
		}
		p.Charts = append(p.Charts, *c)
	}
	for _, f := range FBT {
		c, err := prefixChart(m, f.Prefix, f.Name, f.Title)
		if err != nil {
			return nil, err
		}
		if c == nil {
			p.Missing = append(p.Missing, f.Title+": no FBT figures in this run")
			continue
		}
		p.Charts = append(p.Charts, *c)
	}
	if base != nil {
		p.Baseline = base.RunID
		p.Changes, p.OutcomeChg = compare(m, base)
		for _, c := range p.Changes {
			if c.Regression {
				p.Regressed++
			}
		}
		p.Regressed += len(p.OutcomeChg)
	}
	return p, nil
}

func suiteCell(run qemu.JSONRun, s string) Cell {
	c := matrix.Suite(run, s)
	switch {
	case !c.Found:
		return Cell{"—", "none"}
	case c.Failed || c.Passed < c.Total:
		return Cell{fmt.Sprintf("%d/%d", c.Passed, c.Total), "fail"}
	}
	return Cell{fmt.Sprintf("%d/%d", c.Passed, c.Total), "pass"}
}

// render draws p as an inline SVG of w×h.
func render(p *plot.Plot, id, title string) (*Chart, error) {
	wt, err := p.WriterTo(7*vg.Inch, 3.5*vg.Inch, "svg")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if _, err := wt.WriteTo(&b); err != nil {
		return nil, err
	}
	svg := b.String()
	if i := strings.Index(svg, "<svg"); i > 0 {
		svg = svg[i:] // drop the XML prolog: the SVG goes inline
	}
	return &Chart{ID: "chart-" + id, Title: title, SVG: template.HTML(svg)}, nil
}

// numbers is a diagnostic value as a list of numbers.
func numbers(v any) ([]float64, bool) {
	switch x := v.(type) {
	case float64:
		return []float64{x}, true
	case []any:
		out := make([]float64, 0, len(x))
		for _, e := range x {
			f, ok := e.(float64)
			if !ok {
				return nil, false
			}
			out = append(out, f)
		}
		return out, true
	case []float64:
		return x, true
	}
	return nil, false
}

// histogram draws one line per configuration over log2 buckets.
func histogram(m *matrix.Matrix, figure, name, title string) (*Chart, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "latency bucket (µs)"
	p.Y.Label.Text = "samples"
	top := 0
	var args []any
	for _, r := range m.Results {
		v, ok := matrix.Figure(r.Run, figure)
		if !ok {
			continue
		}
		counts, ok := numbers(v)
		if !ok || len(counts) == 0 {
			continue
		}
		pts := make(plotter.XYs, len(counts))
		for i, c := range counts {
			pts[i].X, pts[i].Y = float64(i), c
		}
		top = max(top, len(counts))
		args = append(args, r.Config.Name, pts)
	}
	if len(args) == 0 {
		return nil, nil
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return nil, err
	}
	labels := make([]string, top)
	for i := range labels {
		labels[i] = "<" + fmtPow2(i+1)
	}
	p.NominalX(labels...)
	p.Legend.Top = true
	return render(p, name, title)
}

func fmtPow2(i int) string {
	v := math.Ldexp(1, i)
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gs", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gms", v/1e3)
	}
	return fmt.Sprintf("%gµs", v)
}

// scaling draws figure against CPU count, one line per machine and variant.
func scaling(m *matrix.Matrix, figure, name, title, ylabel string) (*Chart, error) {
	series := map[string]plotter.XYs{}
	var order []string
	for _, r := range m.Results {
		v, ok := matrix.Figure(r.Run, figure)
		if !ok {
			continue
		}
		f, ok := v.(float64)
		if !ok {
			continue
		}
		key := r.Config.Machine
		if r.Config.Variant != "" {
			key += " " + r.Config.Variant
		}
		if _, seen := series[key]; !seen {
			order = append(order, key)
		}
		series[key] = append(series[key], plotter.XY{X: float64(r.Config.SMP), Y: f})
	}
	if len(order) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "CPUs"
	p.Y.Label.Text = ylabel
	var args []any
	for _, k := range order {
		pts := series[k]
		sort.Slice(pts, func(i, j int) bool { return pts[i].X < pts[j].X })
		args = append(args, k, pts)
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return nil, err
	}
	p.Legend.Top = true
	return render(p, name, title)
}

// prefixChart draws every numeric diagnostic of results under prefix ("fbt/probe_cost:") as
// bars, one group per configuration.
func prefixChart(m *matrix.Matrix, prefix, name, title string) (*Chart, error) {
	path, _, _ := strings.Cut(prefix, ":")
	var vals plotter.Values
	var labels []string
	for _, r := range m.Results {
		for _, j := range r.Run.Results {
			if j.Path != path {
				continue
			}
			keys := make([]string, 0, len(j.Diags))
			for k := range j.Diags {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if f, ok := j.Diags[k].(float64); ok {
					vals = append(vals, f)
					labels = append(labels, r.Config.Name+" "+k)
				}
			}
		}
	}
	if len(vals) == 0 {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = title
	bars, err := plotter.NewBarChart(vals, vg.Points(12))
	if err != nil {
		return nil, err
	}
	p.Add(bars)
	p.NominalX(labels...)
	return render(p, name, title)
}

// direction says whether a larger value of a figure is better (+1), worse (-1) or neither (0),
// from its name.
func direction(key string) int {
	k := strings.ToLower(key)
	switch {
	case strings.Contains(k, "per_sec"), strings.Contains(k, "speedup"), strings.HasSuffix(k, "passed"):
		return +1
	case strings.HasSuffix(k, "_ms"), strings.HasSuffix(k, "_us"), strings.HasSuffix(k, "_ns"),
		strings.Contains(k, "_us_p"), strings.Contains(k, "_ns_p"), strings.Contains(k, "latency"),
		strings.Contains(k, "resends"), strings.Contains(k, "stale"), strings.Contains(k, "corrupt"),
		strings.Contains(k, "backwards"), strings.Contains(k, "starved"), strings.Contains(k, "leak"):
		return -1
	}
	return 0
}

// regressionRatio is how much worse a figure must be to count as a regression (TCG timings
// vary by tens of percent between runs on a shared host).
const regressionRatio = 0.25

// compare lists the numeric figures of configurations both runs have, and outcome changes.
func compare(m, base *matrix.Matrix) (changes, outcomes []Change) {
	baseBy := map[string]matrix.Result{}
	for _, r := range base.Results {
		baseBy[r.Config.Name] = r
	}
	for _, r := range m.Results {
		b, ok := baseBy[r.Config.Name]
		if !ok {
			continue
		}
		if b.Run.Outcome != r.Run.Outcome {
			outcomes = append(outcomes, Change{Config: r.Config.Name, Figure: "outcome", Base: b.Run.Outcome,
				Now: r.Run.Outcome, Regression: b.Run.Outcome == "PASS"})
		}
		prev := map[string]map[string]any{}
		for _, j := range b.Run.Results {
			prev[j.Path] = j.Diags
		}
		for _, j := range r.Run.Results {
			keys := make([]string, 0, len(j.Diags))
			for k := range j.Diags {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				now, ok1 := j.Diags[k].(float64)
				was, ok2 := prev[j.Path][k].(float64)
				if !ok1 || !ok2 || k == "elapsed_ms" {
					continue
				}
				c := Change{Config: r.Config.Name, Figure: j.Path + ":" + k,
					Base: fmt.Sprintf("%g", was), Now: fmt.Sprintf("%g", now)}
				if was != 0 {
					rel := (now - was) / math.Abs(was)
					c.Delta = fmt.Sprintf("%+.0f%%", rel*100)
					d := direction(k)
					c.Regression = d != 0 && float64(d)*rel < -regressionRatio
				} else if now != 0 {
					c.Delta = "new"
					c.Regression = direction(k) < 0
				}
				if now != was {
					changes = append(changes, c)
				}
			}
		}
	}
	sort.SliceStable(changes, func(i, j int) bool { return changes[i].Regression && !changes[j].Regression })
	return changes, outcomes
}

// Write renders p as HTML.
func (p *Page) Write(w io.Writer) error { return page.Execute(w, p) }

var page = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>tracebed report {{.RunID}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; }
td.pass { background: #c8f0c8; } td.fail { background: #f6b8b8; } td.none { color: #888; }
td.PASS { background: #c8f0c8; } td.FAIL, td.HANG, td.FATAL, td.ERROR, td.RESET, td.STOPPED { background: #f6b8b8; }
tr.regression td { background: #f6b8b8; font-weight: bold; }
figure { margin: 1.5em 0; } figcaption { font-weight: bold; margin-bottom: 0.4em; }
.missing { color: #777; }
</style></head><body>
<h1>tracebed report {{.RunID}}</h1>
<p>{{len .Rows}} configurations; wall time {{printf "%.1f" .Wall}} s, {{printf "%.1f" .Serial}} s had they run one after another ({{.Budget}} host threads at a time).</p>
<h2>Pass/fail matrix</h2>
<table id="matrix"><tr><th>configuration</th><th>outcome</th><th>seconds</th>{{range .Suites}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr><td>{{.Name}}</td><td class="{{.Outcome}}">{{.Outcome}}</td><td>{{printf "%.1f" .Seconds}}</td>{{range .Cells}}<td class="{{.Class}}">{{.Text}}</td>{{end}}</tr>
{{end}}</table>
<h2>Charts</h2>
{{range .Charts}}<figure id="{{.ID}}"><figcaption>{{.Title}}</figcaption>{{.SVG}}</figure>
{{end}}{{if .Missing}}<p class="missing">Not drawn, for want of data in this run: {{range $i, $m := .Missing}}{{if $i}}; {{end}}{{$m}}{{end}}.</p>{{end}}
{{if .Baseline}}<h2 id="baseline">Against baseline {{.Baseline}}: {{.Regressed}} regressions</h2>
{{if .OutcomeChg}}<table id="outcome-changes"><tr><th>configuration</th><th>baseline</th><th>now</th></tr>
{{range .OutcomeChg}}<tr{{if .Regression}} class="regression"{{end}}><td>{{.Config}}</td><td>{{.Base}}</td><td>{{.Now}}</td></tr>
{{end}}</table>{{end}}
<table id="changes"><tr><th>configuration</th><th>figure</th><th>baseline</th><th>now</th><th>change</th></tr>
{{range .Changes}}<tr{{if .Regression}} class="regression"{{end}}><td>{{.Config}}</td><td>{{.Figure}}</td><td>{{.Base}}</td><td>{{.Now}}</td><td>{{.Delta}}</td></tr>
{{end}}</table>{{end}}
</body></html>
`))
