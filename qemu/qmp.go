package qemu

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// QMP is a client of QEMU's machine protocol on a unix socket: commands with their replies,
// and the asynchronous events QEMU sends (STOP, GUEST_PANICKED, SHUTDOWN, ...).
type QMP struct {
	conn    net.Conn
	mu      sync.Mutex // one command at a time
	replies chan qmpMessage
	Events  chan QMPEvent // buffered; events past its capacity are dropped
	done    chan struct{}
}

// QMPEvent is one asynchronous event.
type QMPEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// DialQMP connects to path, waiting up to wait for QEMU to create it (or until stop is
// closed), and negotiates capabilities.
func DialQMP(path string, wait time.Duration, stop <-chan struct{}) (*QMP, error) {
	var conn net.Conn
	var err error
	for t0 := time.Now(); ; {
		if conn, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Since(t0) > wait {
			return nil, fmt.Errorf("qmp: QEMU made no socket in %v: %w", wait, err)
		}
		select {
		case <-stop:
			return nil, errors.New("qmp: the run ended before QEMU made its socket")
		case <-time.After(20 * time.Millisecond):
		}
	}
	q := &QMP{conn: conn, replies: make(chan qmpMessage, 1), Events: make(chan QMPEvent, 64),
		done: make(chan struct{})}
	greeting := make(chan error, 1)
	go q.read(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			conn.Close()
			return nil, err
		}
	case <-time.After(10 * time.Second):
		conn.Close()
		return nil, errors.New("qmp: no greeting from QEMU")
	}
	if _, err := q.Execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// read delivers replies and events until the connection ends.
func (q *QMP) read(greeting chan<- error) {
	defer close(q.done)
	sc := bufio.NewScanner(q.conn)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	first := true
	for sc.Scan() {
		if first {
			first = false
			if !strings.Contains(sc.Text(), `"QMP"`) {
				greeting <- fmt.Errorf("qmp: unexpected greeting %s", Quote(sc.Text()))
				return
			}
			greeting <- nil
			continue
		}
		var m qmpMessage
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		if m.Event != "" {
			select {
			case q.Events <- QMPEvent{Event: m.Event, Data: m.Data}:
			default:
			}
			continue
		}
		q.replies <- m
	}
	if first {
		greeting <- errors.New("qmp: connection closed before the greeting")
	}
}

// Execute runs command with args (nil for none) and returns its "return" value.
func (q *QMP) Execute(command string, args any) (json.RawMessage, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	q.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", command, err)
	}
	select {
	case m := <-q.replies:
		if m.Error != nil {
			return nil, fmt.Errorf("qmp %s: %s: %s", command, m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	case <-q.done:
		return nil, fmt.Errorf("qmp %s: connection closed", command)
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("qmp %s: no reply in 10 s", command)
	}
}

// HMP runs a human monitor command and returns its output.
func (q *QMP) HMP(cmd string) (string, error) {
	r, err := q.Execute("human-monitor-command", map[string]string{"command-line": cmd})
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		return "", fmt.Errorf("qmp: human-monitor-command %s: %w", Quote(cmd), err)
	}
	return s, nil
}

// Status is query-status: whether the guest runs, and QEMU's run state ("running",
// "guest-panicked", "internal-error", "shutdown", ...).
func (q *QMP) Status() (running bool, status string, err error) {
	r, err := q.Execute("query-status", nil)
	if err != nil {
		return false, "", err
	}
	var s struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(r, &s); err != nil {
		return false, "", fmt.Errorf("qmp: query-status: %w", err)
	}
	return s.Running, s.Status, nil
}

// Close ends the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Diagnosis is what the host found out about a guest that did not finish: every vCPU's state
// read over QMP, each vCPU's stack walked from guest memory and named from the kernel's
// pclntab, and the console lines the kernel printed after an injected NMI.
type Diagnosis struct {
	Reason      string      `json:"reason"`           // why the host looked: a timeout, --diagnose, a QEMU stop state
	Status      string      `json:"status,omitempty"` // QEMU's run state (query-status)
	CPUs        []VCPUState `json:"cpus,omitempty"`
	NMIInjected bool        `json:"nmi_injected"`
	AfterNMI    []string    `json:"after_nmi,omitempty"` // console lines from the NMI on
	Errors      []string    `json:"errors,omitempty"`    // what could not be read
}

