package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Result is one KTAP test result: a case, or a suite with its cases as Children.
type Result struct {
	Number    int
	Name      string
	OK        bool
	Directive string   // "SKIP ..." or "TODO ..." after '#', if any (the keyword upper-cased)
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

// Todo reports whether r carries a TODO directive: a failure that does not count (TAP).
func (r *Result) Todo() bool { return strings.HasPrefix(r.Directive, "TODO") }

// Failed reports whether r counts as a failure: not ok, and not TODO.
func (r *Result) Failed() bool { return !r.OK && !r.Todo() }

// doc is one KTAP document being read, at one nesting depth.
type doc struct {
	started bool
	plan    int
	skipAll string // the directive of a "1..0 # SKIP reason" plan
	n       int    // results seen (stored or not)
	results []*Result
	diags   []string
}

// Parser reads KTAP v1 (and TAP 13/14 headers) line by line as it arrives, nested by
// four-space indentation. Lines that are not KTAP (the kernel's own console messages, a
// hypervisor's) are ignored. Problems are collected, never fatal: a log cut short is still
// reported as far as it got.
//
// The verdict is conservative: a log passes (Finish returns no error and Failures is 0) only
// if it is complete and consistent, no result anywhere failed (also one the tree cannot hold:
// under a repeated header, below the nesting limit, without a parent document), and nothing
// bailed out. Memory is bounded whatever the input: at most maxStored results, maxErrors
// problems and maxDiags diagnostics per result are kept (the rest are counted).
type Parser struct {
	docs     []*doc
	errs     []string
	moreErrs int
	failures int // results that failed, at any depth, whether stored or not
	stored   int
	dropped  int
	bailed   bool
}

// Limits that bound a Parser's memory.
const (
	maxDepth  = 8 // nesting (suites of suites of cases need 3)
	maxStored = 200_000
	maxErrors = 50
	maxDiags  = 1000
	maxQuote  = 80 // bytes of a line quoted in a problem
)

func (p *Parser) at(depth int) *doc {
	for len(p.docs) <= depth {
		p.docs = append(p.docs, &doc{plan: -1})
	}
	return p.docs[depth]
}

func (p *Parser) errorf(format string, args ...any) {
	if len(p.errs) >= maxErrors {
		p.moreErrs++
		return
	}
	p.errs = append(p.errs, fmt.Sprintf(format, args...))
}

// Quote returns s for a message: at most maxQuote bytes, control characters and invalid
// UTF-8 escaped, in double quotes.
func Quote(s string) string {
	if len(s) > maxQuote {
		cut := maxQuote
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		return strconv.Quote(s[:cut]) + fmt.Sprintf("... (%d bytes)", len(s))
	}
	return strconv.Quote(s)
}

// maxKept bounds the bytes kept of one name, directive or diagnostic line, so that stored
// results cost bounded memory however long their lines.
const maxKept = 4 << 10

// clip cuts s to maxKept bytes, on a character boundary.
func clip(s string) string {
	if len(s) <= maxKept {
		return s
	}
	cut := maxKept
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.Clone(s[:cut]) + "..."
}

// Printable returns a name from a log for a human line: control characters and invalid UTF-8
// escaped as in Go strings, at most 200 bytes.
func Printable(s string) string {
	q := strconv.Quote(s)
	q = q[1 : len(q)-1]
	if len(q) > 200 {
		cut := 200
		for cut > 0 && !utf8.RuneStart(q[cut]) {
			cut--
		}
		q = q[:cut] + "..."
	}
	return q
}

// timestamp is a kernel log timestamp ("[   12.345678] ") as KVM or Xen guests' consoles
// and dmesg print them.
var timestamp = regexp.MustCompile(`^\[\s*\d+\.\d+\] ?`)

// resultLine matches a result line's start, wherever it is indented.
var resultLine = regexp.MustCompile(`^(not )?ok( \d+|$)`)

// Line feeds one line of console output (with or without its line end).
func (p *Parser) Line(line string) {
	line = strings.TrimRight(line, "\r\n")
	if strings.HasPrefix(line, "[") {
		line = timestamp.ReplaceAllLiteralString(line, "")
	}
	body := strings.TrimLeft(line, " ")
	indent := len(line) - len(body)
	if t := strings.TrimLeft(body, " \t"); t != body || indent%4 != 0 || indent/4 >= maxDepth {
		// Not KTAP indentation. A result or bail-out there is still one: counted, not lost.
		switch {
		case resultLine.MatchString(t) || strings.HasPrefix(t, "Bail out!"):
			p.errorf("KTAP line indented by %s, not a multiple of four spaces within %d levels: %s",
				Quote(line[:len(line)-len(t)]), maxDepth, Quote(t))
			if strings.HasPrefix(t, "not ok") && !isTodo(t) || strings.HasPrefix(t, "Bail out!") {
				p.failures++
			}
		}
		return
	}
	depth := indent / 4
	switch {
	case strings.HasPrefix(body, "KTAP version ") || strings.HasPrefix(body, "TAP version "):
		d := p.at(depth)
		if d.started && (depth == 0 || d.n > 0 || d.plan >= 0) {
			p.errorf("second KTAP header at depth %d before its document ended", depth)
			if depth == 0 {
				return
			}
		}
		*d = doc{started: true, plan: -1}
	case strings.HasPrefix(body, "1.."):
		p.plan(depth, body)
	case strings.HasPrefix(body, "ok ") || strings.HasPrefix(body, "not ok ") || body == "ok" || body == "not ok":
		p.result(depth, body)
	case strings.HasPrefix(body, "Bail out!"):
		p.bailed = true
		p.errorf("bail out at depth %d: %s", depth, Quote(strings.TrimSpace(strings.TrimPrefix(body, "Bail out!"))))
	case strings.HasPrefix(body, "#"):
		if depth < len(p.docs) && p.docs[depth].started {
			d := strings.TrimSpace(strings.TrimPrefix(body, "#"))
			dc := p.docs[depth]
			if !strings.HasPrefix(d, "Subtest:") && len(dc.diags) < maxDiags {
				dc.diags = append(dc.diags, clip(d))
			}
		}
	}
}

// plan reads "1..N", optionally followed by a directive ("1..0 # SKIP reason").
func (p *Parser) plan(depth int, body string) {
	num, dir, _ := strings.Cut(body[3:], "#")
	n, err := strconv.Atoi(strings.TrimSpace(num))
	if err != nil || n < 0 {
		p.errorf("malformed plan %s", Quote(body))
		return
	}
	d := p.at(depth)
	if !d.started {
		d.started = true // tolerate a missing header, as KTAP consumers do
	}
	if d.plan >= 0 {
		p.errorf("second plan at depth %d: %s", depth, Quote(body))
	}
	d.plan = n
	if dir = directive(dir); n == 0 && strings.HasPrefix(dir, "SKIP") {
		d.skipAll = dir
	}
}

// directive normalises what follows a '#' in a result or plan: SKIP and TODO are recognised
// in any case ("# todo", "#TODO"); anything else is not a directive.
func directive(s string) string {
	s = strings.TrimSpace(s)
	for _, k := range []string{"SKIP", "TODO"} {
		if len(s) >= len(k) && strings.EqualFold(s[:len(k)], k) && (len(s) == len(k) || s[len(k)] == ' ' || s[len(k)] == '\t') {
			return k + s[len(k):]
		}
	}
	return ""
}

func isTodo(body string) bool {
	_, after, ok := strings.Cut(body, "#")
	return ok && strings.HasPrefix(directive(after), "TODO")
}

func (p *Parser) result(depth int, body string) {
	d := p.at(depth)
	if !d.started {
		if depth > 0 && (depth-1 >= len(p.docs) || !p.docs[depth-1].started) {
			p.errorf("a result at depth %d with no document above it: %s", depth, Quote(body))
		}
		d.started = true // tolerate a missing header, as KTAP consumers do
	}
	ok := strings.HasPrefix(body, "ok")
	rest := strings.TrimPrefix(strings.TrimPrefix(body, "not ok"), "ok")
	rest = strings.TrimPrefix(rest, " ")
	numStr, name, _ := strings.Cut(rest, " ")
	n, err := strconv.Atoi(numStr)
	if err != nil {
		p.errorf("malformed result line %s", Quote(body))
		if !ok && !isTodo(body) {
			p.failures++
		}
		return
	}
	r := &Result{Number: n, OK: ok, Planned: -1, Diags: d.diags}
	d.diags = nil
	if nm, dir, found := strings.Cut(name, "#"); found {
		if dv := directive(dir); dv != "" {
			name, r.Directive = nm, dv
		}
	}
	r.Name = clip(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), "- ")))
	r.Directive = clip(r.Directive)
	d.n++
	if n != d.n {
		p.errorf("result %s numbered %d, expected %d", Quote(r.Name), n, d.n)
	}
	if !ok && strings.HasPrefix(r.Directive, "SKIP") {
		p.errorf("%s: not ok with a SKIP directive", Quote(r.Name))
	}
	if r.Failed() {
		p.failures++
	}
	if depth+1 < len(p.docs) {
		child := p.docs[depth+1]
		if child.started {
			r.Children, r.Planned = child.results, child.plan
			switch {
			case child.plan < 0:
				p.errorf("%s: its cases have no plan", Quote(r.Name))
			case child.plan != child.n:
				p.errorf("%s: planned %d results, got %d", Quote(r.Name), child.plan, child.n)
			}
			if child.skipAll != "" && r.Directive == "" {
				r.Directive = child.skipAll
			}
			for _, c := range child.results {
				if c.Failed() && r.OK && !r.Todo() {
					p.errorf("%s: reported ok with failing case %s", Quote(r.Name), Quote(c.Name))
				}
			}
		}
		// Deeper documents end with their parent's result; one below the child that still
		// holds results or a plan never got a result line of its own.
		for i, x := range p.docs[depth+1:] {
			if i > 0 && x.started && (x.n > 0 || x.plan > 0) {
				p.errorf("%s: a document at depth %d has %d of %d results and no result line of its own",
					Quote(r.Name), depth+1+i, x.n, x.plan)
			}
			*x = doc{plan: -1}
		}
	}
	if p.stored >= maxStored {
		p.dropped++
		return
	}
	p.stored++
	d.results = append(d.results, r)
}

