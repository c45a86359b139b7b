package live

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"tracebed/fbt"
)

// ConfigFrom reads the fbt.* kernel command-line parameters (ktest has checked that numbers
// are numbers).
func ConfigFrom(params map[string]string) (Config, error) {
	c := Config{Guard: true, Batch: true, Reap: true, Sites: defaultSites}
	var err error
	if v, ok := params["fbt.mode"]; ok {
		if c.Mode, err = ParseMode(v); err != nil {
			return c, err
		}
	}
	switch v := params["fbt.xol"]; v {
	case "", "far":
	case "near":
		c.Near = true
	default:
		return c, fmt.Errorf("fbt.xol=%q: want far or near", v)
	}
	// ktest has range-checked the numbers; read them as numbers ("00" is 0).
	zero := func(k string) bool {
		v, ok := params[k]
		n, err := strconv.ParseUint(v, 10, 32)
		return ok && err == nil && n == 0
	}
	c.Unsafe = zero("fbt.safe")
	c.Guard = !zero("fbt.guard")
	c.Batch = !zero("fbt.batch")
	c.Reap = !zero("fbt.reap")
	c.BufRecs = bufRecs
	if v, ok := params["fbt.bufrecs"]; ok {
		n, _ := strconv.ParseUint(v, 10, 32)
		c.BufRecs = int(n)
	}
	c.BufWrap = params["fbt.bufwrap"] != "" && !zero("fbt.bufwrap")
	if v, ok := params["fbt.sites"]; ok {
		n, _ := strconv.ParseUint(v, 10, 32)
		c.Sites = int(n)
	}
	if v, ok := params["fbt.drop_db"]; ok {
		c.DropDB, _ = strconv.ParseUint(v, 10, 32)
	}
	return c, nil
}

// defaultSites is the site table's size unless fbt.sites= says otherwise: entries and returns,
// then offset sites up to 40,960 (over 30,000 of which auto mode can run: the scale the fbt
// suite's scale case measures).
const defaultSites = 40960

// Selection is what a spec resolved to.
type Selection struct {
	IDs     []int32
	Strict  []bool         // the site was named (a literal or FUNC+OFF): it must be probed
	Skipped map[string]int // sites a glob matched that mode cannot run, by reason
}

// Resolve turns a parsed spec into sites. A function named without glob characters that the
// kernel does not have, or that is toxic, is an error; so is an offset that is not an
// instruction boundary. Init first.
func Resolve(sel []fbt.Selector) (*Selection, error) {
	r := &Selection{Skipped: map[string]int{}}
	seen := map[int32]bool{}
	add := func(id int32, strict bool) {
		if !seen[id] {
			seen[id] = true
			r.IDs = append(r.IDs, id)
			r.Strict = append(r.Strict, strict)
		}
	}
	for i := range sel {
		s := &sel[i]
		if s.Offset >= 0 {
			id, err := Find(s.Func, Offset, s.Offset)
			if err != nil {
				return nil, fmt.Errorf("probe %q: %w", s.Term, err)
			}
			add(id, true)
			continue
		}
		if name, lit := s.Literal(); lit {
			if err := resolveFunc(name, s, add, true); err != nil {
				return nil, fmt.Errorf("probe %q: %w", s.Term, err)
			}
			continue
		}
		for fi := range funcs {
			f := &funcs[fi]
			if f.toxic == "" && s.Match(f.name) && byName[f.name] == int32(fi) {
				resolveFunc(f.name, s, add, false)
			}
		}
	}
	return r, nil
}

func resolveFunc(name string, s *fbt.Selector, add func(int32, bool), strict bool) error {
	if s.Entry {
		id, err := Find(name, Entry, 0)
		if err != nil {
			return err
		}
		add(id, strict)
	}
	if s.Return {
		ids := Returns(name)
		if len(ids) == 0 && strict && !s.Entry {
			return fmt.Errorf("fbt: %s has no RET", name)
		}
		for _, id := range ids {
			add(id, strict)
		}
	}
	return nil
}

// EnableSelection enables r's sites in mode m: a named site that m cannot run is an error, a
// site a glob matched is skipped and counted by reason. It returns how many sites run each way.
func EnableSelection(r *Selection, m Mode) (map[string]int, error) {
	var ok []int32
	t0 := time.Now()
	for i, id := range r.IDs {
		mu.Lock()
		err := plan(id, m)
		mu.Unlock()
		if err != nil {
			if r.Strict[i] {
				return nil, err
			}
			r.Skipped[reasonOf(site(id), m)]++
			continue
		}
		ok = append(ok, id)
	}
	mu.Lock()
	phases.Plan += time.Since(t0) // Enable counts its own
	mu.Unlock()
	if err := Enable(ok, m); err != nil {
		return nil, err
	}
	ways := map[string]int{}
	for _, id := range ok {
		ways[How(id)]++
	}
	return ways, nil
}

func reasonOf(s *Site, m Mode) string {
	if m == Emulate && s.emu == nil {
		return "not emulated"
	}
	w := s.why
	if i := strings.LastIndex(w, ": "); i >= 0 {
		w = w[i+2:] // the refusal's reason, without the instruction
	}
	if w == "" {
		w = "no way to run it"
	}
	return w
}

// Counts formats a map as "k=v k=v" in key order (for banners and diagnostics).
func Counts(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %d", k, m[k])
	}
	return b.String()
}

// Boot is what the kernel's test runner calls before the first suite: when the command line
// has fbt.* parameters (or a suite needs probes: need), Init, and the sites fbt.probe= names
// enabled in fbt.mode, with the banner lines on w. Every error is one for the cmdline result.
func Boot(params map[string]string, need bool, w io.Writer) error {
	spec, hasSpec := params["fbt.probe"]
	any := need
	for k := range params {
		any = any || strings.HasPrefix(k, "fbt.") || k == "fbt_seconds"
	}
	if !any {
		return nil
	}
	c, err := ConfigFrom(params)
	if err != nil {
		return err
	}
	var sel []fbt.Selector
	if hasSpec {
		if sel, err = fbt.ParseSpec(spec); err != nil {
			return err
		}
	}
	if err := Init(c); err != nil {
		return err
	}
	fmt.Fprintf(w, "# fbt: %d functions, %d entry and return sites; never probed: %s\n", NumFuncs, NumSites(), Counts(Toxic))
	if !hasSpec {
		return nil
	}
	r, err := Resolve(sel)
	if err != nil {
		return err
	}
	ways, err := EnableSelection(r, c.Mode)
	if err != nil {
		return err
	}
	n := 0
	for _, v := range ways {
		n += v
	}
	fmt.Fprintf(w, "# fbt: %d probes enabled in mode %v (%s), xol %s; skipped: %s\n", n, c.Mode, Counts(ways),
		map[bool]string{false: "far", true: "near"}[c.Near], Counts(r.Skipped))
	return nil
}
