package qemu

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parse(log string) ([]*Result, error) {
	var p Parser
	for _, l := range strings.Split(log, "\n") {
		p.Line(l)
	}
	return p.Finish()
}

const goodLog = `tracebed: booting
KTAP version 1
1..2
    KTAP version 1
    # Subtest: runtime
    1..2
    # spawned=10000
    # elapsed_ms=12.5
    ok 1 goroutines
    # error: something
    not ok 2 sleeps
not ok 1 runtime
    KTAP version 1
    # Subtest: other
    1..1
    ok 1 skipped_one # SKIP no hardware
ok 2 other
tracebed: exit_group(1)
`

func TestParseNestedSuites(t *testing.T) {
	res, err := parse(strings.ReplaceAll(goodLog, "\n", "\r\n"))
	require.NoError(t, err)
	require.Len(t, res, 2)
	rt := res[0]
	assert.Equal(t, "runtime", rt.Name)
	assert.False(t, rt.OK)
	assert.Equal(t, 2, rt.Planned)
	require.Len(t, rt.Children, 2)
	g := rt.Find("goroutines")
	require.NotNil(t, g)
	assert.True(t, g.OK)
	v, ok := g.Diag("spawned")
	assert.True(t, ok)
	assert.Equal(t, "10000", v)
	assert.Equal(t, []string{"error: something"}, rt.Children[1].Diags)
	assert.Equal(t, "SKIP no hardware", res[1].Children[0].Directive)
	assert.Equal(t, "skipped_one", res[1].Children[0].Name)
	assert.True(t, res[1].OK)
}

func TestParseTruncatedLogs(t *testing.T) {
	lines := strings.Split(goodLog, "\n")
	// Every proper prefix that cuts into the KTAP is reported as truncated, never as complete.
	for n := 2; n < 17; n++ {
		_, err := parse(strings.Join(lines[:n], "\n"))
		assert.ErrorContains(t, err, "truncated", "cut after %d lines", n)
	}
	_, err := parse("tracebed: booting\n")
	assert.ErrorContains(t, err, "no KTAP output")
	_, err = parse("")
	assert.Error(t, err)
}

func TestParseMalformed(t *testing.T) {
	for name, log := range map[string]string{
		"bad plan":        "KTAP version 1\n1..x\nok 1 a\n",
		"bad number":      "KTAP version 1\n1..1\nok one a\n",
		"out of order":    "KTAP version 1\n1..2\nok 2 a\nok 1 b\n",
		"plan mismatch":   "KTAP version 1\n1..1\n    KTAP version 1\n    1..3\n    ok 1 x\nok 1 s\n",
		"ok with failing": "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    not ok 1 x\nok 1 s\n",
		"two headers":     "KTAP version 1\nKTAP version 1\n1..0\n",
	} {
		_, err := parse(log)
		assert.Error(t, err, name)
	}
	// Garbage is ignored, not fatal; a result line at an odd indentation is a problem.
	res, err := parse("KTAP version 1\n\x00\xff garbage\n1..1\nok 1 a\n")
	require.NoError(t, err)
	assert.Len(t, res, 1)
	_, err = parse("KTAP version 1\n\x00\xff garbage\n  ok 7 odd indent\n1..1\nok 1 a\n")
	assert.ErrorContains(t, err, "not a multiple of four")
}

// verdict parses log as tracebed parse does and says whether it passes.
func verdict(log string) (bool, error) {
	var p Parser
	cut, err := ReadLines(strings.NewReader(log), p.Line)
	if err != nil {
		return false, err
	}
	if cut {
		lines := strings.Split(log, "\n")
		p.CutMidLine(lines[len(lines)-1])
	}
	res, ferr := p.Finish()
	ok := ferr == nil && p.Failures() == 0
	for _, r := range res {
		ok = ok && !r.Failed()
	}
	return ok, ferr
}

