package qemu

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// JSONResult is one KTAP result as data: its path from the top ("smp/cpus_online"), its
// outcome, directive and diagnostics, "key=value" ones parsed into numbers (a comma-separated
// list of numbers into a list) where they are numbers.
type JSONResult struct {
	Path      string         `json:"path"`
	Depth     int            `json:"depth"`
	Number    int            `json:"number"`
	Name      string         `json:"name"`
	Outcome   string         `json:"outcome"` // pass, fail, skip, todo (a TODO result that failed)
	Directive string         `json:"directive,omitempty"`
	Planned   int            `json:"planned,omitempty"` // of a suite: its plan, -1 for none
	Diags     map[string]any `json:"diags,omitempty"`
	Notes     []string       `json:"notes,omitempty"` // diagnostic lines that are not key=value
}

// JSONRun is a run, or a parsed log, as data.
type JSONRun struct {
	Config    *Config      `json:"config,omitempty"`
	Outcome   string       `json:"outcome"`
	ExitCode  *int         `json:"exit_code,omitempty"` // QEMU's exit status; absent for a parsed log
	Failures  int          `json:"failures"`
	KTAPError string       `json:"ktap_error,omitempty"`
	FirstKTAP float64      `json:"first_ktap_seconds,omitempty"`
	Seconds   float64      `json:"seconds,omitempty"`
	Results   []JSONResult `json:"results"`
	Tail      []string     `json:"tail,omitempty"` // the last console lines, for a run that did not pass
	Stack     []string     `json:"fatal_stack,omitempty"`
	Diagnosis *Diagnosis   `json:"diagnosis,omitempty"`
}

// Flatten lists results and their children depth first, with paths.
func Flatten(results []*Result) []JSONResult {
	var out []JSONResult
	var walk func(rs []*Result, prefix string, depth int)
	walk = func(rs []*Result, prefix string, depth int) {
		for _, r := range rs {
			path := r.Name
			if prefix != "" {
				path = prefix + "/" + r.Name
			}
			j := JSONResult{Path: safeText(path), Depth: depth, Number: r.Number, Name: safeText(r.Name),
				Outcome: outcomeOf(r), Directive: safeText(r.Directive)}
			if len(r.Children) > 0 || r.Planned >= 0 {
				j.Planned = r.Planned
			}
			for _, d := range r.Diags {
				k, v, ok := strings.Cut(d, "=")
				if !ok || k == "" || strings.ContainsAny(k, " \t") {
					j.Notes = append(j.Notes, safeText(d))
					continue
				}
				if j.Diags == nil {
					j.Diags = map[string]any{}
				}
				if dv, isStr := DiagValue(v).(string); isStr {
					j.Diags[safeText(k)] = safeText(dv)
				} else {
					j.Diags[safeText(k)] = DiagValue(v)
				}
			}
			out = append(out, j)
			walk(r.Children, path, depth+1)
		}
	}
	walk(results, "", 0)
	return out
}

// safeText escapes what encoding/json leaves raw but a terminal obeys: DEL, the C1 controls
// (U+0080-U+009F, CSI among them) and invalid UTF-8, as Go escapes ("\x7f", "\u009b").
func safeText(s string) string {
	clean := utf8.ValidString(s)
	for _, r := range s {
		if r == 0x7f || r >= 0x80 && r < 0xa0 {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i, w := 0, 0; i < len(s); i += w {
		r, size := utf8.DecodeRuneInString(s[i:])
		w = size
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == 0x7f || r >= 0x80 && r < 0xa0:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
	}
	return b.String()
}

func outcomeOf(r *Result) string {
	switch {
	case r.Todo() && !r.OK:
		return "todo"
	case strings.HasPrefix(r.Directive, "SKIP") && r.OK:
		return "skip"
	case r.OK:
		return "pass"
	}
	return "fail"
}

// DiagValue parses a diagnostic's value: a number, a comma-separated list of numbers, or else
// the string itself.
func DiagValue(v string) any {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		return f
	}
	if strings.Contains(v, ",") {
		parts := strings.Split(v, ",")
		nums := make([]float64, 0, len(parts))
		for _, p := range parts {
			f, err := strconv.ParseFloat(p, 64)
			if err != nil {
				return v
			}
			nums = append(nums, f)
		}
		return nums
	}
	return v
}

// JSON returns the report as data (cfg may be nil).
func (r *Report) JSON(cfg *Config) JSONRun {
	j := JSONRun{Config: cfg, Outcome: r.Outcome.String(), Failures: r.Failures,
		FirstKTAP: r.FirstKTAP.Seconds(), Seconds: r.Total.Seconds(), Results: Flatten(r.Results),
		Stack: r.Stack, Diagnosis: r.Diagnosis}
	code := r.ExitCode
	j.ExitCode = &code
	if r.KTAPError != nil {
		j.KTAPError = r.KTAPError.Error()
	}
	if r.Outcome != Pass {
		j.Tail = r.Tail
	}
	if j.Results == nil {
		j.Results = []JSONResult{}
	}
	return j
}
