// Package matrix runs a grid of QEMU configurations (machines × CPU counts × command-line
// variants), several at a time within a budget of host threads, keeps every run's serial log
// and results under results/<run-id>/, and summarises them.
//
// Each TCG vCPU is a host thread, so a run of N vCPUs costs min(N, budget) of the budget
// (host cores by default): on 2 cores, two 1-CPU runs go side by side, a 4-CPU run alone.
package matrix

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"tracebed/qemu"
)

// Grid is what to run: every machine × every CPU count × every variant.
type Grid struct {
	Machines []string
	SMP      []int
	Variants []string // extra kernel command-line words per variant ("" for none)
	Base     qemu.Config
}

// Config is one cell of the grid.
type Config struct {
	Name    string      `json:"name"` // "q35-smp4-idt=pvshim", a directory name too
	Machine string      `json:"machine"`
	SMP     int         `json:"smp"`
	Variant string      `json:"variant"`
	QEMU    qemu.Config `json:"qemu"`
}

// ParseList splits a comma-separated flag value, refusing empty items.
func ParseList(flag, s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("matrix: %s: empty list", flag)
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			return nil, fmt.Errorf("matrix: %s: empty item in %s", flag, qemu.Quote(s))
		}
		out = append(out, f)
	}
	return out, nil
}

// ParseSMP reads a comma-separated list of CPU counts.
func ParseSMP(s string) ([]int, error) {
	items, err := ParseList("--smp", s)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, it := range items {
		n, err := strconv.Atoi(it)
		if err != nil || n < 1 || n > qemu.MaxSMP {
			return nil, fmt.Errorf("matrix: --smp %s: want CPU counts from 1 to %d", qemu.Quote(it), qemu.MaxSMP)
		}
		out = append(out, n)
	}
	return out, nil
}

