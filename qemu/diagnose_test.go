package qemu_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/qemu"
)

// Every CPU spins with interrupts off and no watchdog can run: the host's timeout ends the run,
// and before it kills QEMU it reads every vCPU over QMP and walks its stack, which must name
// the spinning function on each, then injects an NMI, to which every CPU answers with its own
// backtrace on the console.
func TestHangDiagnosisOverQMP(t *testing.T) {
	const cpus = 2
	rep := boot(t, qemu.Config{SMP: cpus, Append: "suite=hang_all watchdog=0", Timeout: 20 * time.Second})
	require.Equal(t, qemu.Hang, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	assert.True(t, rep.TimedOut)
	d := rep.Diagnosis
	require.NotNil(t, d)
	t.Logf("%s", strings.Join(d.Lines(), "\n"))
	assert.Empty(t, d.Errors)
	assert.Equal(t, "running", d.Status)
	require.Len(t, d.CPUs, cpus)
	for _, c := range d.CPUs {
		assert.Equal(t, "tracebed/kernel/suites.spinAllForever", c.Function, "vcpu %d", c.Index)
		assert.False(t, c.IF, "vcpu %d spins with interrupts off", c.Index)
		assert.False(t, c.Halted)
		assert.Positive(t, c.ThreadID)
		assert.GreaterOrEqual(t, len(c.Stack), 2, "vcpu %d: the frame-pointer walk found callers", c.Index)
	}
	assert.True(t, d.NMIInjected)
	after := strings.Join(d.AfterNMI, "\n")
	for i := 0; i < cpus; i++ {
		assert.Regexp(t, `tracebed: nmi cpu `+strconv.Itoa(i)+` stack: tracebed/kernel/suites\.spinAllForever`, after)
	}
}

// QEMU stops a guest that reports a panic through pvpanic (with panic=pause): the runner sees
// the stop at once, over QMP, and reports it as STOPPED with QEMU's reason, not as a HANG after
// the timeout.
func TestQEMUStopIsReportedAtOnce(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 1, Append: "suite=pvpanic", Timeout: 2 * time.Minute,
		Extra: []string{"-device", "pvpanic", "-action", "panic=pause"}})
	require.Equal(t, qemu.Stopped, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
	require.NotNil(t, rep.Diagnosis)
	assert.Contains(t, rep.Diagnosis.Reason, "guest-panicked")
	assert.Less(t, rep.Total, 30*time.Second)
	require.Len(t, rep.Diagnosis.CPUs, 1)
}
