package qemu

import (
	"fmt"
	"strconv"
	"strings"
)

// Result is one KTAP test result: a case, or a suite with its cases as Children.
type Result struct {
	Number    int
	Name      string
	OK        bool
	Directive string   // "SKIP ..." or "TODO ..." after '#', if any
	Diags     []string // diagnostic lines before the result, without "# "
	Children  []*Result
	Planned   int // the nested plan, -1 when there was none
}

// Diag returns the value of a "key=value" diagnostic.
func (r *Result) Diag(key string) (string, bool) {
	for _, d := range r.Diags {
		if k, v, ok := strings.Cut(d, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// Passed counts the children that passed.
func (r *Result) Passed() int {
	n := 0
	for _, c := range r.Children {
		if c.OK {
			n++
		}
	}
	return n
}

// Find returns the direct child named name.
func (r *Result) Find(name string) *Result {
	for _, c := range r.Children {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// doc is one KTAP document being read, at one nesting depth.
type doc struct {
	started bool
	plan    int
	results []*Result
	diags   []string
}

// Parser reads KTAP v1 (and TAP 13/14 headers) line by line as it arrives, nested by
// four-space indentation. Lines that are not KTAP (the kernel's own console messages) are
// ignored. Problems are collected, never fatal: a log cut short is still reported as far as
// it got.
type Parser struct {
	docs   []*doc
	Errors []string
}

// maxDepth bounds nesting (suites of suites of cases need 3).
const maxDepth = 8

func (p *Parser) at(depth int) *doc {
	for len(p.docs) <= depth {
		p.docs = append(p.docs, &doc{plan: -1})
	}
	return p.docs[depth]
}

func (p *Parser) errorf(format string, args ...any) {
	p.Errors = append(p.Errors, fmt.Sprintf(format, args...))
}

// Line feeds one line of console output.
func (p *Parser) Line(line string) {
	line = strings.TrimRight(line, "\r\n")
	body := strings.TrimLeft(line, " ")
	indent := len(line) - len(body)
	if indent%4 != 0 || indent/4 >= maxDepth {
		return // not KTAP
	}
	depth := indent / 4
	switch {
	case strings.HasPrefix(body, "KTAP version ") || strings.HasPrefix(body, "TAP version "):
		d := p.at(depth)
		if d.started && depth == 0 {
			p.errorf("second KTAP header at top level")
		}
		*d = doc{started: true, plan: -1}
	case strings.HasPrefix(body, "1.."):
		n, err := strconv.Atoi(strings.TrimSpace(body[3:]))
		if err != nil || n < 0 {
			p.errorf("malformed plan %q", body)
			return
		}
		p.at(depth).plan = n
	case strings.HasPrefix(body, "ok ") || strings.HasPrefix(body, "not ok "):
		p.result(depth, body)
	case strings.HasPrefix(body, "#"):
		if depth < len(p.docs) && p.docs[depth].started {
			d := strings.TrimSpace(strings.TrimPrefix(body, "#"))
			if !strings.HasPrefix(d, "Subtest:") {
				p.docs[depth].diags = append(p.docs[depth].diags, d)
			}
		}
	}
}

func (p *Parser) result(depth int, body string) {
	d := p.at(depth)
	if !d.started {
		d.started = true // tolerate a missing header, as KTAP consumers do
	}
	ok := strings.HasPrefix(body, "ok ")
	rest := strings.TrimPrefix(strings.TrimPrefix(body, "not ok "), "ok ")
	numStr, name, _ := strings.Cut(rest, " ")
	n, err := strconv.Atoi(numStr)
	if err != nil {
		p.errorf("malformed result line %q", body)
		return
	}
	r := &Result{Number: n, OK: ok, Planned: -1, Diags: d.diags}
	d.diags = nil
	if nm, dir, found := strings.Cut(name, " # "); found {
		name, r.Directive = nm, strings.TrimSpace(dir)
	} else if nm, dir, found := strings.Cut(name, "# "); found && nm == "" {
		name, r.Directive = "", strings.TrimSpace(dir)
	}
	r.Name = strings.TrimSpace(strings.TrimPrefix(name, "- "))
	if want := len(d.results) + 1; n != want {
		p.errorf("result %q numbered %d, expected %d", r.Name, n, want)
	}
	if depth+1 < len(p.docs) {
		child := p.docs[depth+1]
		if child.started {
			r.Children, r.Planned = child.results, child.plan
			if child.plan >= 0 && child.plan != len(child.results) {
				p.errorf("%s: planned %d results, got %d", r.Name, child.plan, len(child.results))
			}
			for _, c := range child.results {
				if !c.OK && r.OK && !strings.HasPrefix(c.Directive, "TODO") {
					p.errorf("%s: reported ok with failing case %s", r.Name, c.Name)
				}
			}
		}
		// Deeper documents end with their parent's result.
		for _, x := range p.docs[depth+1:] {
			*x = doc{plan: -1}
		}
	}
	d.results = append(d.results, r)
}

// Finish ends the input and returns the top-level results, with an error when the log was
// cut short (a plan not met, a suite without its result line) or malformed.
func (p *Parser) Finish() ([]*Result, error) {
	if len(p.docs) == 0 || !p.docs[0].started {
		return nil, fmt.Errorf("ktap: no KTAP output")
	}
	top := p.docs[0]
	var problems []string
	for depth := len(p.docs) - 1; depth > 0; depth-- {
		if d := p.docs[depth]; d.started && (len(d.results) > 0 || d.plan > 0) {
			problems = append(problems, fmt.Sprintf("truncated: a suite at depth %d has %d of %d results and no result line of its own", depth, len(d.results), d.plan))
		}
	}
	if top.plan < 0 {
		problems = append(problems, "truncated: no top-level plan")
	} else if len(top.results) != top.plan {
		problems = append(problems, fmt.Sprintf("truncated: %d of %d planned results", len(top.results), top.plan))
	}
	problems = append(problems, p.Errors...)
	if len(problems) > 0 {
		return top.results, fmt.Errorf("ktap: %s", strings.Join(problems, "; "))
	}
	return top.results, nil
}