// ParseVariants reads --append-set: variants separated by '|' ("idt=native|idt=pvshim");
// a variant may be several words, or "-" for none.
func ParseVariants(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("matrix: --append-set: empty set")
	}
	var out []string
	for _, v := range strings.Split(s, "|") {
		v = strings.Join(strings.Fields(v), " ")
		switch v {
		case "":
			return nil, fmt.Errorf("matrix: --append-set: empty variant in %s (use - for none)", qemu.Quote(s))
		case "-":
			v = ""
		}
		out = append(out, v)
	}
	return out, nil
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9=.,_-]+`)

// Configs expands g, validating every cell before anything runs.
func (g Grid) Configs() ([]Config, error) {
	if len(g.Machines) == 0 || len(g.SMP) == 0 || len(g.Variants) == 0 {
		return nil, fmt.Errorf("matrix: an empty grid")
	}
	var out []Config
	seen := map[string]bool{}
	for _, m := range g.Machines {
		for _, n := range g.SMP {
			for _, v := range g.Variants {
				c := g.Base
				c.Machine, c.SMP = m, n
				c.Append = strings.TrimSpace(strings.Join([]string{g.Base.Append, v}, " "))
				if err := c.Validate(); err != nil {
					return nil, err
				}
				name := fmt.Sprintf("%s-smp%d", m, n)
				if v != "" {
					name += "-" + unsafeName.ReplaceAllString(v, "_")
				}
				if len(name) > 120 {
					name = name[:120]
				}
				if seen[name] {
					return nil, fmt.Errorf("matrix: configuration %s appears twice", name)
				}
				seen[name] = true
				out = append(out, Config{Name: name, Machine: m, SMP: n, Variant: v, QEMU: c})
			}
		}
	}
	return out, nil
}

// Result is one configuration's run.
type Result struct {
	Config  Config       `json:"config"`
	Run     qemu.JSONRun `json:"run"`
	Error   string       `json:"error,omitempty"` // the run could not start
	Started time.Time    `json:"started"`
	Seconds float64      `json:"seconds"`
}

// Passed reports whether the configuration passed.
func (r *Result) Passed() bool { return r.Error == "" && r.Run.Outcome == "PASS" }

// Matrix is a finished grid, as written to matrix.json.
type Matrix struct {
	RunID         string    `json:"run_id"`
	Started       time.Time `json:"started"`
	WallSeconds   float64   `json:"wall_seconds"`
	SerialSeconds float64   `json:"serial_seconds"` // the runs' times added up: one after another
	Budget        int       `json:"budget"`
	Results       []Result  `json:"results"`
}

// Progress is told about runs as they start and end, and about their console lines.
type Progress interface {
	Start(c Config)
	Line(c Config, line string)
	Done(r Result, done, total int)
}

// Runner runs configurations.
type Runner struct {
	Dir      string // results/<run-id>
	Budget   int    // host threads; each run takes min(SMP, Budget)
	Progress Progress
	run      func(cfg qemu.Config, live io.Writer) (*qemu.Report, error)
}

// NewRunID names a run by its start time.
func NewRunID(t time.Time) string { return t.UTC().Format("20060102-150405") }

// Run runs every configuration, Budget host threads' worth at a time, and writes each one's
// serial.log and result.json into Dir/<name>/, then Dir/matrix.json.
func (r *Runner) Run(cfgs []Config) (*Matrix, error) {
	if r.Budget < 1 {
		return nil, fmt.Errorf("matrix: a budget of %d host threads", r.Budget)
	}
	if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("matrix: %w", err)
	}
	run := r.run
	if run == nil {
		run = qemu.Run
	}
	m := &Matrix{RunID: filepath.Base(r.Dir), Started: time.Now(), Budget: r.Budget,
		Results: make([]Result, len(cfgs))}
	var (
		mu   sync.Mutex
		cond = sync.NewCond(&mu)
		used int
		done int
		wg   sync.WaitGroup
	)
	for i, c := range cfgs {
		cost := min(c.SMP, r.Budget)
		mu.Lock()
		for used+cost > r.Budget {
			cond.Wait()
		}
		used += cost
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := r.one(c, run)
			mu.Lock()
			used -= cost
			done++
			m.Results[i] = res
			if r.Progress != nil {
				r.Progress.Done(res, done, len(cfgs))
			}
			cond.Broadcast()
			mu.Unlock()
		}()
	}
	wg.Wait()
	m.WallSeconds = time.Since(m.Started).Seconds()
	for _, res := range m.Results {
		m.SerialSeconds += res.Seconds
	}
	if err := writeJSONFile(filepath.Join(r.Dir, "matrix.json"), m); err != nil {
		return m, err
	}
	return m, nil
}

// one runs c, keeping its console in serial.log.
func (r *Runner) one(c Config, run func(qemu.Config, io.Writer) (*qemu.Report, error)) Result {
	res := Result{Config: c, Started: time.Now()}
	dir := filepath.Join(r.Dir, c.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		res.Error = err.Error()
		return res
	}
	f, err := os.Create(filepath.Join(dir, "serial.log"))
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer f.Close()
	if r.Progress != nil {
		r.Progress.Start(c)
	}
	live := &lineWriter{w: f, line: func(l string) {
		if r.Progress != nil {
			r.Progress.Line(c, l)
		}
	}}
	rep, err := run(c.QEMU, live)
	res.Seconds = time.Since(res.Started).Seconds()
	if err != nil {
		res.Error = err.Error()
		res.Run = qemu.JSONRun{Outcome: "ERROR", Results: []qemu.JSONResult{}}
	} else {
		cfg := c.QEMU
		res.Run = rep.JSON(&cfg)
	}
	if err := writeJSONFile(filepath.Join(dir, "result.json"), res); err != nil && res.Error == "" {
		res.Error = err.Error()
	}
	return res
}

// lineWriter copies to w and hands each complete line to line.
type lineWriter struct {
	w    io.Writer
	line func(string)
	buf  []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.line(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 1<<20 {
		l.buf = l.buf[:0]
	}
	return n, err
}

func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Load reads a results directory: its matrix.json.
func Load(dir string) (*Matrix, error) {
	b, err := os.ReadFile(filepath.Join(dir, "matrix.json"))
	if err != nil {
		return nil, fmt.Errorf("matrix: %w", err)
	}
	var m Matrix
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("matrix: %s: %v", filepath.Join(dir, "matrix.json"), err)
	}
	return &m, nil
}

// KeyFigures are the diagnostics the summary shows, by "suite/case:key".
var KeyFigures = []string{
	"smp/parallel_speedup:speedup",
	"smp/futex_wake_cross_cpu:wake_us_p50",
	"xcall/all_to_all_storm:calls_per_sec",
	"xcall/all_to_all_storm:latency_p99_ns",
	"runtime/goroutines:spawn_ns_per_goroutine",
}

// Figure returns the diagnostic named "path:key" of a run.
func Figure(run qemu.JSONRun, name string) (any, bool) {
	path, key, _ := strings.Cut(name, ":")
	for _, r := range run.Results {
		if r.Path == path {
			v, ok := r.Diags[key]
			return v, ok
		}
	}
	return nil, false
}

// Summary writes the configuration × suite table and the key figures.
func (m *Matrix) Summary(w io.Writer) {
	suites := map[string]bool{}
	for _, r := range m.Results {
		for _, j := range r.Run.Results {
			if j.Depth == 0 {
				suites[j.Name] = true
			}
		}
	}
	var names []string
	for s := range suites {
		names = append(names, s)
	}
	sort.Strings(names)
	width := len("configuration")
	for _, r := range m.Results {
		width = max(width, len(r.Config.Name))
	}
	fmt.Fprintf(w, "%-*s  %-8s %7s", width, "configuration", "outcome", "seconds")
	for _, s := range names {
		fmt.Fprintf(w, "  %-12s", qemu.Printable(s))
	}
	fmt.Fprintln(w)
	for _, r := range m.Results {
		out := r.Run.Outcome
		if r.Error != "" {
			out = "ERROR"
		}
		fmt.Fprintf(w, "%-*s  %-8s %7.1f", width, r.Config.Name, out, r.Seconds)
		for _, s := range names {
			fmt.Fprintf(w, "  %-12s", suiteCell(r.Run, s))
		}
		fmt.Fprintln(w)
	}
	for _, r := range m.Results {
		var figs []string
		for _, k := range KeyFigures {
			if v, ok := Figure(r.Run, k); ok {
				figs = append(figs, fmt.Sprintf("%s=%v", k, v))
			}
		}
		if len(figs) > 0 {
			fmt.Fprintf(w, "%s: %s\n", r.Config.Name, strings.Join(figs, " "))
		}
		if r.Error != "" {
			fmt.Fprintf(w, "%s: could not run: %s\n", r.Config.Name, r.Error)
		}
	}
	fmt.Fprintf(w, "wall time %.1f s; the same runs one after another: %.1f s; budget %d host threads\n",
		m.WallSeconds, m.SerialSeconds, m.Budget)
}

// suiteCell is "passed/total" of suite s in run, "-" if it did not report.
func suiteCell(run qemu.JSONRun, s string) string {
	c := Suite(run, s)
	if !c.Found {
		return "-"
	}
	return fmt.Sprintf("%d/%d", c.Passed, c.Total)
}

// SuiteCount is how suite s fared in a run: whether it reported, whether its own result
// failed, and how many of its cases did not fail.
type SuiteCount struct {
	Found, Failed bool
	Passed, Total int
}

// Suite counts suite s of run.
func Suite(run qemu.JSONRun, s string) SuiteCount {
	var c SuiteCount
	for _, r := range run.Results {
		if r.Depth == 0 && r.Name == s {
			c.Found, c.Failed = true, r.Outcome == "fail"
		}
		if r.Depth == 1 && strings.HasPrefix(r.Path, s+"/") {
			c.Total++
			if r.Outcome != "fail" {
				c.Passed++
			}
		}
	}
	return c
}

// Failed counts the configurations that did not pass.
func (m *Matrix) Failed() int {
	n := 0
	for _, r := range m.Results {
		if !r.Passed() {
			n++
		}
	}
	return n
}
