package fbt

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/arch/x86/x86asm"

	"tracebed/qemu"
)

// Differential execution on the host CPU: every instruction of the corpus is relocated to
// several distances from its home and run both ways by testdata/xrun.c from identical
// register and memory states; the final states and next RIPs must match.

// distances between the original (from) and the copy (to).
var distances = []struct {
	name string
	d    int64
}{
	{"adjacent", 4096}, // the next page: to == from would overwrite the continuation
	{"+1MiB", 1 << 20},
	{"-1MiB", -1 << 20},
	{"+2GiB+4KiB", 1<<31 + 4096},
	{"+2GiB-4KiB", 1<<31 - 4096},
	{"-2GiB+4KiB", -(1 << 31) + 4096},
	{"-2GiB-4KiB", -(1 << 31) - 4096},
	{"+8GiB", 8 << 30},
	{"+64GiB", 64 << 30},
}

var (
	sample     = flag.Int("fbt.sample", 0, "run only every Nth unique corpus instruction (0: all)")
	corpusOnly = flag.String("fbt.corpus", "", "run only the corpora whose name contains this")
)

// home is where the original instructions run: far from the harness's own memory, with room
// for ±2 GiB targets and +64 GiB copies in the user address space.
const home = 0x100000000000

var (
	xrunOnce sync.Once
	xrunPath string
	xrunErr  error
)

func xrun(t testing.TB) string {
	xrunOnce.Do(func() {
		dir, err := os.MkdirTemp("", "fbt-xrun")
		if err != nil {
			xrunErr = err
			return
		}
		xrunPath = filepath.Join(dir, "xrun")
		out, err := exec.Command("gcc", "-O2", "-Wall", "-o", xrunPath, "testdata/xrun.c").CombinedOutput()
		if err != nil {
			xrunErr = fmt.Errorf("gcc testdata/xrun.c: %v\n%s", err, out)
		}
	})
	require.NoError(t, xrunErr)
	return xrunPath
}

// insn is one corpus instruction: its bytes and the address it had in its binary.
type insn struct {
	b    []byte
	addr uint64
}

// textOf decodes the executable sections of an ELF file by linear sweep; bytes that do not
// decode are stepped over one at a time and counted.
func textOf(path string) (ins []insn, bad int, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	for _, s := range f.Sections {
		if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_EXECINSTR == 0 {
			continue
		}
		data, err := s.Data()
		if err != nil {
			return nil, 0, err
		}
		for off := 0; off < len(data); {
			in, err := decode(data[off:])
			if err != nil || in.Len == 0 {
				bad++
				off++
				continue
			}
			ins = append(ins, insn{data[off : off+in.Len], s.Addr + uint64(off)})
			off += in.Len
		}
	}
	return ins, bad, nil
}

// unsafeInUserMode says why the harness must not run an instruction ("" when it may): it is
// not deterministic, changes the process's segments or flags in ways that break the harness,
// loads extended state the harness does not control (PKRU among it), or waits. (WRPKRU and
// RDSEED never get here: x86asm does not decode them, so the relocator refuses them.)
func unsafeInUserMode(in *x86asm.Inst) string {
	switch in.Op {
	case x86asm.RDTSC, x86asm.RDTSCP, x86asm.RDRAND, x86asm.RDPMC:
		return "not deterministic"
	case x86asm.POPF, x86asm.POPFD, x86asm.POPFQ:
		return "sets RFLAGS.TF/AC under the harness"
	case x86asm.LFS, x86asm.LGS, x86asm.LSS, x86asm.WRFSBASE, x86asm.WRGSBASE:
		return "changes the harness's segments"
	case x86asm.XRSTOR, x86asm.XRSTOR64, x86asm.XRSTORS, x86asm.XRSTORS64, x86asm.FXRSTOR, x86asm.FXRSTOR64:
		return "loads extended state (PKRU among it) the harness does not control"
	case x86asm.HLT, x86asm.PAUSE:
		return "waits"
	case x86asm.MOV, x86asm.POP:
		if r, ok := in.Args[0].(x86asm.Reg); ok && r >= x86asm.ES && r <= x86asm.GS {
			return "changes the harness's segments"
		}
	}
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok && (m.Segment == x86asm.FS || m.Segment == x86asm.GS) {
			return "uses the harness's thread-local storage"
		}
	}
	return ""
}

