package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"tracebed/kernel/ktest"
)

// Outcome is how a run ended.
type Outcome int

const (
	Pass  Outcome = iota // debug-exit pass, and the KTAP log is complete with every result ok
	Fail                 // a case failed, the command line was refused, or the log is incomplete
	Fatal                // the kernel reported a fatal trap or the runtime crashed
	Hang                 // the timeout expired; QEMU was killed
	Reset                // QEMU exited 0: a triple fault (with -no-reboot) or a power-off
	Error                // QEMU could not run or exited with an unexpected status
)

func (o Outcome) String() string {
	return [...]string{"PASS", "FAIL", "FATAL", "HANG", "RESET", "ERROR"}[o]
}

// TailLines is how many console lines a report keeps for a failure.
const TailLines = 40

// Report is what a run produced.
type Report struct {
	Outcome   Outcome
	ExitCode  int
	Results   []*Result // top-level KTAP results (suites)
	KTAPError error     // incomplete or malformed KTAP
	Tail      []string  // the last TailLines console lines
	Stderr    string    // QEMU's own messages
	FirstKTAP time.Duration
	Total     time.Duration
	Stack     []string // a fatal trap's stack, symbolized
}

// Run boots cfg.Kernel and returns when QEMU exits or the timeout kills it. Console lines go
// to live as they arrive (nil: nowhere).
func Run(cfg Config, live io.Writer) (*Report, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	bin, err := exec.LookPath(cfg.QEMU)
	if err != nil {
		return nil, fmt.Errorf("qemu: %s not found: install Debian's qemu-system-x86 (make installs it when run as root)", cfg.QEMU)
	}
	if _, err := os.Stat(cfg.Kernel); err != nil {
		return nil, fmt.Errorf("qemu: kernel image: %w", err)
	}
	cmd := exec.Command(bin, cfg.Args()...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: start %s: %w", bin, err)
	}
	var (
		mu       sync.Mutex
		timedOut bool
	)
	timer := time.AfterFunc(cfg.Timeout, func() {
		mu.Lock()
		timedOut = true
		mu.Unlock()
		cmd.Process.Kill()
	})
	defer timer.Stop()

	rep := &Report{}
	var p Parser
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if live != nil {
			fmt.Fprintln(live, line)
		}
		if rep.FirstKTAP == 0 && strings.HasPrefix(line, "KTAP version") {
			rep.FirstKTAP = time.Since(start)
		}
		rep.Tail = append(rep.Tail, line)
		if len(rep.Tail) > TailLines {
			rep.Tail = rep.Tail[1:]
		}
		p.Line(line)
		if strings.HasPrefix(line, "tracebed: fatal stack ") {
			rep.Stack = Symbolize(cfg.Kernel, strings.Fields(strings.TrimPrefix(line, "tracebed: fatal stack ")))
		}
	}
	werr := cmd.Wait()
	rep.Total = time.Since(start)
	rep.Stderr = strings.TrimSpace(stderr.String())
	rep.Results, rep.KTAPError = p.Finish()
	var ee *exec.ExitError
	switch {
	case werr == nil:
		rep.ExitCode = 0
	case errors.As(werr, &ee):
		rep.ExitCode = ee.ExitCode()
	default:
		return nil, fmt.Errorf("qemu: %w", werr)
	}
	mu.Lock()
	hung := timedOut
	mu.Unlock()
	rep.Outcome = classify(hung, rep)
	return rep, nil
}

// classify maps an exit to an outcome. A pass needs both the kernel's pass exit and a
// complete KTAP log whose results are all ok: one without the other is a failure.
func classify(hung bool, rep *Report) Outcome {
	switch {
	case hung, rep.ExitCode == ktest.QEMUStatus(ktest.ExitHang):
		return Hang
	case rep.ExitCode == ktest.QEMUStatus(ktest.ExitPass):
		if rep.KTAPError != nil || len(rep.Results) == 0 {
			return Fail
		}
		for _, r := range rep.Results {
			if !r.OK {
				return Fail
			}
		}
		return Pass
	case rep.ExitCode == ktest.QEMUStatus(ktest.ExitFail):
		return Fail
	case rep.ExitCode == ktest.QEMUStatus(ktest.ExitFatal):
		return Fatal
	case rep.ExitCode == 0:
		return Reset
	}
	return Error
}

// Summary is a few human lines about the report.
func (r *Report) Summary() []string {
	var s []string
	for _, suite := range r.Results {
		s = append(s, fmt.Sprintf("suite %s: %d/%d cases passed", suite.Name, suite.Passed(), len(suite.Children)))
	}
	if r.KTAPError != nil {
		s = append(s, r.KTAPError.Error())
	}
	first := "none"
	if r.FirstKTAP > 0 {
		first = fmt.Sprintf("%.2f s", r.FirstKTAP.Seconds())
	}
	s = append(s, fmt.Sprintf("outcome %s (QEMU exit %d); first KTAP line %s after QEMU start; QEMU ran %.2f s",
		r.Outcome, r.ExitCode, first, r.Total.Seconds()))
	return s
}
