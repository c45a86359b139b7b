package ktest

import (
	"tracebed/trap"

	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Options is what the kernel command line (QEMU -append, one word per argv entry) selects.
type Options struct {
	Suites []string          // in the order given; empty means the defaults
	Seed   int64             // seed=N, for randomised cases
	Params map[string]string // other known key=value parameters, for the suites to read
}

// Known parameters besides suite= and seed=; a suite that reads a parameter lists it here.
var knownParams = map[string]string{
	"gc_mib":      "MiB the runtime suite's GC stress allocates in total (default 1024)",
	"expect_cpus": "CPUs the smp suite must find online (the boot tests pass QEMU's -smp)",
	"gc_seconds":  "seconds of guest time the smp suite's parallel GC case allocates (default 30)",
	// Read by the kernel itself before the runtime starts (kernel/cmdline.go).
	"acpidump":            "1: print every ACPI table the RSDT/XSDT lists, as hex, at boot",
	"ap_stuck":            "N: send CPU N to a page that halts instead of the trampoline (tests the start-up bound)",
	"idt":                 "native (default), pvshim (the PV vectors enter through the Xen PV stubs via a shim) or xenpv (under Xen only)",
	"idt.gate":            "V:trap|intr,...: gate type per vector, e.g. 3:trap lets interrupts nest in #BP handlers",
	"idt.ist":             "V:N,...: IST slot (0-7, 0 for none) per vector",
	"nopreempt":           "1: no timer preemption (a mutation: the runtime suite's preempt_spinning_thread must then fail)",
	"tlbshootdown":        "0: munmap does not shoot down other CPUs' TLBs; 2: shootdowns skip idle CPUs, which do not catch up when they wake (mutations: the xcall suite's tlb_shootdown_no_stale_reads must then fail)",
	"watchdog":            "0: no stuck-CPU watchdog; warn: report a stuck CPU and go on; 1 (default): report it and end the run as a hang",
	"watchdog_ms":         "guest ms without progress (a timer interrupt, a cross-CPU call run or completed) after which a CPU counts as stuck (default 1000)",
	"xcall.mode":          "drain (default) or naive: waiters for a cross-CPU call do not run the calls sent to them (a mutation: the xcall suite's all-to-all storm must then hang)",
	"xcall.drop":          "N: drop every Nth cross-CPU call IPI at its sender (the waiters re-send)",
	"xcall_seconds":       "seconds of guest time the xcall suite's all-to-all storm runs (default 10)",
	"console.baud":        "N: pace the console like a UART at N baud (QEMU's takes bytes at once), to see what long writes do on hardware",
	"consoleprogress":     "0: console output is no progress for the watchdog (a mutation: a long paced write must then be reported as a hang)",
	"nmilatch":            "0: an NMI arriving inside the NMI handler nests (a mutation: the traps suite's nmi_never_nests must then fail)",
	"lockdrain":           "0: CPUs spinning for a kernel lock do not run cross-CPU calls (a mutation: the xcall suite's call_cpu_spinning_on_klock must then hang)",
	"wx":                  "0: leave the kernel's identity map writable and executable everywhere (a mutation: the fbt suite's wx_text_read_only must then fail)",
	"fbt.probe":           "probe spec: all, GLOB, GLOB:entry, GLOB:return or FUNC+OFF, comma-separated; enabled before the first suite",
	"fbt.mode":            "auto (default), step, boost or emulate: how probes run the instruction they displace",
	"fbt.xol":             "far (default: at least 4 GiB from the text) or near (within rel32 reach): where out-of-line copies run",
	"fbt.safe":            "0: probe actions run even when the probed code had interrupts off",
	"fbt.guard":           "0: functions on the probe path may be probed (a mutation: probing one must end in a reported fatal trap)",
	"fbt.drop_db":         "N: every Nth single-step runs without TF (fault injection: the guard after the copy must catch it)",
	"fbt.reap":            "0: a disabled probe's out-of-line slot is freed at once, even while a thread is inside it (a mutation: the fbt suite's reaper case must then fail)",
	"fbt.bufrecs":         "N: records per CPU in each of the probes' double buffers (default 4096)",
	"fbt.bufwrap":         "1: a full buffer silently overwrites its oldest record instead of dropping and counting (a mutation: the buffer check must then fail)",
	"fbt.batch":           "0: enable and disable probes one at a time, three all-CPU synchronisations each (the baseline batching is measured against)",
	"fbt.sites":           "N: the probe-site table holds N sites, offset sites added after every entry and return (default 40960)",
	"fbt_scale_per_probe": "N: the fbt suite's scale case measures the per-probe protocol up to N probes (1000 to 30000; default 30000)",
	"fbt_seconds":         "seconds of guest time the fbt suite's all-probes load runs (default 3)",
	"stackguard":          "0: leave the guard pages below the kernel's stacks mapped (a mutation: the fault_guard suite must then fail)",
}

// numbers are the parameters read as decimal numbers, with the range of values that mean what
// they say. The kernel reads some before the runtime starts, with a reader that cannot report
// errors; the suites read the others: all are checked here, so that a value is never misread,
// wrapped or silently ignored.
var numbers = map[string][2]uint64{
	"acpidump": {0, 1}, "nopreempt": {0, 1}, "stackguard": {0, 1}, "tlbshootdown": {0, 2},
	"ap_stuck":        {0, trap.MaxCPUs - 1},
	"watchdog_ms":     {200, 600_000}, // at least twice the 100 ms tick of an idle CPU
	"console.baud":    {300, 4_000_000},
	"consoleprogress": {0, 1}, "nmilatch": {0, 1}, "lockdrain": {0, 1},
	"xcall.drop":    {0, 1 << 20},
	"expect_cpus":   {1, trap.MaxCPUs},
	"gc_mib":        {1, 1 << 16},
	"gc_seconds":    {1, 3600},
	"xcall_seconds": {1, 3600},
	"fbt.safe":      {0, 1}, "fbt.guard": {0, 1}, "wx": {0, 1},
	"fbt.drop_db": {0, 1 << 20}, "fbt.batch": {0, 1}, "fbt.reap": {0, 1},
	"fbt.bufrecs": {1, 1 << 16}, "fbt.bufwrap": {0, 1},
	"fbt.sites":           {0, 1 << 18},
	"fbt_scale_per_probe": {1000, 30000},
	"fbt_seconds":         {1, 3600},
}

// ParseCmdline parses words of the form key=value. Unknown keys, repeated keys, words without
// '=', empty values and malformed numbers are errors, as are suites not in known.
func ParseCmdline(words []string, known []string) (Options, error) {
	o := Options{Seed: 1, Params: map[string]string{}}
	seen := map[string]bool{}
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return o, fmt.Errorf("malformed option %q: want key=value", w)
		}
		if v == "" {
			return o, fmt.Errorf("option %q has an empty value", k)
		}
		if seen[k] {
			return o, fmt.Errorf("option %q given twice", k)
		}
		seen[k] = true
		switch k {
		case "suite":
			for _, s := range strings.Split(v, ",") {
				if !contains(known, s) {
					return o, fmt.Errorf("unknown suite %q (known: %s)", s, strings.Join(known, ", "))
				}
				o.Suites = append(o.Suites, s)
			}
		case "seed":
			n, err := strconv.ParseInt(v, 0, 64)
			if err != nil {
				return o, fmt.Errorf("seed %q is not an integer", v)
			}
			o.Seed = n
		default:
			if _, ok := knownParams[k]; !ok {
				return o, fmt.Errorf("unknown option %q (known: %s)", k, strings.Join(optionNames(), ", "))
			}
			if r, ok := numbers[k]; ok {
				n, err := strconv.ParseUint(v, 10, 32)
				if err != nil || n < r[0] || n > r[1] {
					return o, fmt.Errorf("option %s=%q: want a decimal number from %d to %d", k, v, r[0], r[1])
				}
			}
			o.Params[k] = v
		}
	}
	return o, nil
}

// IntParam returns parameter k as an integer, or def when it is absent.
func (o Options) IntParam(k string, def int64) (int64, error) {
	v, ok := o.Params[k]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("option %s=%q: want a positive integer", k, v)
	}
	return n, nil
}

// Off reports whether switch k is given and turned off: its value is a number equal to 0
// ("0", "00"), as Parse's range check read it.
func (o Options) Off(k string) bool {
	v, ok := o.Params[k]
	if !ok {
		return false
	}
	n, err := strconv.ParseUint(v, 10, 64)
	return err == nil && n == 0
}

func optionNames() []string {
	names := []string{"suite", "seed"}
	for k := range knownParams {
		names = append(names, k)
	}
	sort.Strings(names[2:])
	return names
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
