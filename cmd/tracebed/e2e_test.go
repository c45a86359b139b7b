package main

import (
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/matrix"
	"tracebed/qemu"
	"tracebed/report"
)

// A small real matrix in QEMU (two CPU counts by two IDT variants, the smp and xcall suites,
// briefly: the two 1-CPU runs go side by side on a 2-thread budget), its report
// against a baseline whose figures were better, and the report opened in headless Chromium:
// the page renders (the screenshot is not blank) and every chart the run has data for is
// there, as an SVG inside its figure.
func TestMatrixReportInABrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("boots QEMU")
	}
	chromium, err := exec.LookPath("chromium")
	require.NoError(t, err, "make test installs Debian's chromium")
	dir := t.TempDir()
	kernel := filepath.Join(dir, "kernel.elf")
	require.NoError(t, qemu.BuildKernel("../..", kernel))
	results := filepath.Join(dir, "results")
	code, out, errs := tracebed("matrix", "--kernel", kernel, "--smp", "1,2", "--append-set", "idt=native|idt=pvshim", "--suite", "smp,xcall",
		"--append", "gc_seconds=1 xcall_seconds=1", "--results", results, "--jobs", "2", "--timeout", "5m")
	t.Logf("%s\n%s", out, errs)
	require.Equal(t, 0, code)
	assert.Contains(t, out, "wall time")
	runs, err := filepath.Glob(filepath.Join(results, "*"))
	require.NoError(t, err)
	require.Len(t, runs, 1)
	run := runs[0]
	for _, c := range []string{"q35-smp1-idt=native", "q35-smp2-idt=pvshim"} {
		assert.FileExists(t, filepath.Join(run, c, "serial.log"))
		assert.FileExists(t, filepath.Join(run, c, "result.json"))
	}

	// A baseline in which the 2-CPU run was faster: the report must call it a regression.
	m, err := matrix.Load(run)
	require.NoError(t, err)
	base := filepath.Join(dir, "baseline")
	require.NoError(t, os.MkdirAll(base, 0o755))
	for i, r := range m.Results {
		for j, res := range r.Run.Results {
			if v, ok := res.Diags["calls_per_sec"].(float64); ok && res.Path == "xcall/all_to_all_storm" {
				m.Results[i].Run.Results[j].Diags["calls_per_sec"] = v * 3
			}
		}
	}
	m.RunID = "baseline"
	b, err := json.Marshal(m)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(base, "matrix.json"), b, 0o644))

	html := filepath.Join(dir, "report.html")
	code, out, errs = tracebed("report", "--baseline", base, "-o", html, run)
	require.Equal(t, 0, code, "%s%s", out, errs)
	assert.Contains(t, out, "regressions against baseline")
	page, err := os.ReadFile(html)
	require.NoError(t, err)
	for _, ref := range []string{`src="`, `href="http`, `xlink:href="http`, "url(http", "@import", "<script", "<link"} {
		assert.False(t, strings.Contains(string(page), ref), "self-contained: nothing fetched at view time (%s)", ref)
	}

	dom, err := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", "file://"+html).Output()
	require.NoError(t, err)
	want := []string{"matrix", "chart-futex-wake-latency", "chart-ipi-latency", "chart-xcall-latency", "chart-speedup", "chart-xcall-rate", "changes"}
	for _, id := range want {
		assert.Contains(t, string(dom), `id="`+id+`"`, "the rendered page has %s", id)
	}
	for _, c := range report.Histograms {
		i := strings.Index(string(dom), `id="chart-`+c.Name+`"`)
		require.GreaterOrEqual(t, i, 0, c.Name)
		assert.Contains(t, string(dom[i:min(i+2000, len(dom))]), "<svg", "%s holds its SVG", c.Name)
	}
	assert.Contains(t, string(dom), `class="regression"`)

	shot := filepath.Join(dir, "shot.png")
	cmd := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
		"--window-size=1200,2400", "--screenshot="+shot, "file://"+html)
	cmd.Dir = dir
	outb, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", outb)
	f, err := os.Open(shot)
	require.NoError(t, err)
	defer f.Close()
	img, err := png.Decode(f)
	require.NoError(t, err)
	colors := map[uint32]bool{}
	nonWhite, total := 0, 0
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y += 3 {
		for x := bnd.Min.X; x < bnd.Max.X; x += 3 {
			r, g, b, _ := img.At(x, y).RGBA()
			colors[r>>8<<16|g>>8<<8|b>>8] = true
			if r < 0xf000 || g < 0xf000 || b < 0xf000 {
				nonWhite++
			}
			total++
		}
	}
	t.Logf("screenshot %dx%d: %d colours, %.1f%% not white", bnd.Dx(), bnd.Dy(), len(colors), 100*float64(nonWhite)/float64(total))
	assert.Greater(t, len(colors), 16, "not blank")
	assert.Greater(t, float64(nonWhite)/float64(total), 0.02, "not blank")
	if keep := os.Getenv("TRACEBED_KEEP_REPORT"); keep != "" {
		os.WriteFile(filepath.Join(keep, "report.html"), page, 0o644)
		b, _ := os.ReadFile(shot)
		os.WriteFile(filepath.Join(keep, "report.png"), b, 0o644)
	}
}