// CutMidLine records that the log ended inside a line (last, already fed to Line). If that
// line is KTAP, what it said may be incomplete ("ok 1" of "ok 1 smp # SKIP ..."), and so is
// the log; console noise cut short does not matter.
func (p *Parser) CutMidLine(last string) {
	t := strings.TrimLeft(strings.TrimRight(last, "\r"), " \t")
	for _, k := range []string{"ok", "not ok", "1..", "KTAP", "TAP", "#", "Bail"} {
		if strings.HasPrefix(t, k) {
			p.errorf("truncated: the log ends inside a KTAP line: %s", Quote(t))
			return
		}
	}
}

// Failures counts the results that failed (not ok and not TODO) at any depth, and the lines
// that bailed out or looked like failing results where KTAP cannot have them.
func (p *Parser) Failures() int {
	n := p.failures
	if p.bailed {
		n++
	}
	return n
}

// Finish ends the input and returns the top-level results, with an error when the log was
// cut short (a plan not met, a suite without its result line), malformed, inconsistent or
// bailed out.
func (p *Parser) Finish() ([]*Result, error) {
	if len(p.docs) == 0 || !p.docs[0].started {
		if len(p.errs) > 0 {
			return nil, fmt.Errorf("ktap: no KTAP output; %s", strings.Join(p.errs, "; "))
		}
		return nil, fmt.Errorf("ktap: no KTAP output")
	}
	top := p.docs[0]
	var problems []string
	for depth := len(p.docs) - 1; depth > 0; depth-- {
		if d := p.docs[depth]; d.started && (d.n > 0 || d.plan > 0) {
			problems = append(problems, fmt.Sprintf("truncated: a suite at depth %d has %d of %d results and no result line of its own", depth, d.n, d.plan))
		}
	}
	switch {
	case top.plan < 0:
		problems = append(problems, "truncated: no top-level plan")
	case top.n != top.plan:
		problems = append(problems, fmt.Sprintf("truncated: %d of %d planned results", top.n, top.plan))
	case top.plan == 0 && top.skipAll == "":
		problems = append(problems, "no results: the plan is 1..0 without a SKIP reason")
	}
	problems = append(problems, p.errs...)
	if p.moreErrs > 0 {
		problems = append(problems, fmt.Sprintf("and %d more problems", p.moreErrs))
	}
	if p.dropped > 0 {
		problems = append(problems, fmt.Sprintf("%d results past the first %d not kept", p.dropped, maxStored))
	}
	if len(problems) > 0 {
		return top.results, fmt.Errorf("ktap: %s", strings.Join(problems, "; "))
	}
	return top.results, nil
}