// Hostile logs that used to pass: a verdict is conservative.
func TestNoFalsePass(t *testing.T) {
	for name, log := range map[string]string{
		"bail out at the end":          "KTAP version 1\n1..1\nok 1 a\nBail out! disk gone\n",
		"bail out before a result":     "KTAP version 1\n1..1\nBail out!\nok 1 a\n",
		"bail out nested":              "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    Bail out! x\n    ok 1 c\nok 1 s\n",
		"not ok under repeated header": "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    not ok 1 c\n    KTAP version 1\n    1..1\n    ok 1 c\nok 1 s\n",
		"not ok two down, no level 1":  "KTAP version 1\n1..1\n        not ok 1 deep\nok 1 s\n",
		"not ok 8 levels deep":         "KTAP version 1\n1..1\n" + strings.Repeat(" ", 32) + "not ok 1 deep\nok 1 s\n",
		"not ok 9 levels deep":         "KTAP version 1\n1..1\n" + strings.Repeat(" ", 36) + "not ok 1 deep\nok 1 s\n",
		"tab-indented failure":         "KTAP version 1\n1..1\n\tnot ok 1 c\nok 1 s\n",
		"suite without a plan":         "KTAP version 1\n1..1\n    KTAP version 1\n    ok 1 c\nok 1 s\n",
		"cut ok 1":                     "KTAP version 1\n1..1\nok 1",
		"1..0 alone":                   "KTAP version 1\n1..0\n",
		"nested TODO parent fails":     "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    not ok 1 c\nnot ok 1 s\n",
		"not ok with SKIP":             "KTAP version 1\n1..1\nnot ok 1 a # SKIP no\n",
		"second top-level plan":        "KTAP version 1\n1..1\nok 1 a\n1..1\n",
		"depth 2 cut, after depth 1":   "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 case\n        KTAP version 1\n        1..5\n        ok 1 a\nok 1 suite\n",
		"depth 2 under 1..0":           "KTAP version 1\n1..1\n    KTAP version 1\n    1..0\n        KTAP version 1\n        1..5\n        ok 1 a\nok 1 suite\n",
		"depth 2 orphans":              "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 case\n        ok 1 a\n        ok 2 b\nok 1 suite\n",
	} {
		ok, _ := verdict(log)
		assert.False(t, ok, name)
	}
}

// Logs that are fine, from consoles that are not QEMU's.
func TestParseForeignConsoles(t *testing.T) {
	for name, log := range map[string]string{
		"CRLF":              strings.ReplaceAll(goodPass, "\n", "\r\n"),
		"kernel timestamps": timestamped(goodPass),
		"noise between":     strings.ReplaceAll(goodPass, "    ok 1 a\n", "(XEN) d1v0 hello\n    ok 1 a\nrandom: crng init done\n"),
		"cut noise":         goodPass + "tracebed: exit_gr",
		"TODO failures":     "KTAP version 1\n1..2\nnot ok 1 a # TODO later\n    KTAP version 1\n    1..1\n    not ok 1 c #todo later\nok 2 s\n",
		"skip all":          "KTAP version 1\n1..0 # SKIP no hardware\n",
		"lower-case skip":   "KTAP version 1\n1..1\nok 1 a # skip no\n",
	} {
		ok, err := verdict(log)
		assert.True(t, ok, "%s: %v", name, err)
	}
	res, _ := parse("KTAP version 1\n1..1\nok 1 a #SKIP because\n")
	require.Len(t, res, 1)
	assert.Equal(t, "SKIP because", res[0].Directive)
	assert.Equal(t, "a", res[0].Name)
}

const goodPass = "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: s\n    1..1\n    # k=1.5\n    ok 1 a\nok 1 s\n"

func timestamped(log string) string {
	var b strings.Builder
	for i, l := range strings.Split(strings.TrimSuffix(log, "\n"), "\n") {
		fmt.Fprintf(&b, "[%5d.%06d] %s\n", i, i*37, l)
	}
	return b.String()
}

