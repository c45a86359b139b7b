// Command tracebed builds and boots the tracebed kernel in QEMU and reports its KTAP results.
//
//	tracebed run [--smp N] [--suite S] [--append ARGS] [--timeout D] [--kernel F] [--mem MiB]
//	             [--accel tcg|kvm] [--machine M] [--gdb] [--quiet]
//	tracebed build [-o build/kernel.elf]
//	tracebed parse LOGFILE      (a serial log captured anywhere: QEMU, KVM, Xen)
//
// It exits 0 only when every selected suite passed; 1 on a failure, hang, fault or reset;
// 2 on bad usage.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"tracebed/qemu"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = "usage: tracebed run|build|parse [flags] (tracebed CMD -h for flags)"

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
	if err := parseFlags(fs, args, false); err != nil {
		return 0, err
	}
	if cfg.Timeout <= 0 {
		return 0, usageError{"run: --timeout must be positive"}
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
	var live io.Writer = stdout
	if *quiet {
		live = nil
	}
	if cfg.GDB {
		fmt.Fprintf(stderr, "tracebed: waiting for GDB: gdb %s -ex 'target remote :1234'\n", cfg.Kernel)
	}
	rep, err := qemu.Run(cfg, live)
	if err != nil {
		return 0, err
	}
	report(stdout, rep)
	if rep.Outcome != qemu.Pass {
		return 1, nil
	}
	return 0, nil
}

func report(w io.Writer, rep *qemu.Report) {
	if rep.Outcome != qemu.Pass && rep.Outcome != qemu.Fail { // the run ended abnormally
		fmt.Fprintf(w, "tracebed: %s — last %d console lines:\n", rep.Outcome, len(rep.Tail))
		for _, l := range rep.Tail {
			fmt.Fprintln(w, "  | "+l)
		}
		if rep.Stderr != "" {
			fmt.Fprintln(w, "tracebed: QEMU said: "+rep.Stderr)
		}
	}
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
	if err := parseFlags(fs, args, true); err != nil {
		return 0, err
	}
	if fs.NArg() != 1 {
		return 0, usageError{"parse: want exactly one log file"}
	}
	data, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return 0, err
	}
	var p qemu.Parser
	for _, l := range strings.Split(string(data), "\n") {
		p.Line(l)
	}
	results, perr := p.Finish()
	ok := perr == nil && len(results) > 0
	for _, s := range results {
		fmt.Fprintf(stdout, "suite %s: %s, %d/%d cases passed\n", s.Name, map[bool]string{true: "ok", false: "not ok"}[s.OK], s.Passed(), len(s.Children))
		ok = ok && s.OK
	}
	if perr != nil {
		fmt.Fprintln(stdout, perr)
	}
	if !ok {
		return 1, nil
	}
	return 0, nil
}
