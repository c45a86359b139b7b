package ktest

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/trap"
)

var known = []string{"runtime", "hang", "fault"}

func TestParseCmdline(t *testing.T) {
	o, err := ParseCmdline(nil, known)
	require.NoError(t, err)
	assert.Empty(t, o.Suites)
	assert.Equal(t, int64(1), o.Seed)

	o, err = ParseCmdline([]string{"suite=runtime,fault", "seed=42", "gc_mib=64"}, known)
	require.NoError(t, err)
	assert.Equal(t, []string{"runtime", "fault"}, o.Suites)
	assert.Equal(t, int64(42), o.Seed)
	n, err := o.IntParam("gc_mib", 1024)
	require.NoError(t, err)
	assert.Equal(t, int64(64), n)
	n, err = o.IntParam("absent", 7)
	require.NoError(t, err)
	assert.Equal(t, int64(7), n)
}

func TestParseCmdlineErrors(t *testing.T) {
	for words, want := range map[string]string{
		"bogus=1":                   `unknown option "bogus"`,
		"suite":                     "malformed option",
		"=x":                        "malformed option",
		"suite=":                    "empty value",
		"suite=nope":                `unknown suite "nope"`,
		"seed=ten":                  "not an integer",
		"seed=1 seed=2":             "given twice",
		"suite=runtime,,fault":      `unknown suite ""`,
		"gc_mib=-5":                 "from 1 to",
		"xcall_seconds=0x10":        "want a decimal number",
		"xcall_seconds=18446744074": "from 1 to 3600",
		"xcall_seconds=0":           "from 1 to 3600",
		"watchdog_ms=0":             "from 200 to",
		"watchdog_ms=50":            "from 200 to",
		"ap_stuck=+1":               "want a decimal number",
	} {
		_, err := ParseCmdline(strings.Fields(words), known)
		assert.ErrorContains(t, err, want, words)
	}
	o, err := ParseCmdline([]string{"xcall_seconds=010"}, known)
	require.NoError(t, err)
	n, err := o.IntParam("xcall_seconds", 1)
	require.NoError(t, err)
	assert.Equal(t, int64(10), n, "decimal, never octal")
}

func TestRunPrintsKTAP(t *testing.T) {
	var buf bytes.Buffer
	ok := Run(&buf, []Suite{
		{Name: "alpha", Cases: []Case{
			{"passes", func(t *T) { t.Diag("answer", 42) }},
			{"fails", func(t *T) { t.Errorf("bad %d", 1) }},
			{"panics", func(t *T) { panic(errors.New("boom")) }},
			{"stops", func(t *T) { t.Fatalf("stop"); t.Diag("unreached", 1) }},
		}},
		{Name: "beta", Cases: []Case{
			{"ok", func(t *T) {}},
			{"skips", func(t *T) { t.Skip("needs two CPUs"); t.Diag("unreached", 2) }},
		}},
	}, Options{Seed: 3})
	assert.False(t, ok)
	out := buf.String()
	for _, want := range []string{
		"KTAP version 1\n1..2\n",
		"    KTAP version 1\n    # Subtest: alpha\n    1..4\n",
		"    # answer=42\n",
		"    ok 1 passes\n",
		"    # error: bad 1\n",
		"    not ok 2 fails\n",
		"    # error: panic: boom\n",
		"    not ok 3 panics\n",
		"    not ok 4 stops\n",
		"not ok 1 alpha\n",
		"    ok 2 skips # SKIP needs two CPUs\n",
		"ok 2 beta\n",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, "unreached")
}

func TestReportError(t *testing.T) {
	var buf bytes.Buffer
	ReportError(&buf, errors.New(`unknown option "x"`))
	assert.Equal(t, "KTAP version 1\n1..1\n# error: unknown option \"x\"\nnot ok 1 cmdline\n", buf.String())
	assert.Equal(t, 33, QEMUStatus(ExitPass))
	assert.Equal(t, 35, QEMUStatus(ExitFail))
	assert.Equal(t, 37, QEMUStatus(ExitFatal))
}

// The parameters the kernel reads itself are numbers it can read: anything else is refused
// here, in one line, rather than misread before the runtime starts.
func TestKernelNumbersAreValidated(t *testing.T) {
	for _, v := range []string{"abc", "-1", "0x1", "yes", "=1", "2", "99999999999999999999", "18446744073709551616"} {
		_, err := ParseCmdline([]string{"nopreempt=" + v}, nil)
		require.Error(t, err, "nopreempt=%s", v)
		assert.Contains(t, err.Error(), "want a decimal number from 0 to 1")
	}
	for _, w := range []string{"nopreempt=0", "nopreempt=1", "acpidump=1", "ap_stuck=3"} {
		_, err := ParseCmdline([]string{w}, nil)
		assert.NoError(t, err, w)
	}
	_, err := ParseCmdline([]string{"ap_stuck=" + strconv.Itoa(trap.MaxCPUs)}, nil)
	assert.Error(t, err, "CPU numbers stop at trap.MaxCPUs-1")
	_, err = ParseCmdline([]string{"ap_stuck=" + strconv.Itoa(trap.MaxCPUs-1)}, nil)
	assert.NoError(t, err)
}

// Every fbt number is range-checked here (the kernel reads them without error reporting).
func TestFBTNumbersChecked(t *testing.T) {
	for _, w := range []string{"fbt.sites=junk", "fbt.sites=-1", "fbt.sites=99999999999", "fbt.batch=2",
		"fbt.batch=no", "fbt.safe=2", "fbt.guard=x", "fbt.drop_db=-3", "fbt_scale_per_probe=5", "wx=2"} {
		_, err := ParseCmdline([]string{w}, nil)
		if err == nil {
			t.Errorf("%s accepted", w)
		}
	}
}
