// Command tracebed builds and boots the tracebed kernel in QEMU and reports its KTAP results.
//
//	tracebed run [--smp N] [--suite S] [--append ARGS] [--timeout D] [--kernel F] [--mem MiB]
//	             [--accel tcg|kvm] [--machine M] [--gdb] [--quiet]
//	             [--json] [--diagnose D]
//	tracebed matrix [--machine q35,pc,microvm] [--smp 1,2,4,8] [--append-set 'idt=native|idt=pvshim']
//	             [--suite S] [--append ARGS] [--jobs N] [--results DIR] [--json] [run flags]
//	tracebed report [--baseline DIR] [-o FILE] DIR
//	tracebed build [-o build/kernel.elf]
//	tracebed parse [--json] LOGFILE|-   (a serial log captured anywhere: QEMU, KVM, Xen)
//
// It exits 0 only when every selected suite passed; 1 on a failure, hang, fault or reset;
// 2 on bad usage.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"tracebed/qemu"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = "usage: tracebed run|matrix|report|build|parse [flags] (tracebed CMD -h for flags)"

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "tracebed: "+usage)
		return 2
	}
	var err error
	code := 0
	switch args[0] {
	case "run":
		code, err = cmdRun(args[1:], stdout, stderr)
	case "build":
		code, err = cmdBuild(args[1:], stderr)
	case "parse":
		code, err = cmdParse(args[1:], stdout, stderr)
	case "matrix":
		code, err = cmdMatrix(args[1:], stdout, stderr)
	case "report":
		code, err = cmdReport(args[1:], stdout, stderr)
	default:
		err = usageError{fmt.Sprintf("unknown command %q; %s", args[0], usage)}
	}
	var ue usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "tracebed:", ue.msg)
		return 2
	case errors.Is(err, flag.ErrHelp):
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "tracebed:", err)
		return 1
	}
	return code
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args; positional arguments are refused unless positional is set.
func parseFlags(fs *flag.FlagSet, args []string, positional bool) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 && !positional {
		return usageError{fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

func cmdRun(args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlags("run", stderr)
	cfg := qemu.Config{}
	fs.StringVar(&cfg.Kernel, "kernel", "build/kernel.elf", "kernel image")
	fs.IntVar(&cfg.SMP, "smp", 4, "CPUs")
	fs.IntVar(&cfg.MemoryMiB, "mem", 1024, "memory in MiB")
	fs.StringVar(&cfg.Accel, "accel", "tcg", "tcg or kvm")
	fs.StringVar(&cfg.Machine, "machine", "q35", "QEMU machine (q35, pc, microvm)")
	fs.StringVar(&cfg.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "kill QEMU and report a hang after this")
	fs.BoolVar(&cfg.GDB, "gdb", false, "start paused, GDB stub on tcp::1234 (-s -S)")
	suite := fs.String("suite", "", "suites to run, comma-separated (default: the kernel's defaults)")
	extra := fs.String("append", "", "more kernel command-line words (key=value ...)")
	quiet := fs.Bool("quiet", false, "do not echo the console")
	asJSON := fs.Bool("json", false, "print the report as JSON on stdout (the console goes to stderr)")
	fs.DurationVar(&cfg.DiagnoseAfter, "diagnose", 0, "after this long, diagnose the running guest over QMP (vCPU states, stacks, an NMI) and go on")
	if err := parseFlags(fs, args, false); err != nil {
		return 0, err
	}
	if err := checkRunFlags(cfg); err != nil {
		return 0, err
	}
	var words []string
	if *suite != "" {
		words = append(words, "suite="+*suite)
	}
	if *extra != "" {
		words = append(words, strings.Fields(*extra)...)
	}
	cfg.Append = strings.Join(words, " ")
	if err := cfg.Validate(); err != nil {
		return 0, usageError{err.Error()}
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return 0, fmt.Errorf("run: %s not found: install Debian's qemu-system-x86 (make installs it when run as root)", cfg.QEMU)
	}
	if err := qemu.CheckKernel(cfg.Kernel); err != nil {
		return 0, usageError{err.Error()}
	}
	var live io.Writer = stdout
	switch {
	case *quiet:
		live = nil
	case *asJSON:
		live = stderr
	}
	if cfg.GDB {
		fmt.Fprintf(stderr, "tracebed: waiting for GDB: gdb %s -ex 'target remote :1234'\n", cfg.Kernel)
	}
	rep, err := qemu.Run(cfg, live)
	if err != nil {
		return 0, err
	}
	if *asJSON {
		if err := writeJSON(stdout, rep.JSON(&cfg)); err != nil {
			return 0, err
		}
	} else {
		printReport(stdout, rep)
	}
	if rep.Outcome != qemu.Pass {
		return 1, nil
	}
	return 0, nil
}

// checkRunFlags refuses values the library would take as "the default" (0, "") and timeouts
// that mean nothing: on the command line they are mistakes.
func checkRunFlags(cfg qemu.Config) error {
	switch {
	case cfg.Timeout <= 0:
		return usageError{"run: --timeout must be positive"}
	case cfg.SMP < 1:
		return usageError{fmt.Sprintf("run: --smp %d: want 1 to %d", cfg.SMP, qemu.MaxSMP)}
	case cfg.MemoryMiB < 1:
		return usageError{fmt.Sprintf("run: --mem %d: want %d to %d MiB", cfg.MemoryMiB, qemu.MinMemoryMiB, qemu.MaxMemoryMiB)}
	case cfg.Accel == "" || cfg.Machine == "" || cfg.QEMU == "" || cfg.Kernel == "":
		return usageError{"run: --accel, --machine, --qemu and --kernel may not be empty"}
	case cfg.DiagnoseAfter < 0:
		return usageError{"run: --diagnose must not be negative"}
	}
	return nil
}

func printReport(w io.Writer, rep *qemu.Report) {
	if rep.Outcome != qemu.Pass && rep.Outcome != qemu.Fail { // the run ended abnormally
		fmt.Fprintf(w, "tracebed: %s — last %d console lines:\n", rep.Outcome, len(rep.Tail))
		for _, l := range rep.Tail {
			fmt.Fprintln(w, "  | "+l)
		}
		if rep.Stderr != "" {
			fmt.Fprintln(w, "tracebed: QEMU said: "+rep.Stderr)
		}
	}
	if rep.Diagnosis != nil {
		for _, l := range rep.Diagnosis.Lines() {
			fmt.Fprintln(w, "tracebed: "+l)
		}
		for _, l := range rep.Diagnosis.AfterNMI {
			fmt.Fprintln(w, "  | "+l)
		}
	}
	printFailures(w, rep.Results)
	if len(rep.Stack) > 0 {
		fmt.Fprintln(w, "tracebed: fatal trap stack:")
		for _, l := range rep.Stack {
			fmt.Fprintln(w, "  "+l)
		}
	}
	for _, l := range rep.Summary() {
		fmt.Fprintln(w, "tracebed: "+l)
	}
}

func cmdBuild(args []string, stderr io.Writer) (int, error) {
	fs := newFlags("build", stderr)
	out := fs.String("o", "build/kernel.elf", "output image")
	if err := parseFlags(fs, args, false); err != nil {
		return 0, err
	}
	return 0, qemu.BuildKernel(".", *out)
}

func cmdParse(args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlags("parse", stderr)
	asJSON := fs.Bool("json", false, "print the results as JSON")
	if err := parseFlags(fs, args, true); err != nil {
		return 0, err
	}
	if fs.NArg() != 1 {
		return 0, usageError{"parse: want exactly one log file (- for standard input)"}
	}
	var in io.Reader = os.Stdin
	if name := fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil && st.IsDir() {
			return 0, usageError{fmt.Sprintf("parse: %s is a directory", name)}
		}
		in = f
	}
	var p qemu.Parser
	var last string
	cut, rerr := qemu.ReadLines(in, func(l string) { last = l; p.Line(l) })
	if cut {
		p.CutMidLine(last)
	}
	results, perr := p.Finish()
	if rerr != nil {
		if perr == nil {
			perr = rerr
		} else {
			perr = fmt.Errorf("%w; %v", rerr, perr)
		}
	}
	ok := perr == nil && p.Failures() == 0 && (len(results) > 0 || p.SkipAll() != "")
	for _, s := range results {
		ok = ok && !s.Failed()
	}
	if *asJSON {
		j := qemu.JSONRun{Outcome: "PASS", Failures: p.Failures(), Results: qemu.Flatten(results)}
		if !ok {
			j.Outcome = "FAIL"
		}
		if perr != nil {
			j.KTAPError = perr.Error()
		}
		if j.Results == nil {
			j.Results = []qemu.JSONResult{}
		}
		if err := writeJSON(stdout, j); err != nil {
			return 0, err
		}
	} else {
		for _, s := range results {
			fmt.Fprintf(stdout, "suite %s: %s, %d/%d cases passed\n", qemu.Printable(s.Name),
				map[bool]string{true: "ok", false: "not ok"}[s.OK], s.Passed(), len(s.Children))
		}
		printFailures(stdout, results)
		if r := p.SkipAll(); r != "" {
			fmt.Fprintf(stdout, "every test skipped: %s\n", qemu.Printable(r))
		}
		if n := p.Failures(); n > 0 {
			fmt.Fprintf(stdout, "%d failures (results not ok, bail-outs)\n", n)
		}
		if perr != nil {
			fmt.Fprintln(stdout, perr)
		}
		fmt.Fprintln(stdout, map[bool]string{true: "PASS", false: "FAIL"}[ok])
	}
	if !ok {
		return 1, nil
	}
	return 0, nil
}

// printFailures names every failed result with its diagnostics (the reason a case or the
// command line was refused), at most 5 lines of each, so that --quiet still says why.
func printFailures(w io.Writer, results []*qemu.Result) {
	for _, r := range qemu.Flatten(results) {
		if r.Outcome != "fail" {
			continue
		}
		fmt.Fprintf(w, "tracebed: not ok %s\n", qemu.Printable(r.Path))
		n := 0
		for _, d := range r.Notes {
			if n++; n <= 5 {
				fmt.Fprintf(w, "tracebed:   # %s\n", qemu.Printable(d))
			}
		}
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
