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

// The traps suite on every CPU, through the native stubs and through the Xen PV stubs (by way
// of the pvshim), and once with #BP a trap gate from boot.
func TestTrapsSuiteInQEMU(t *testing.T) {
	// Cases QEMU's TCG may skip, with the reason they must give (the kernel is not at fault).
	tcgSkips := map[string]string{
		"icebp":                    "raised #UD, not #DB",
		"single_step_sti_blocking": "QEMU TCG lets STI's interrupt shadow hold back the single-step trap",
	}
	for _, tc := range []struct {
		name, idt string
		cpus      int
		extra     string
	}{
		{"native_1cpu", "native", 1, ""},
		{"native_4cpus", "native", 4, ""},
		{"native_2cpus_bp_trap_gate", "native", 2, " idt.gate=3:trap"},
		{"pvshim_1cpu", "pvshim", 1, ""},
		{"pvshim_4cpus", "pvshim", 4, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := boot(t, qemu.Config{SMP: tc.cpus, Timeout: 5 * time.Minute,
				Append: "suite=traps idt=" + tc.idt + tc.extra})
			require.Equal(t, qemu.Pass, rep.Outcome, "tail:\n%s", strings.Join(rep.Tail, "\n"))
			require.NoError(t, rep.KTAPError)
			require.Len(t, rep.Results, 1)
			s := rep.Results[0]
			require.Equal(t, "traps", s.Name)
			require.Len(t, s.Children, 17)
			mode, _ := s.Find("idt_mode").Diag("idt")
			assert.Equal(t, tc.idt, mode)
			hv, _ := s.Find("idt_mode").Diag("hypervisor")
			assert.Equal(t, "TCG", hv)
			all := strconv.Itoa(tc.cpus) + "/" + strconv.Itoa(tc.cpus)
			for _, c := range s.Children {
				assert.True(t, c.OK, c.Name)
				if c.Directive != "" {
					want, ok := tcgSkips[c.Name]
					assert.True(t, ok, "%s skipped: %s", c.Name, c.Directive)
					assert.Contains(t, c.Directive, want)
					continue
				}
				if v, ok := c.Diag("cpus_passed"); ok {
					assert.Equal(t, all, v, "%s passed on every CPU", c.Name)
				}
			}
			safe := s.Find("safe_load_random_100k")
			assert.Equal(t, 100000.0, diagFloat(t, safe, "reads"))
			assert.Equal(t, 0.0, diagFloat(t, safe, "misclassified"))
			assert.Positive(t, diagFloat(t, safe, "page_faults"))
			assert.Positive(t, diagFloat(t, safe, "gp_faults"))
			assert.Positive(t, diagFloat(t, safe, "ok"))
			per, _ := safe.Diag("recovered_per_cpu")
			assert.Len(t, strings.Split(per, ","), tc.cpus, "every CPU read at once")
			for i, n := range strings.Split(per, ",") {
				assert.NotEqual(t, "0", n, "cpu %d recovered no fault", i)
			}
			timer := s.Find("timer_in_bp_trap_gate")
			for k, want := range map[string]string{
				"trap_gate_if_in_handler": "true", "trap_gate_timer_nested": "true",
				"interrupt_gate_if_in_handler": "false", "interrupt_gate_timer_nested": "false",
			} {
				v, _ := timer.Diag(k)
				assert.Equal(t, want, v, k)
			}
			assert.GreaterOrEqual(t, diagFloat(t, s.Find("nested_traps_in_bp_handler"), "max_depth"), 3.0)
			nmi := s.Find("nmi_never_nests")
			assert.Equal(t, 2.0, diagFloat(t, nmi, "nmi_handler_entries"))
			assert.Equal(t, 1.0, diagFloat(t, nmi, "nmi_max_depth"))
		})
	}
}

// The witness for the NMI latch: with nmilatch=0 the NMI let in by the #PF's IRET runs nested
// in the NMI handler, and nmi_never_nests must say so (or the run must end worse).
func TestNMILatchMutationFails(t *testing.T) {
	rep := boot(t, qemu.Config{SMP: 2, Append: "suite=traps nmilatch=0", Timeout: 5 * time.Minute})
	require.NotEqual(t, qemu.Pass, rep.Outcome)
	if rep.Outcome == qemu.Fail {
		c := rep.Results[0].Find("nmi_never_nests")
		require.NotNil(t, c, "tail:\n%s", strings.Join(rep.Tail, "\n"))
		assert.False(t, c.OK)
		assert.Equal(t, 2.0, diagFloat(t, c, "nmi_max_depth"))
		for _, o := range rep.Results[0].Children {
			if o.Name != "nmi_never_nests" {
				assert.True(t, o.OK, "%s fails only through the mutation", o.Name)
			}
		}
	}
}

// Bad idt parameters end the boot in one line, as does asking for the Xen PV stubs off Xen.
func TestIDTParametersAreChecked(t *testing.T) {
	for appendWords, want := range map[string]string{
		"idt=xenpv":         "idt=xenpv needs Xen to build PV exception frames, but CPUID reports TCG",
		"idt=pv":            "idt= must be native, pvshim or xenpv",
		"idt.gate=3:task":   "idt.gate: the type must be trap or intr",
		"idt.ist=14:9":      "idt.ist: the IST slot must be a number from 0 to 7",
		"idt.gate=300:trap": "idt.gate/idt.ist: the vector must be a decimal number from 0 to 255",
		// Parse, but the kernel's locking or the IST move cannot survive them (idt.Config.Check).
		"idt.gate=48:trap":            "idt.gate: vectors 32-255 must stay interrupt gates",
		"idt.gate=2:trap":             "idt.gate: NMI, #DF and #MC must stay interrupt gates",
		"idt.ist=2:1":                 "idt.ist: NMI, #DF and #MC need an IST slot no other vector uses",
		"idt.gate=3:trap idt.ist=3:1": "idt.ist: a trap gate's IST slot must be its own",
	} {
		rep := boot(t, qemu.Config{Append: appendWords, Timeout: time.Minute})
		require.Equal(t, qemu.Fatal, rep.Outcome, "%s: tail:\n%s", appendWords, strings.Join(rep.Tail, "\n"))
		assert.Contains(t, strings.Join(rep.Tail, "\n"), "tracebed: fatal: "+want, appendWords)
	}
}
