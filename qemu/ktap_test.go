package qemu

import (
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
	// Garbage and odd indentation are ignored, not fatal.
	res, err := parse("KTAP version 1\n\x00\xff garbage\n  ok 7 odd indent\n1..1\nok 1 a\n")
	require.NoError(t, err)
	assert.Len(t, res, 1)
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
	for _, c := range []Config{
		{},
		{Kernel: "k", SMP: 17},
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
