package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"tracebed/matrix"
	"tracebed/report"
)

func cmdReport(args []string, stdout, stderr io.Writer) (int, error) {
	fs := newFlags("report", stderr)
	baseline := fs.String("baseline", "", "an earlier results/<run-id> directory to compare with")
	out := fs.String("o", "", "the HTML file to write (default DIR/report.html)")
	if err := parseFlags(fs, args, true); err != nil {
		return 0, err
	}
	if fs.NArg() != 1 {
		return 0, usageError{"report: want exactly one results directory"}
	}
	dir := fs.Arg(0)
	m, err := matrix.Load(dir)
	if err != nil {
		return 0, usageError{err.Error()}
	}
	var base *matrix.Matrix
	if *baseline != "" {
		if base, err = matrix.Load(*baseline); err != nil {
			return 0, usageError{err.Error()}
		}
	}
	page, err := report.Build(m, base)
	if err != nil {
		return 0, err
	}
	path := *out
	if path == "" {
		path = filepath.Join(dir, "report.html")
	}
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	if err := page.Write(f); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	fmt.Fprintf(stdout, "tracebed: report %s: %d configurations, %d charts", path, len(page.Rows), len(page.Charts))
	if base != nil {
		fmt.Fprintf(stdout, ", %d regressions against %s", page.Regressed, page.Baseline)
	}
	fmt.Fprintln(stdout)
	return 0, nil
}
