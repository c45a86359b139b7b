package qemu

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"tracebed/kernel/ktest"
	"tracebed/pvh"
)

// Outcome is how a run ended.
type Outcome int

const (
	Pass    Outcome = iota // debug-exit pass, and the KTAP log is complete with every result ok
	Fail                   // a case failed, the command line was refused, or the log is incomplete
	Fatal                  // the kernel reported a fatal trap or the runtime crashed
	Hang                   // the kernel's watchdog reported a stuck CPU, or the timeout expired
	Reset                  // QEMU exited 0: a triple fault (with -no-reboot) or a power-off
	Error                  // QEMU could not run or exited with an unexpected status
	Stopped                // QEMU stopped the guest itself (a KVM internal error, a guest panic)
)

func (o Outcome) String() string {
	return [...]string{"PASS", "FAIL", "FATAL", "HANG", "RESET", "ERROR", "STOPPED"}[o]
}

// TailLines is how many console lines a report keeps for a failure.
const TailLines = 40

// Report is what a run produced.
type Report struct {
	Outcome   Outcome
	ExitCode  int
	Results   []*Result // top-level KTAP results (suites)
	KTAPError error     // incomplete, malformed, inconsistent or bailed-out KTAP
	Failures  int       // failed results at any depth (Parser.Failures)
	Tail      []string  // the last TailLines console lines
	Stderr    string    // QEMU's own messages
	FirstKTAP time.Duration
	Total     time.Duration
	Stack     []string   // a fatal trap's stack, symbolized
	TimedOut  bool       // the host's timeout ended the run
	Diagnosis *Diagnosis // what QMP showed of a guest that hung or stopped (nil if none)
}

// CheckKernel reports whether path is a kernel this runner can boot: an x86-64 ELF with a
// PVH note (what `tracebed build` makes).
func CheckKernel(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("qemu: kernel image: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("qemu: kernel image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("qemu: kernel image %s is not a regular file", path)
	}
	if st.Size() > 256<<20 {
		return fmt.Errorf("qemu: kernel image %s: %d bytes is no tracebed kernel", path, st.Size())
	}
	e, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("qemu: kernel image %s is not an ELF file: %v", path, err)
	}
	if e.Class != elf.ELFCLASS64 || e.Machine != elf.EM_X86_64 {
		return fmt.Errorf("qemu: kernel image %s is not an x86-64 ELF", path)
	}
	img, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("qemu: kernel image: %w", err)
	}
	if _, ok := pvh.Entry(img); !ok {
		return fmt.Errorf("qemu: kernel image %s has no PVH note (build it with `tracebed build`)", path)
	}
	return nil
}

// afterNMI is how long the runner collects the kernel's answer to an injected NMI.
const afterNMI = 2 * time.Second

