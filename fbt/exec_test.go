package fbt

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
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

var sample = flag.Int("fbt.sample", 0, "run only every Nth unique corpus instruction (0: all)")

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

// unsafeInUserMode: instructions the harness must not run, because they are not
// deterministic, change the process's segments or flags in ways that break the harness, or
// wait.
func unsafeInUserMode(in *x86asm.Inst) bool {
	switch in.Op {
	case x86asm.RDTSC, x86asm.RDTSCP, x86asm.RDRAND, x86asm.RDPMC, x86asm.POPF, x86asm.POPFD,
		x86asm.POPFQ, x86asm.LFS, x86asm.LGS, x86asm.LSS, x86asm.WRFSBASE, x86asm.WRGSBASE,
		x86asm.HLT, x86asm.PAUSE:
		return true
	case x86asm.MOV, x86asm.POP:
		if r, ok := in.Args[0].(x86asm.Reg); ok && r >= x86asm.ES && r <= x86asm.GS {
			return true
		}
	}
	for _, a := range in.Args {
		if m, ok := a.(x86asm.Mem); ok && (m.Segment == x86asm.FS || m.Segment == x86asm.GS) {
			return true // the harness's own thread-local storage
		}
	}
	return false
}

// corpus is the kernel's own text plus a few gcc-built binaries of the machine.
func corpus(t *testing.T) (map[string][]insn, map[string]int) {
	kernel := filepath.Join(t.TempDir(), "kernel.elf")
	require.NoError(t, qemu.BuildKernel("..", kernel))
	files := map[string]string{"tracebed kernel": kernel}
	for _, p := range []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/bin/bash", "/usr/bin/gcc"} {
		if _, err := os.Stat(p); err == nil {
			files[filepath.Base(p)] = p
		}
	}
	out := map[string][]insn{}
	bad := map[string]int{}
	for name, p := range files {
		ins, b, err := textOf(p)
		require.NoError(t, err, p)
		out[name], bad[name] = ins, b
	}
	return out, bad
}

type tally struct {
	tried, relocated, run, ok, fault, skipped int
	refused                                   map[string]int
	mismatches                                []string
	skips                                     map[string]int
}

// xcase is one relocation handed to xrun.
type xcase struct {
	from, to, mem, branch, seed uint64
	orig, rel                   []byte
	desc                        string
}

func (c *xcase) write(w io.Writer) error {
	var h [48]byte
	le := binary.LittleEndian
	le.PutUint64(h[0:], c.from)
	le.PutUint64(h[8:], c.to)
	le.PutUint64(h[16:], c.mem)
	le.PutUint64(h[24:], c.branch)
	le.PutUint64(h[32:], c.seed)
	le.PutUint32(h[40:], uint32(len(c.orig)))
	le.PutUint32(h[44:], uint32(len(c.rel)))
	if _, err := w.Write(h[:]); err != nil {
		return err
	}
	if _, err := w.Write(c.orig); err != nil {
		return err
	}
	_, err := w.Write(c.rel)
	return err
}

// execute runs the cases through one xrun process, in order, and returns its verdict lines.
func execute(t *testing.T, cases []xcase) []string {
	cmd := exec.Command(xrun(t))
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
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
	var lines []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	err = cmd.Wait()
	require.NoError(t, err, "xrun died after %d of %d cases (last: %s): %s", len(lines), len(cases),
		func() string {
			if len(lines) < len(cases) {
				return cases[len(lines)].desc
			}
			return ""
		}(), stderr.String())
	require.Len(t, lines, len(cases))
	return lines
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
			seen := map[string]bool{}
			tl := tally{refused: map[string]int{}, skips: map[string]int{}}
			var cases []xcase
			for _, in := range srcs[name] {
				tl.tried++
				if seen[string(in.b)] {
					continue // identical bytes behave identically; run each once per distance
				}
				seen[string(in.b)] = true
				if *sample > 1 && len(seen)%*sample != 0 {
					continue
				}
				dec, _ := decode(in.b)
				for di, d := range distances {
					from := home + in.addr%4096 + uint64(di)*0x10000
					to := from + uint64(d.d)
					rel, err := Relocate(in.b, from, to)
					if err != nil {
						var r *Refusal
						require.True(t, errors.As(err, &r), "%v", err)
						require.ErrorIs(t, err, ErrNotRelocatable)
						tl.refused[string(r.Reason)]++
						continue
					}
					tl.relocated++
					if unsafeInUserMode(&dec) {
						continue
					}
					a, err := analyze(in.b, from)
					require.NoError(t, err)
					c := xcase{from: from, to: to, seed: uint64(len(cases)), orig: in.b, rel: rel,
						desc: fmt.Sprintf("%s % x at %#x → %s", x86asm.GNUSyntax(dec, in.addr, nil), in.b, in.addr, d.name)}
					switch a.kind {
					case kRIPMem, kCallInd:
						if a.ripMem && a.in.Op != x86asm.LEA { // lea reads no memory
							c.mem = a.target
						}
					case kJmpRel, kCondRel, kCallRel:
						c.branch = a.target
					}
					cases = append(cases, c)
				}
			}
			lines := execute(t, cases)
			for i, l := range lines {
				tl.run++
				switch {
				case l == "ok":
					tl.ok++
				case l == "fault" || l == "fault-same":
					tl.fault++
				case strings.HasPrefix(l, "skip "):
					tl.skipped++
					tl.skips[l[5:]]++
				default:
					tl.mismatches = append(tl.mismatches, cases[i].desc+": "+l)
				}
			}
			t.Logf("%s: %d instructions (%d bytes undecodable), %d unique; relocations %d at %d distances; run %d: %d equal, %d faulted alike, %d skipped %v; mismatches %d",
				name, tl.tried, bad[name], len(seen), tl.relocated, len(distances), tl.run, tl.ok, tl.fault, tl.skipped, tl.skips, len(tl.mismatches))
			reasons := make([]string, 0, len(tl.refused))
			for r, n := range tl.refused {
				reasons = append(reasons, fmt.Sprintf("%d × %s", n, r))
			}
			sort.Strings(reasons)
			t.Logf("%s: refused %s", name, strings.Join(reasons, "; "))
			for i, m := range tl.mismatches {
				if i == 20 {
					t.Errorf("... and %d more", len(tl.mismatches)-20)
					break
				}
				t.Errorf("mismatch: %s", m)
			}
			assert.Positive(t, tl.ok)
		})
	}
}