// corpus is the kernel's own text plus a few gcc-built binaries of the machine.
func corpus(t *testing.T) (map[string][]insn, map[string]int) {
	files := map[string]string{}
	if strings.Contains("tracebed kernel", *corpusOnly) {
		kernel := filepath.Join(t.TempDir(), "kernel.elf")
		require.NoError(t, qemu.BuildKernel("..", kernel))
		files["tracebed kernel"] = kernel
	}
	for _, p := range []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash", "/usr/bin/gcc"} {
		if _, err := os.Stat(p); err == nil {
			files[filepath.Base(p)] = p
		}
	}
	out := map[string][]insn{}
	bad := map[string]int{}
	for i, b := range craftedForms {
		if !strings.Contains("crafted forms", *corpusOnly) {
			break
		}
		out["crafted forms"] = append(out["crafted forms"], insn{b, 0x2000 + 64*uint64(i)})
	}
	for name, p := range files {
		if !strings.Contains(name, *corpusOnly) {
			continue
		}
		ins, b, err := textOf(p)
		require.NoError(t, err, p)
		out[name], bad[name] = ins, b
	}
	return out, bad
}

type tally struct {
	tried, planned, run, ok, fault, loop, skipped int
	refused, skips, unsafe                        map[string]int
	mismatches                                    []string
	forms                                         map[string]int // mismatches by instruction form
}

func newTally() *tally {
	return &tally{refused: map[string]int{}, skips: map[string]int{}, unsafe: map[string]int{}, forms: map[string]int{}}
}

// Modes of xrun: a boosted copy (Relocate) runs on its own; a step (PlanStep) runs one
// instruction under TF and gets the #DB handler's fix-ups.
const (
	modeBoost       = 0
	modeStep        = 1
	modeStackBottom = 0x100 // flag: the instruction writes the stack (xrun sometimes starts RSP at the bottom)
)

// writesStack: the instructions whose own stack write may fault (push, call, enter).
func writesStack(op x86asm.Op) bool {
	switch op {
	case x86asm.PUSH, x86asm.PUSHF, x86asm.PUSHFQ, x86asm.CALL, x86asm.ENTER:
		return true
	}
	return false
}

// xcase is one relocation or step handed to xrun.
type xcase struct {
	from, to, mem, branch, seed uint64
	orig, code                  []byte
	mode                        uint32
	body                        int
	faults                      []Fault
	step                        *Step
	desc, form                  string
}

func (c *xcase) write(w *bufio.Writer) error {
	le := binary.LittleEndian
	var b []byte
	for _, v := range []uint64{c.from, c.to, c.mem, c.branch, c.seed} {
		b = le.AppendUint64(b, v)
	}
	for _, v := range []uint32{uint32(len(c.orig)), uint32(len(c.code)), c.mode, uint32(c.body), uint32(len(c.faults))} {
		b = le.AppendUint32(b, v)
	}
	for _, f := range c.faults {
		b = le.AppendUint32(b, uint32(f.Off))
		b = le.AppendUint32(b, uint32(int32(f.Saved)))
		b = le.AppendUint32(b, uint32(f.Pushed))
	}
	if s := c.step; s != nil {
		// The #DB handler's work, computed here by the Go code the kernel will run: Resume at
		// every RIP a step can stop at, ReturnAddress for the address a call pushes.
		end := s.To + uint64(len(s.Code))
		b = le.AppendUint32(b, uint32(int32(s.Scratch)))
		b = le.AppendUint64(b, s.ScratchValue)
		call := uint32(0)
		if s.Call {
			call = 1
		}
		b = le.AppendUint32(b, call)
		b = le.AppendUint64(b, end)
		b = le.AppendUint64(b, s.ReturnAddress(end))
		stops := []uint64{s.To, end, s.marker()}
		b = le.AppendUint32(b, uint32(len(stops)))
		for _, rip := range stops {
			next, done := s.Resume(rip)
			again := uint32(0)
			if !done {
				again = 1
			}
			b = le.AppendUint64(b, rip)
			b = le.AppendUint64(b, next)
			b = le.AppendUint32(b, again)
		}
	}
	b = append(b, c.orig...)
	b = append(b, c.code...)
	_, err := w.Write(b)
	return err
}