// Run boots cfg.Kernel and returns when QEMU exits or the timeout kills it. Console lines go
// to live as they arrive (nil: nowhere).
//
// Every run has a QMP socket in a private directory. A run that outlives its timeout is
// diagnosed before it is killed: every vCPU's registers and stack (read over QMP, named from
// the kernel's pclntab), then an NMI, whose backtraces the kernel prints, and afterNMI of
// console. A guest QEMU stops itself (an internal error, a guest panic) is diagnosed and
// ended at once, as STOPPED with QEMU's reason. cfg.DiagnoseAfter asks for a diagnosis of a
// run still going.
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
	dir, err := os.MkdirTemp("", "tracebed-qmp-") // 0700
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp.sock")
	args := append(cfg.Args(), "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd := exec.Command(bin, args...)
	// QEMU and anything a wrapper script forks form a process group of their own: the timeout
	// kills the whole group, and Wait gives up on pipes a stray child still holds.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	var stderr limitedBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: start %s: %w", bin, err)
	}
	kill := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }

	rep := &Report{}
	var (
		mu       sync.Mutex // guards rep.Tail, rep.Diagnosis, rep.TimedOut, stopped, nmiLine
		stopped  bool
		nmiLine  = -1 // lines seen when the NMI was injected; -1 before
		lines    int
		nmiLines []string
	)
	ended := make(chan struct{})
	var watchers sync.WaitGroup
	defer func() { close(ended); watchers.Wait() }()

	// diagnose reads the guest's state over QMP and, with nmi, injects an NMI and collects the
	// console for afterNMI. It is the only QMP user at a time (diagMu).
	var qmp *QMP
	var qmpErr error
	var diagMu sync.Mutex
	finished := false // set under diagMu once the report is being read: no diagnosis after
	diagnose := func(reason string, nmi bool) {
		diagMu.Lock()
		defer diagMu.Unlock()
		if finished {
			return
		}
		d := &Diagnosis{Reason: reason}
		if qmp == nil {
			if qmpErr == nil {
				qmpErr = errors.New("QEMU has not made its QMP socket yet")
			}
			d.Errors = append(d.Errors, fmt.Sprintf("no QMP connection: %v", qmpErr))
		} else {
			DiagnoseCPUs(qmp, cfg.Kernel, d)
			if nmi {
				mu.Lock()
				nmiLine = lines
				mu.Unlock()
				if _, err := qmp.Execute("inject-nmi", nil); err != nil {
					d.Errors = append(d.Errors, err.Error())
				} else {
					d.NMIInjected = true
					select {
					case <-time.After(afterNMI):
					case <-ended:
					}
				}
				mu.Lock()
				d.AfterNMI = append([]string(nil), nmiLines...)
				nmiLine, nmiLines = -1, nil
				mu.Unlock()
			}
		}
		mu.Lock()
		rep.Diagnosis = d
		mu.Unlock()
	}

	watchers.Add(1)
	go func() { // QMP: connect, then watch QEMU's events for stop states
		defer watchers.Done()
		q, err := DialQMP(sock, 10*time.Second, ended)
		diagMu.Lock()
		qmp, qmpErr = q, err
		diagMu.Unlock()
		if err != nil {
			return
		}
		defer q.Close()
		for {
			select {
			case <-ended:
				return
			case ev := <-q.Events:
				switch ev.Event {
				case "STOP", "GUEST_PANICKED", "SUSPEND":
					running, status, err := q.Status()
					if err != nil || running || status == "paused" && ev.Event == "STOP" && !panicStatus(status) {
						continue // a stop the runner asked for (its own diagnosis)
					}
					mu.Lock()
					stopped = true
					mu.Unlock()
					diagnose("QEMU stopped the guest: "+status, false)
					kill()
				}
			}
		}
	}()

	timer := time.AfterFunc(cfg.Timeout, func() {
		mu.Lock()
		rep.TimedOut = true
		mu.Unlock()
		diagnose(fmt.Sprintf("the run outlived its %v timeout", cfg.Timeout), true)
		kill()
	})
	defer timer.Stop()
	if cfg.DiagnoseAfter > 0 {
		t := time.AfterFunc(cfg.DiagnoseAfter, func() {
			diagnose(fmt.Sprintf("asked for after %v", cfg.DiagnoseAfter), true)
		})
		defer t.Stop()
	}

	var p Parser
	// The pipe is read to its end whatever it holds (a line over MaxLine is cut, not fatal):
	// a reader that stopped would leave QEMU blocked on a full pipe until the timeout.
	cut, rerr := ReadLines(out, func(line string) {
		if live != nil {
			fmt.Fprintln(live, line)
		}
		if rep.FirstKTAP == 0 && strings.HasPrefix(line, "KTAP version") {
			rep.FirstKTAP = time.Since(start)
		}
		mu.Lock()
		rep.Tail = append(rep.Tail, line)
		if len(rep.Tail) > TailLines {
			rep.Tail = rep.Tail[1:]
		}
		lines++
		if nmiLine >= 0 && len(nmiLines) < 10*TailLines {
			nmiLines = append(nmiLines, line)
		}
		mu.Unlock()
		p.Line(line)
		if strings.HasPrefix(line, "tracebed: fatal stack ") {
			rep.Stack = Symbolize(cfg.Kernel, strings.Fields(strings.TrimPrefix(line, "tracebed: fatal stack ")))
		}
	})
	if cut {
		p.CutMidLine(rep.Tail[len(rep.Tail)-1])
	}
	if rerr != nil {
		io.Copy(io.Discard, out) // keep QEMU from blocking on the pipe
	}
	werr := cmd.Wait()
	kill() // what a wrapper left running
	timer.Stop()
	diagMu.Lock() // a diagnosis under way finishes before the report is read; none starts after
	finished = true
	diagMu.Unlock()
	rep.Total = time.Since(start)
	rep.Stderr = strings.TrimSpace(stderr.String())
	rep.Results, rep.KTAPError = p.Finish()
	rep.Failures = p.Failures()
	if rerr != nil && rep.KTAPError == nil {
		rep.KTAPError = fmt.Errorf("ktap: reading the console: %w", rerr)
	}
	var ee *exec.ExitError
	switch {
	case werr == nil:
		rep.ExitCode = 0
	case errors.As(werr, &ee):
		rep.ExitCode = ee.ExitCode()
	case errors.Is(werr, exec.ErrWaitDelay):
		rep.ExitCode = cmd.ProcessState.ExitCode()
	default:
		return nil, fmt.Errorf("qemu: %w", werr)
	}
	mu.Lock()
	hung, stop := rep.TimedOut, stopped
	mu.Unlock()
	rep.Outcome = classify(hung, rep)
	if stop && !hung {
		rep.Outcome = Stopped
	}
	return rep, nil
}

// panicStatus reports whether a QEMU run state is one QEMU entered by itself.
func panicStatus(s string) bool {
	switch s {
	case "internal-error", "guest-panicked", "io-error", "shutdown", "watchdog":
		return true
	}
	return false
}

// classify maps an exit to an outcome. A pass needs both the kernel's pass exit and a
// complete KTAP log with no failure anywhere: one without the other is a failure.
func classify(hung bool, rep *Report) Outcome {
	switch {
	case hung, rep.ExitCode == ktest.QEMUStatus(ktest.ExitHang):
		return Hang
	case rep.ExitCode == ktest.QEMUStatus(ktest.ExitPass):
		if rep.KTAPError != nil || len(rep.Results) == 0 || rep.Failures > 0 {
			return Fail
		}
		for _, r := range rep.Results {
			if r.Failed() {
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

// limitedBuffer keeps the first 64 KiB written to it (QEMU's stderr) and drops the rest.
type limitedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := 64<<10 - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Summary is a few human lines about the report.
func (r *Report) Summary() []string {
	var s []string
	for _, suite := range r.Results {
		s = append(s, fmt.Sprintf("suite %s: %d/%d cases passed", Printable(suite.Name), suite.Passed(), len(suite.Children)))
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
