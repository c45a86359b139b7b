package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"tracebed/matrix"
	"tracebed/qemu"
)

// isTerminal reports whether w is a terminal (the live display needs one).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// barProgress is the live display on a terminal (package mpb): a line for the matrix with
// done/total and ETA, and a line per running configuration with its elapsed time and the last
// KTAP result it printed.
type barProgress struct {
	p     *mpb.Progress
	total *mpb.Bar
	mu    sync.Mutex
	bars  map[string]*mpb.Bar
	last  map[string]string
}

func newBarProgress(w io.Writer, total int) *barProgress {
	b := &barProgress{p: mpb.New(mpb.WithOutput(w), mpb.WithWidth(30), mpb.WithRefreshRate(200*time.Millisecond)),
		bars: map[string]*mpb.Bar{}, last: map[string]string{}}
	b.total = b.p.AddBar(int64(total), mpb.BarPriority(1<<30),
		mpb.PrependDecorators(decor.Name("matrix "), decor.CountersNoUnit("%d/%d done")),
		mpb.AppendDecorators(decor.Name(" ETA "), decor.AverageETA(decor.ET_STYLE_GO)))
	return b
}

func (b *barProgress) Start(c matrix.Config) {
	name := c.Name
	bar := b.p.AddSpinner(0, mpb.BarRemoveOnComplete(),
		mpb.PrependDecorators(decor.Name(name+" ", decor.WC{W: 28, C: decor.DindentRight}), decor.Elapsed(decor.ET_STYLE_GO)),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
			b.mu.Lock()
			defer b.mu.Unlock()
			return " " + b.last[name]
		})))
	b.mu.Lock()
	b.bars[name] = bar
	b.mu.Unlock()
}

func (b *barProgress) Line(c matrix.Config, line string) {
	t := strings.TrimSpace(line)
	if !strings.HasPrefix(t, "ok ") && !strings.HasPrefix(t, "not ok ") {
		return
	}
	if len(t) > 60 {
		t = t[:60]
	}
	b.mu.Lock()
	b.last[c.Name] = qemu.Printable(t)
	b.mu.Unlock()
}

func (b *barProgress) Done(r matrix.Result, done, total int) {
	b.mu.Lock()
	bar := b.bars[r.Config.Name]
	delete(b.bars, r.Config.Name)
	b.mu.Unlock()
	if bar != nil {
		bar.SetTotal(-1, true)
	}
	b.total.Increment()
}

func (b *barProgress) Wait() { b.p.Wait() }

// lineProgress is the display when the output is no terminal: a plain line per event.
type lineProgress struct {
	w  io.Writer
	mu sync.Mutex
	t0 time.Time
}

func (l *lineProgress) Start(c matrix.Config) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "tracebed: matrix: start %s\n", c.Name)
}

func (l *lineProgress) Line(matrix.Config, string) {}

func (l *lineProgress) Done(r matrix.Result, done, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := r.Run.Outcome
	if r.Error != "" {
		out = "ERROR: " + r.Error
	}
	eta := ""
	if el := time.Since(l.t0); done < total && done > 0 {
		eta = fmt.Sprintf(", ETA %s", (el / time.Duration(done) * time.Duration(total-done)).Round(time.Second))
	}
	fmt.Fprintf(l.w, "tracebed: matrix: [%d/%d] %s %s in %.1f s%s\n", done, total, r.Config.Name, out, r.Seconds, eta)
}

func (l *lineProgress) Wait() {}
