package ktest

import (
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"time"
)

// Output is KTAP version 1 (Documentation/dev-tools/ktap.rst in Linux): a top-level plan over
// the selected suites, each suite a nested, 4-space indented KTAP document over its cases,
// diagnostics as "# key=value" lines printed before the result line they belong to.

// Case is one named test.
type Case struct {
	Name string
	Run  func(t *T)
}

// Suite is a named list of cases.
type Suite struct {
	Name  string
	Cases []Case
}

// T is handed to a running case.
type T struct {
	w      io.Writer
	indent string
	failed bool
	skip   string
	Seed   int64
	Params map[string]string
}

// Diag prints a "# key=value" diagnostic; values print with %v.
func (t *T) Diag(key string, value any) { fmt.Fprintf(t.w, "%s# %s=%v\n", t.indent, key, value) }

// Logf prints a free-form diagnostic line.
func (t *T) Logf(format string, args ...any) {
	for _, l := range strings.Split(fmt.Sprintf(format, args...), "\n") {
		fmt.Fprintf(t.w, "%s# %s\n", t.indent, l)
	}
}

// Errorf marks the case failed and says why.
func (t *T) Errorf(format string, args ...any) {
	t.failed = true
	t.Logf("error: "+format, args...)
}

// Fatalf marks the case failed and stops it.
func (t *T) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	panic(stopCase{})
}

// Skip stops the case and reports it as skipped ("ok N name # SKIP reason"), for a case that
// cannot run on this machine (one that needs two CPUs on one, say).
func (t *T) Skip(reason string) {
	t.skip = reason
	panic(stopCase{})
}

// Failed reports whether the case has failed.
func (t *T) Failed() bool { return t.failed }

type stopCase struct{}

// run executes c, turning a panic into a failure with its stack.
func (t *T) run(c Case) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(stopCase); !ok {
				t.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}
	}()
	c.Run(t)
}

// Run prints the KTAP document for suites and reports whether every case passed.
func Run(w io.Writer, suites []Suite, opts Options) bool {
	fmt.Fprintln(w, "KTAP version 1")
	fmt.Fprintf(w, "1..%d\n", len(suites))
	all := true
	for i, s := range suites {
		const in = "    "
		fmt.Fprintf(w, "%sKTAP version 1\n%s# Subtest: %s\n%s1..%d\n", in, in, s.Name, in, len(s.Cases))
		ok := true
		for j, c := range s.Cases {
			t := &T{w: w, indent: in, Seed: opts.Seed, Params: opts.Params}
			start := time.Now()
			t.run(c)
			t.Diag("elapsed_ms", fmt.Sprintf("%.1f", float64(time.Since(start).Microseconds())/1000))
			directive := ""
			if t.skip != "" && !t.failed {
				directive = " # SKIP " + t.skip
			}
			fmt.Fprintf(w, "%s%s %d %s%s\n", in, verdict(!t.failed), j+1, c.Name, directive)
			ok = ok && !t.failed
		}
		fmt.Fprintf(w, "%s %d %s\n", verdict(ok), i+1, s.Name)
		all = all && ok
	}
	return all
}

func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "not ok"
}

// ReportError prints a KTAP document whose single result is the failed command line.
func ReportError(w io.Writer, err error) {
	fmt.Fprintf(w, "KTAP version 1\n1..1\n# error: %v\nnot ok 1 cmdline\n", err)
}