// SkipAll returns the reason of a top-level "1..0 # SKIP reason" plan, "" if none.
func (p *Parser) SkipAll() string {
	if len(p.docs) == 0 {
		return ""
	}
	return p.docs[0].skipAll
}

// Log limits: a line is kept up to MaxLine bytes (the rest is dropped, the line still
// counts); a "line" longer than MaxRunaway is no console output, and reading stops.
const (
	MaxLine    = 1 << 20
	MaxRunaway = 64 << 20
)

// ErrRunaway ends ReadLines on input that is not a console log (/dev/zero, say).
var ErrRunaway = errors.New("a line longer than 64 MiB: not a console log")

// ReadLines calls fn with each line of r, without its line end, in bounded memory: lines
// longer than MaxLine are cut there (the rest is read and dropped). It returns at the end of
// r, on a read error, or with ErrRunaway; cut reports whether the last line had no line end
// (a log cut mid-line).
func ReadLines(r io.Reader, fn func(line string)) (cut bool, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	long := 0 // bytes of the current line, kept or not
	for {
		frag, rerr := br.ReadSlice('\n')
		long += len(frag)
		if room := MaxLine - len(buf); room > 0 {
			buf = append(buf, frag[:min(room, len(frag))]...)
		}
		switch {
		case rerr == bufio.ErrBufferFull:
			if long > MaxRunaway {
				return false, ErrRunaway
			}
			continue
		case rerr == nil:
			fn(strings.TrimRight(string(buf), "\r\n"))
			buf, long = buf[:0], 0
			continue
		}
		if len(buf) > 0 {
			fn(string(buf))
			cut = true
		}
		if rerr == io.EOF {
			return cut, nil
		}
		return cut, rerr
	}
}