// VCPUState is one vCPU as QEMU sees it.
type VCPUState struct {
	Index    int      `json:"index"`
	ThreadID int      `json:"thread_id"`
	Halted   bool     `json:"halted"`
	RIP      uint64   `json:"rip"`
	RSP      uint64   `json:"rsp"`
	RBP      uint64   `json:"rbp"`
	RFLAGS   uint64   `json:"rflags"`
	IF       bool     `json:"if"`
	Function string   `json:"function"` // RIP's function, or "?"
	Stack    []string `json:"stack"`    // "pc function", innermost first
	// Code is the instruction bytes where the vCPU is, in hex: at RIP, and where a trap entry
	// stub was entered from (the byte before the return address at [RSP], which is an INT3's
	// when a CPU loops on a breakpoint that is never removed).
	Code []string `json:"code,omitempty"`
}

// Lines is the diagnosis for a person.
func (d *Diagnosis) Lines() []string {
	l := []string{fmt.Sprintf("diagnosis (%s): QEMU state %s", d.Reason, d.Status)}
	for _, c := range d.CPUs {
		l = append(l, fmt.Sprintf("vcpu %d (thread %d): RIP %#x RSP %#x RFLAGS %#x IF %v halted %v in %s",
			c.Index, c.ThreadID, c.RIP, c.RSP, c.RFLAGS, b01(c.IF), b01(c.Halted), c.Function))
		l = append(l, fmt.Sprintf("vcpu %d stack: %s", c.Index, strings.Join(c.Stack, " <- ")))
		if len(c.Code) > 0 {
			l = append(l, fmt.Sprintf("vcpu %d code: %s", c.Index, strings.Join(c.Code, "; ")))
		}
	}
	for _, e := range d.Errors {
		l = append(l, "diagnosis error: "+e)
	}
	if d.NMIInjected {
		l = append(l, fmt.Sprintf("NMI injected; %d console lines after it", len(d.AfterNMI)))
	}
	return l
}

func b01(b bool) int {
	if b {
		return 1
	}
	return 0
}

// regRE finds "NAME=hexvalue" in `info registers` output.
var regRE = regexp.MustCompile(`\b(RIP|RSP|RBP|RFL)=([0-9a-f]{8,16})`)

// cpuHeadRE starts one CPU's block in `info registers -a`.
var cpuHeadRE = regexp.MustCompile(`(?m)^CPU#(\d+)`)

// parseRegisters reads `info registers -a` into per-CPU register maps and halted flags.
func parseRegisters(out string) (regs map[int]map[string]uint64, halted map[int]bool) {
	regs, halted = map[int]map[string]uint64{}, map[int]bool{}
	heads := cpuHeadRE.FindAllStringSubmatchIndex(out, -1)
	for i, h := range heads {
		end := len(out)
		if i+1 < len(heads) {
			end = heads[i+1][0]
		}
		idx, _ := strconv.Atoi(out[h[2]:h[3]])
		block := out[h[0]:end]
		m := map[string]uint64{}
		for _, r := range regRE.FindAllStringSubmatch(block, -1) {
			v, _ := strconv.ParseUint(r[2], 16, 64)
			m[r[1]] = v
		}
		regs[idx] = m
		halted[idx] = strings.Contains(block, "HLT=1")
	}
	return regs, halted
}

// memRE reads one line of `x /Ngx ADDR`: "ADDR: 0xV 0xV".
var memRE = regexp.MustCompile(`^([0-9a-f]+):((?:\s+0x[0-9a-f]+)+)`)

// readWords reads n 64-bit words of guest virtual memory at addr, as vCPU cpu sees it.
func readWords(q *QMP, cpu int, addr uint64, n int) ([]uint64, error) {
	if _, err := q.HMP("cpu " + strconv.Itoa(cpu)); err != nil {
		return nil, err
	}
	out, err := q.HMP(fmt.Sprintf("x /%dgx %#x", n, addr))
	if err != nil {
		return nil, err
	}
	var words []uint64
	for _, line := range strings.Split(out, "\n") {
		m := memRE.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			if strings.TrimSpace(line) != "" {
				return nil, fmt.Errorf("read %#x: %s", addr, Quote(strings.TrimSpace(line)))
			}
			continue
		}
		for _, f := range strings.Fields(m[2]) {
			v, err := strconv.ParseUint(strings.TrimPrefix(f, "0x"), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("read %#x: %s", addr, Quote(line))
			}
			words = append(words, v)
		}
	}
	if len(words) < n {
		return nil, fmt.Errorf("read %#x: %d of %d words", addr, len(words), n)
	}
	return words[:n], nil
}

