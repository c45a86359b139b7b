package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func tracebed(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestBadUsageIsOneLineAndExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"run", "--smp", "zero"},
		{"run", "--smp", "64"},
		{"run", "--mem", "10"},
		{"run", "--timeout", "-1s"},
		{"run", "--accel", "hvf"},
		{"run", "stray"},
		{"parse"},
	} {
		code, _, stderr := tracebed(args...)
		assert.Equal(t, 2, code, "%v", args)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		assert.Contains(t, lines[len(lines)-1], "tracebed:", "%v: %q", args, stderr)
	}
}

func TestRunWithMissingKernelOrQEMU(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := tracebed("run", "--kernel", "/nonexistent.elf", "--qemu", "true")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "kernel image")
	notELF := filepath.Join(dir, "k.txt")
	require.NoError(t, os.WriteFile(notELF, []byte("hello"), 0o644))
	code, _, stderr = tracebed("run", "--kernel", notELF, "--qemu", "true")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "not an ELF file")
	self, err := os.Executable() // an x86-64 ELF, but without a PVH note
	require.NoError(t, err)
	code, _, stderr = tracebed("run", "--kernel", self, "--qemu", "true")
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "no PVH note")
	code, _, stderr = tracebed("run", "--qemu", "no-such-qemu")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "qemu-system-x86")
}

// Values the library reads as "the default" are mistakes on the command line.
func TestRunRefusesZeroesAndUnknownMachines(t *testing.T) {
	for _, args := range [][]string{
		{"--smp", "0"}, {"--mem", "0"}, {"--accel", ""}, {"--machine", ""}, {"--machine", "virt"},
		{"--timeout", "0"}, {"--diagnose", "-1s"}, {"--kernel", ""},
	} {
		code, _, stderr := tracebed(append([]string{"run", "--qemu", "true"}, args...)...)
		assert.Equal(t, 2, code, "%v", args)
		assert.Equal(t, 1, strings.Count(strings.TrimSpace(stderr), "\n")+1, "%v: one line: %q", args, stderr)
	}
}

func TestParseCapturedLog(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.log")
	require.NoError(t, os.WriteFile(good, []byte("xen console noise\nKTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 a\nok 1 s\n"), 0o644))
	code, out, _ := tracebed("parse", good)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "suite s: ok, 1/1 cases passed")
	cut := filepath.Join(dir, "cut.log")
	require.NoError(t, os.WriteFile(cut, []byte("KTAP version 1\n1..2\n    KTAP version 1\n    1..3\n    ok 1 a\n"), 0o644))
	code, out, _ = tracebed("parse", cut)
	assert.Equal(t, 1, code)
	assert.Contains(t, out, "truncated")
	code, _, stderr := tracebed("parse", filepath.Join(dir, "missing.log"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "no such file")
}

func TestParseJSONAndHostileNames(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "x.log")
	require.NoError(t, os.WriteFile(log, []byte("[    0.100000] KTAP version 1\r\n[    0.100001] 1..1\r\n"+
		"    KTAP version 1\n    1..2\n    # lat_us=1.5,2,3\n    # error: \x1b[31mred\n    not ok 1 \x1b]0;evil\x07\n    ok 2 b # SKIP why\nnot ok 1 s\n"), 0o644))
	code, out, _ := tracebed("parse", log)
	assert.Equal(t, 1, code)
	assert.NotContains(t, out, "\x1b", "control characters are escaped")
	assert.Contains(t, out, `not ok s/\x1b]0;evil\a`)
	assert.Contains(t, out, "FAIL")

	code, out, _ = tracebed("parse", "--json", log)
	assert.Equal(t, 1, code)
	var j struct {
		Outcome string
		Results []struct {
			Path, Outcome, Directive string
			Diags                    map[string]any
		}
	}
	require.NoError(t, json.Unmarshal([]byte(out), &j))
	assert.Equal(t, "FAIL", j.Outcome)
	require.Len(t, j.Results, 3)
	assert.Equal(t, "s", j.Results[0].Path)
	assert.Equal(t, "fail", j.Results[1].Outcome)
	assert.Equal(t, []any{1.5, 2.0, 3.0}, j.Results[1].Diags["lat_us"])
	assert.Equal(t, "skip", j.Results[2].Outcome)
	assert.Equal(t, "SKIP why", j.Results[2].Directive)

	code, _, stderr := tracebed("parse", dir)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "directory")
}
