package main

import (
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"tracebed/matrix"
	"tracebed/qemu"
)

func cmdMatrix(args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlags("matrix", stderr)
	base := qemu.Config{}
	fs.StringVar(&base.Kernel, "kernel", "build/kernel.elf", "kernel image")
	fs.IntVar(&base.MemoryMiB, "mem", 1024, "memory in MiB")
	fs.StringVar(&base.Accel, "accel", "tcg", "tcg or kvm")
	fs.StringVar(&base.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.DurationVar(&base.Timeout, "timeout", 10*time.Minute, "per run: diagnose, kill and report a hang after this")
	machines := fs.String("machine", "q35", "machines, comma-separated (q35, pc, microvm)")
	smp := fs.String("smp", "1,2,4", "CPU counts, comma-separated")
	set := fs.String("append-set", "-", "command-line variants separated by | (- for none), e.g. 'idt=native|idt=pvshim'")
	suite := fs.String("suite", "", "suites to run, comma-separated (default: the kernel's defaults)")
	extra := fs.String("append", "", "kernel command-line words for every run")
	jobs := fs.Int("jobs", runtime.NumCPU(), "host threads the runs may use at once (a run of N vCPUs takes min(N, jobs))")
	results := fs.String("results", "results", "directory for results/<run-id>/")
	asJSON := fs.Bool("json", false, "print the matrix as JSON on stdout")
	if err := parseFlags(fs, args, false); err != nil {
		return 0, err
	}
	if base.Timeout <= 0 {
		return 0, usageError{"matrix: --timeout must be positive"}
	}
	if *jobs < 1 {
		return 0, usageError{fmt.Sprintf("matrix: --jobs %d: want at least 1", *jobs)}
	}
	if *results == "" {
		return 0, usageError{"matrix: --results may not be empty"}
	}
	g := matrix.Grid{Base: base}
	var err error
	if g.Machines, err = matrix.ParseList("--machine", *machines); err != nil {
		return 0, usageError{err.Error()}
	}
	if g.SMP, err = matrix.ParseSMP(*smp); err != nil {
		return 0, usageError{err.Error()}
	}
	if g.Variants, err = matrix.ParseVariants(*set); err != nil {
		return 0, usageError{err.Error()}
	}
	var words []string
	if *suite != "" {
		words = append(words, "suite="+*suite)
	}
	words = append(words, strings.Fields(*extra)...)
	g.Base.Append = strings.Join(words, " ")
	cfgs, err := g.Configs()
	if err != nil {
		return 0, usageError{err.Error()}
	}
	if _, err := exec.LookPath(base.QEMU); err != nil {
		return 0, fmt.Errorf("matrix: %s not found: install Debian's qemu-system-x86 (make installs it when run as root)", base.QEMU)
	}
	if err := qemu.CheckKernel(base.Kernel); err != nil {
		return 0, usageError{err.Error()}
	}
	dir := filepath.Join(*results, matrix.NewRunID(time.Now()))
	r := &matrix.Runner{Dir: dir, Budget: *jobs}
	var wait func()
	switch {
	case *asJSON:
		lp := &lineProgress{w: stderr, t0: time.Now()}
		r.Progress, wait = lp, lp.Wait
	case isTerminal(stdout):
		bp := newBarProgress(stdout, len(cfgs))
		r.Progress, wait = bp, bp.Wait
	default:
		lp := &lineProgress{w: stdout, t0: time.Now()}
		r.Progress, wait = lp, lp.Wait
	}
	fmt.Fprintf(stderr, "tracebed: matrix: %d configurations, %d host threads at a time, results in %s\n", len(cfgs), *jobs, dir)
	m, err := r.Run(cfgs)
	wait()
	if err != nil {
		return 0, err
	}
	if *asJSON {
		if err := writeJSON(stdout, m); err != nil {
			return 0, err
		}
	} else {
		m.Summary(stdout)
		fmt.Fprintf(stdout, "tracebed: results in %s (tracebed report %s)\n", dir, dir)
	}
	if m.Failed() > 0 {
		return 1, nil
	}
	return 0, nil
}