// codeAt is "ADDR: b0 b1 ..." for the 16 bytes of guest memory at addr, as vCPU cpu sees them.
func codeAt(q *QMP, cpu int, addr uint64) string {
	w, err := readWords(q, cpu, addr, 2)
	if err != nil {
		return fmt.Sprintf("%#x: unreadable", addr)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%#x:", addr)
	for _, x := range w {
		for i := 0; i < 8; i++ {
			fmt.Fprintf(&b, " %02x", byte(x>>(8*i)))
		}
	}
	return b.String()
}

// maxFrames bounds a stack walk.
const maxFrames = 32

// DiagnoseCPUs reads every vCPU's registers and walks each one's frame-pointer chain in guest
// memory, naming frames from kernel's pclntab. The guest is stopped meanwhile (and resumed
// after, if it was running), so that the registers and the stack agree.
func DiagnoseCPUs(q *QMP, kernel string, d *Diagnosis) {
	running, status, err := q.Status()
	if err != nil {
		d.Errors = append(d.Errors, err.Error())
		return
	}
	d.Status = status
	if running {
		if _, err := q.Execute("stop", nil); err != nil {
			d.Errors = append(d.Errors, err.Error())
		} else {
			defer q.Execute("cont", nil)
		}
	}
	raw, err := q.Execute("query-cpus-fast", nil)
	if err != nil {
		d.Errors = append(d.Errors, err.Error())
		return
	}
	var cpus []struct {
		Index    int `json:"cpu-index"`
		ThreadID int `json:"thread-id"`
	}
	if err := json.Unmarshal(raw, &cpus); err != nil {
		d.Errors = append(d.Errors, "query-cpus-fast: "+err.Error())
		return
	}
	out, err := q.HMP("info registers -a")
	if err != nil {
		d.Errors = append(d.Errors, err.Error())
		return
	}
	regs, halted := parseRegisters(out)
	tab := symtab(kernel)
	name := func(pc uint64) string {
		if tab != nil {
			if fn := tab.PCToFunc(pc); fn != nil {
				return fn.Name
			}
		}
		return "?"
	}
	for _, c := range cpus {
		r, ok := regs[c.Index]
		if !ok {
			d.Errors = append(d.Errors, fmt.Sprintf("vcpu %d: no registers in `info registers -a`", c.Index))
			continue
		}
		s := VCPUState{Index: c.Index, ThreadID: c.ThreadID, Halted: halted[c.Index],
			RIP: r["RIP"], RSP: r["RSP"], RBP: r["RBP"], RFLAGS: r["RFL"], IF: r["RFL"]&0x200 != 0}
		s.Function = name(s.RIP)
		s.Stack = []string{fmt.Sprintf("%#x %s", s.RIP, s.Function)}
		// A frameless leaf (an assembly helper such as a PAUSE loop) has its caller's return
		// address at [RSP], which the frame-pointer chain skips.
		s.Code = append(s.Code, codeAt(q, c.Index, s.RIP))
		if w, err := readWords(q, c.Index, s.RSP, 1); err == nil && w[0] != 0 {
			if f := name(w[0] - 1); f != "?" && f != s.Function {
				s.Stack = append(s.Stack, fmt.Sprintf("%#x %s [rsp]", w[0], f))
				s.Code = append(s.Code, codeAt(q, c.Index, w[0]-1))
			}
		}
		fp := s.RBP
		for i := 0; i < maxFrames && fp != 0 && fp%8 == 0; i++ {
			w, err := readWords(q, c.Index, fp, 2)
			if err != nil {
				s.Stack = append(s.Stack, "(frame at "+strconv.FormatUint(fp, 16)+" unreadable)")
				break
			}
			if w[1] == 0 {
				break
			}
			s.Stack = append(s.Stack, fmt.Sprintf("%#x %s", w[1], name(w[1]-1)))
			if w[0] <= fp { // frames go up the stack; anything else is not a chain
				break
			}
			fp = w[0]
		}
		d.CPUs = append(d.CPUs, s)
	}
}