// execute runs the cases through one xrun process, in order, and returns its first line (what
// extended state it controls) and its verdict lines. It runs beside the test goroutine, so it
// returns its failure instead of stopping the test.
func execute(path string, cases []xcase) (string, []string, error) {
	cmd := exec.Command(path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	go func() {
		w := bufio.NewWriterSize(stdin, 1<<16)
		for i := range cases {
			if cases[i].write(w) != nil {
				break
			}
		}
		w.Flush()
		stdin.Close()
	}()
	var head string
	var lines []string
	sc := bufio.NewScanner(stdout)
	if sc.Scan() {
		head = sc.Text()
	}
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := cmd.Wait(); err != nil || len(lines) != len(cases) {
		last := ""
		if len(lines) < len(cases) {
			last = cases[len(lines)].desc
		}
		return "", nil, fmt.Errorf("xrun: %v after %d of %d cases (next: %s): %s", err, len(lines), len(cases), last, stderr.String())
	}
	if !strings.HasPrefix(head, "xstate ") {
		return "", nil, fmt.Errorf("xrun's first line: %q", head)
	}
	return head, lines, nil
}

// form names an instruction's shape for grouping mismatches: mnemonic, operand kinds, and the
// prefixes that change its meaning.
func form(in *x86asm.Inst, b []byte) string {
	var sb strings.Builder
	for _, p := range b {
		if !isLegacyPrefix(p) && p&0xf0 != 0x40 {
			break
		}
		fmt.Fprintf(&sb, "%02x ", p)
	}
	sb.WriteString(strings.ToLower(in.Op.String()))
	for i, a := range in.Args {
		if a == nil {
			break
		}
		sep := " "
		if i > 0 {
			sep = ","
		}
		sb.WriteString(sep)
		switch v := a.(type) {
		case x86asm.Reg:
			sb.WriteString("reg")
		case x86asm.Mem:
			if v.Base == x86asm.RIP || v.Base == x86asm.EIP {
				sb.WriteString("[rip]")
			} else {
				sb.WriteString("mem")
			}
		case x86asm.Imm:
			sb.WriteString("imm")
		case x86asm.Rel:
			sb.WriteString("rel")
		}
	}
	return sb.String()
}

// plan builds the boost and step cases of one corpus.
func plan(t *testing.T, ins []insn) (boost, step []xcase, tb, ts *tally, unique int) {
	tb, ts = newTally(), newTally()
	seen := map[string]bool{}
	for _, in := range ins {
		tb.tried++
		ts.tried++
		if seen[string(in.b)] {
			continue // identical bytes behave identically; run each once per distance
		}
		seen[string(in.b)] = true
		if *sample > 1 && len(seen)%*sample != 0 {
			continue
		}
		dec, _ := decode(in.b)
		why := unsafeInUserMode(&dec)
		shape := form(&dec, in.b)
		var flags uint32
		if writesStack(dec.Op) {
			flags = modeStackBottom
		}
		for di, d := range distances {
			from := home + in.addr%4096 + uint64(di)*0x10000
			to := from + uint64(d.d)
			base := xcase{from: from, to: to, orig: in.b, form: shape,
				desc: fmt.Sprintf("%s % x at %#x → %s", x86asm.GNUSyntax(dec, in.addr, nil), in.b, in.addr, d.name)}
			a, aerr := analyze(in.b, from)
			if aerr == nil {
				switch a.kind {
				case kRIPMem, kCallInd:
					if a.ripMem && a.in.Op != x86asm.LEA { // lea reads no memory
						base.mem = a.target
					}
				case kJmpRel, kCondRel, kCallRel:
					base.branch = a.target
				}
			}
			if cp, err := Relocate(in.b, from, to); tb.admit(t, err, why) {
				c := base
				c.mode, c.code, c.body, c.faults = modeBoost|flags, cp.Code, cp.Body, cp.Faults
				c.seed = uint64(len(boost))
				boost = append(boost, c)
			}
			if st, err := PlanStep(in.b, from, to); ts.admit(t, err, why) {
				c := base
				c.mode, c.code, c.step = modeStep|flags, st.Code, st
				c.faults = []Fault{{Off: 0, Saved: -1}} // the stepped instruction itself
				c.seed = uint64(len(step))
				step = append(step, c)
			}
		}
	}
	return boost, step, tb, ts, len(seen)
}

// admit counts one planned relocation or step: its refusal by reason, or, when the host must not
// run the instruction, that reason; it says whether to run it.
func (tl *tally) admit(t *testing.T, err error, unsafe string) bool {
	if err != nil {
		var r *Refusal
		require.True(t, errors.As(err, &r), "%v", err)
		require.ErrorIs(t, err, ErrNotRelocatable)
		tl.refused[string(r.Reason)]++
		return false
	}
	tl.planned++
	if unsafe != "" {
		tl.unsafe[unsafe]++
		return false
	}
	return true
}

func (tl *tally) verdicts(cases []xcase, lines []string) {
	for i, l := range lines {
		tl.run++
		switch {
		case l == "ok":
			tl.ok++
		case l == "fault":
			tl.fault++
		case l == "loop":
			tl.loop++
		case strings.HasPrefix(l, "skip "):
			tl.skipped++
			tl.skips[l[5:]]++
		default:
			tl.mismatches = append(tl.mismatches, cases[i].desc+": "+l)
			tl.forms[cases[i].form]++
		}
	}
}

// counts prints a map as "n × key; ..." sorted by key.
func counts(m map[string]int) string {
	out := make([]string, 0, len(m))
	for k, n := range m {
		out = append(out, fmt.Sprintf("%d × %s", n, k))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func (tl *tally) report(t *testing.T, name, mode string) {
	t.Logf("%s %s: %d planned at %d distances (%d refused), run %d: %d equal at the landing, %d faulted alike with equal state, %d looped alike, %d skipped [%s]; mismatches %d",
		name, mode, tl.planned, len(distances), sum(tl.refused), tl.run, tl.ok, tl.fault, tl.loop, tl.skipped, counts(tl.skips), len(tl.mismatches))
	t.Logf("%s %s: refused: %s", name, mode, counts(tl.refused))
	t.Logf("%s %s: not run on the host: %s", name, mode, counts(tl.unsafe))
	if len(tl.mismatches) > 0 {
		t.Logf("%s %s: mismatches by form: %s", name, mode, counts(tl.forms))
	}
	for i, m := range tl.mismatches {
		if i == 20 {
			t.Errorf("%s %s: ... and %d more", name, mode, len(tl.mismatches)-20)
			break
		}
		t.Errorf("%s %s mismatch: %s", name, mode, m)
	}
	assert.Positive(t, tl.ok, "%s %s: no case ran to its landing", name, mode)
	assert.Positive(t, tl.fault, "%s %s: no fault path was compared", name, mode)
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func TestRelocateByExecution(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the corpus on the host CPU")
	}
	srcs, bad := corpus(t)
	names := make([]string, 0, len(srcs))
	for n := range srcs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			boost, step, tb, ts, unique := plan(t, srcs[name])
			t.Logf("%s: %d instructions (%d bytes undecodable), %d unique", name, tb.tried, bad[name], unique)
			// One xrun per mode, side by side: make test runs packages one at a time, so this
			// is the only thing on the machine's two cores.
			path := xrun(t)
			var ls []string
			var errStep error
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, ls, errStep = execute(path, step)
			}()
			head, lb, errBoost := execute(path, boost)
			wg.Wait()
			require.NoError(t, errBoost, "boost")
			require.NoError(t, errStep, "step")
			t.Logf("%s: harness %s", name, head)
			tb.verdicts(boost, lb)
			ts.verdicts(step, ls)
			tb.report(t, name, "boost (Relocate)")
			ts.report(t, name, "step (PlanStep)")
		})
	}
}
