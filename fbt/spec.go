package fbt

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// Probe specs, as fbt.probe= gives them: a comma-separated list of terms, each one of
//
//	all               entry and return probes on every function that may be probed
//	GLOB              entry and return probes on the functions GLOB matches
//	GLOB:entry        entry probes only
//	GLOB:return       probes on every RET
//	FUNC+OFF          one probe at byte offset OFF (decimal or 0x hex) of function FUNC,
//	                  which must be an instruction boundary (kprobes' func+0x1f)
//
// A GLOB matches whole function names: * any run of characters (slashes and dots included),
// ? one character, [...] a class ([^...] negated), \ quotes the next character (Go names
// generic instantiations F[...], which are written F\[...\]).

// Selector is one term of a spec.
type Selector struct {
	Term           string // as written
	Entry, Return  bool
	Func           string // FUNC of a FUNC+OFF term
	Offset         int    // -1 unless FUNC+OFF
	re             *regexp.Regexp
	literal, exact bool // the glob has no metacharacters: Func is the one name it matches
}

// ParseSpec parses a probe spec. Errors name the bad term.
func ParseSpec(spec string) ([]Selector, error) {
	if spec == "" {
		return nil, fmt.Errorf("fbt: empty probe spec")
	}
	var out []Selector
	for _, term := range strings.Split(spec, ",") {
		s, err := parseTerm(term)
		if err != nil {
			return nil, fmt.Errorf("fbt: probe %q: %w", clip(term), err)
		}
		out = append(out, s)
	}
	return out, nil
}

func parseTerm(term string) (Selector, error) {
	s := Selector{Term: term, Offset: -1, Entry: true, Return: true}
	if term == "" {
		return s, fmt.Errorf("empty term")
	}
	if term == "all" {
		s.re = regexp.MustCompile(`^`)
		return s, nil
	}
	glob := term
	if i := strings.LastIndexByte(term, ':'); i >= 0 {
		glob = term[:i]
		if strings.ContainsAny(glob, ":+") {
			return s, fmt.Errorf("a probe kind follows a function pattern, not an offset or another kind")
		}
		switch term[i+1:] {
		case "entry":
			s.Return = false
		case "return":
			s.Entry = false
		default:
			return s, fmt.Errorf("unknown probe kind %q (want entry or return)", term[i+1:])
		}
	} else if i := strings.LastIndexByte(term, '+'); i >= 0 {
		digits, base := term[i+1:], 10
		if strings.HasPrefix(digits, "0x") {
			digits, base = digits[2:], 16
		}
		off, err := strconv.ParseUint(digits, base, 31)
		if err != nil || strings.Contains(digits, "_") {
			return s, fmt.Errorf("offset %q is not a decimal or 0x hex number", clip(term[i+1:]))
		}
		// The name is taken literally (no glob): pointer-receiver methods have * in theirs.
		s.Func, s.Offset, s.Entry, s.Return = term[:i], int(off), false, false
		if s.Func == "" {
			return s, fmt.Errorf("an offset probe names a function")
		}
		s.literal, s.exact = true, true
		return s, nil
	}
	if glob == "" {
		return s, fmt.Errorf("empty function pattern")
	}
	re, literal, err := globRegexp(glob)
	if err != nil {
		return s, err
	}
	s.re, s.literal = re, literal != ""
	if s.literal {
		s.Func = literal
	}
	return s, nil
}

// globRegexp translates a glob to an anchored regexp; literal is the name it matches when it
// has no metacharacters.
func globRegexp(glob string) (re *regexp.Regexp, literal string, err error) {
	var b, lit strings.Builder
	b.WriteByte('^')
	meta := false
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; c {
		case '*':
			if !strings.HasSuffix(b.String(), ".*") { // a run of * is one
				b.WriteString(".*")
			}
			meta = true
		case '?':
			b.WriteByte('.')
			meta = true
		case '\\':
			if i+1 == len(glob) {
				return nil, "", fmt.Errorf("malformed glob: trailing \\")
			}
			i++
			b.WriteString(regexp.QuoteMeta(glob[i : i+1]))
			lit.WriteByte(glob[i])
		case '[':
			j := i + 1
			if j < len(glob) && (glob[j] == '^' || glob[j] == '!') {
				j++
			}
			if j < len(glob) && glob[j] == ']' {
				j++
			}
			for j < len(glob) && glob[j] != ']' {
				j++
			}
			if j >= len(glob) {
				return nil, "", fmt.Errorf("malformed glob: unclosed [")
			}
			class := glob[i+1 : j]
			if class == "" || class == "^" || class == "!" {
				return nil, "", fmt.Errorf("malformed glob: empty class")
			}
			if class[0] == '!' {
				class = "^" + class[1:]
			}
			b.WriteByte('[')
			b.WriteString(strings.ReplaceAll(strings.ReplaceAll(class, `\`, `\\`), "[", `\[`))
			b.WriteByte(']')
			i = j
			meta = true
		case ']':
			return nil, "", fmt.Errorf("malformed glob: ] without [")
		default:
			b.WriteString(regexp.QuoteMeta(glob[i : i+1]))
			lit.WriteByte(c)
		}
	}
	b.WriteByte('$')
	re, err = regexp.Compile(b.String())
	if err != nil {
		return nil, "", fmt.Errorf("malformed glob: %v", err)
	}
	if meta {
		return re, "", nil
	}
	return re, lit.String(), nil
}

// clip shortens what an error quotes.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// Match reports whether the term selects the function named name.
func (s *Selector) Match(name string) bool {
	if s.exact || s.literal {
		return name == s.Func
	}
	return s.re.MatchString(name)
}

// Literal is the one function name the term names, when it has no glob characters (a spec
// that names a function the kernel does not have is an error, a glob that matches nothing is
// not).
func (s *Selector) Literal() (string, bool) { return s.Func, s.literal }

// Layout is a function's code decoded linearly: the offset of every instruction and of every
// RET. Go functions hold no data in their text, so a linear decode finds every boundary; the
// INT3 padding after the last instruction decodes as instructions too.
type Layout struct {
	Insns []int // instruction offsets, ascending
	Rets  []int // offsets of RET instructions
}

// Decode decodes a function's code. An undecodable byte is an error: such a function is not
// probed.
func Decode(code []byte) (*Layout, error) {
	l := &Layout{}
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil || in.Len == 0 {
			return nil, fmt.Errorf("undecodable at +%#x", off)
		}
		l.Insns = append(l.Insns, off)
		if in.Op == x86asm.RET {
			l.Rets = append(l.Rets, off)
		}
		off += in.Len
	}
	return l, nil
}

// Boundary reports whether off is the start of an instruction.
func (l *Layout) Boundary(off int) bool {
	lo, hi := 0, len(l.Insns)
	for lo < hi {
		m := (lo + hi) / 2
		switch {
		case l.Insns[m] == off:
			return true
		case l.Insns[m] < off:
			lo = m + 1
		default:
			hi = m
		}
	}
	return false
}
