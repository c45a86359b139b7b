package main

import (
	"bytes"
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
	code, _, stderr := tracebed("run", "--kernel", "/nonexistent.elf", "--qemu", "true")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "kernel image")
	code, _, stderr = tracebed("run", "--qemu", "no-such-qemu")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "qemu-system-x86")
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