// Memory stays bounded and reading ends, whatever the input.
func TestParseBoundedMemory(t *testing.T) {
	// 2 million bad results: stored results and problems are capped, failures still counted.
	var p Parser
	p.Line("KTAP version 1")
	for i := 0; i < 2_000_000; i++ {
		p.Line("not ok 1 a")
	}
	_, err := p.Finish()
	require.Error(t, err)
	assert.Less(t, len(err.Error()), 20_000, "the message is capped")
	assert.Contains(t, err.Error(), "more problems")
	assert.Equal(t, 2_000_000, p.Failures())
	assert.Equal(t, maxStored, p.stored)

	// A 10 MB line is cut at MaxLine, and a message quotes at most maxQuote bytes of it.
	long := "KTAP version 1\n1..1\nok 1 " + strings.Repeat("x", 10<<20) + "\n"
	var q Parser
	var longest int
	_, err = ReadLines(strings.NewReader(long), func(l string) { longest = max(longest, len(l)); q.Line(l) })
	require.NoError(t, err)
	assert.Equal(t, MaxLine, longest)
	_, err = q.Finish()
	require.NoError(t, err)

	// Kept text is capped in bytes too: 100 diagnostics of 1 MiB keep 4 KiB each.
	var big Parser
	big.Line("KTAP version 1")
	big.Line("1..1")
	for i := 0; i < 100; i++ {
		big.Line("# " + strings.Repeat("y", 1<<20))
	}
	big.Line("ok 1 " + strings.Repeat("n", 1<<20))
	res, err := big.Finish()
	require.NoError(t, err)
	require.Len(t, res, 1)
	assert.LessOrEqual(t, len(res[0].Name), maxKept+3)
	for _, d := range res[0].Diags {
		assert.LessOrEqual(t, len(d), maxKept+3)
	}

	var r Parser
	r.Line("KTAP version 1")
	r.Line("1..x" + strings.Repeat("\x01", 1<<20))
	_, err = r.Finish()
	require.Error(t, err)
	assert.Less(t, len(err.Error()), 500)
	assert.NotContains(t, err.Error(), "\x01", "control characters are escaped")

	// Endless input without a line end (/dev/zero) stops at MaxRunaway.
	_, err = ReadLines(io.LimitReader(zeros{}, 2*MaxRunaway), func(string) {})
	assert.ErrorIs(t, err, ErrRunaway)
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

func FuzzParser(f *testing.F) {
	f.Add(goodLog)
	f.Add("KTAP version 1\n1..1\n    ok 1\nnot ok")
	f.Fuzz(func(t *testing.T, log string) {
		res, err := parse(log)
		if err == nil {
			require.NotNil(t, res)
		}
	})
}

func TestConfigArgs(t *testing.T) {
	args := Config{Kernel: "k.elf", SMP: 4, Append: "suite=runtime"}.Args()
	joined := strings.Join(args, " ")
	for _, want := range []string{"-machine q35", "-accel tcg", "-cpu max", "-smp 4", "-m 1024",
		"-serial stdio", "-no-reboot", "-device isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel k.elf", "-append suite=runtime"} {
		assert.Contains(t, joined, want)
	}
	assert.NotContains(t, joined, "-S")
	kvm := strings.Join(Config{Kernel: "k", Accel: "kvm", GDB: true, Extra: []string{"-d", "int"}}.Args(), " ")
	assert.Contains(t, kvm, "-cpu host")
	assert.Contains(t, kvm, "-s -S -d int")
}

func TestConfigValidate(t *testing.T) {
	assert.NoError(t, Config{Kernel: "k"}.Validate())
	for _, m := range []string{"q35", "pc", "microvm", "pc-q35-7.2", "pc-i440fx-7.2", "q35,smm=off"} {
		assert.NoError(t, Config{Kernel: "k", Machine: m}.Validate(), m)
	}
	for _, c := range []Config{
		{},
		{Kernel: "k", SMP: MaxSMP + 1},
		{Kernel: "k", Machine: "virt"},
		{Kernel: "k", Machine: "q35;rm -rf"},
		{Kernel: "k", DiagnoseAfter: -1},
		{Kernel: "k", SMP: -1},
		{Kernel: "k", MemoryMiB: 64},
		{Kernel: "k", MemoryMiB: 8192},
		{Kernel: "k", Accel: "hvf"},
		{Kernel: "k", Timeout: -1},
	} {
		assert.Error(t, c.Validate(), "%+v", c)
	}
}

func TestClassify(t *testing.T) {
	ok := []*Result{{Name: "s", OK: true}}
	bad := []*Result{{Name: "s", OK: false}}
	assert.Equal(t, Hang, classify(true, &Report{ExitCode: 33, Results: ok}))
	assert.Equal(t, Pass, classify(false, &Report{ExitCode: 33, Results: ok}))
	assert.Equal(t, Fail, classify(false, &Report{ExitCode: 33, Results: bad}), "pass exit, failing log")
	assert.Equal(t, Fail, classify(false, &Report{ExitCode: 33}), "pass exit, no log")
	assert.Equal(t, Fail, classify(false, &Report{ExitCode: 33, Results: ok, KTAPError: assert.AnError}))
	assert.Equal(t, Fail, classify(false, &Report{ExitCode: 35, Results: ok}))
	assert.Equal(t, Fatal, classify(false, &Report{ExitCode: 37}))
	assert.Equal(t, Reset, classify(false, &Report{ExitCode: 0}))
	assert.Equal(t, Error, classify(false, &Report{ExitCode: 1}))
}

func TestRunRefusesMissingQEMUAndKernel(t *testing.T) {
	_, err := Run(Config{Kernel: "k", QEMU: "no-such-qemu-binary"}, nil)
	assert.ErrorContains(t, err, "qemu-system-x86")
	_, err = Run(Config{Kernel: "/nonexistent/kernel.elf", QEMU: "true"}, nil)
	assert.ErrorContains(t, err, "kernel image")
}
