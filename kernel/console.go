package kernel

import (
	"sync/atomic"
	"unsafe"

	"github.com/usbarmory/tamago/soc/intel/uart"

	"tracebed/amd64"
)

// The console is COM1. Kernel code prints through these helpers, which neither allocate nor
// format with fmt; the Go side reaches the same port through write(1/2).

var com1 = uart.UART{Index: 1, Base: 0x3f8}

var consoleLock spinlock

// consoleChunks counts the chunks user writes have put out. A long write holds the console
// with interrupts off for seconds on a real 115200-baud UART; the writer and the CPUs waiting
// for consoleLock behind it make progress (for the watchdog) as long as this moves.
var consoleChunks atomic.Uint64

// consoleOwner is 1 + the id of the CPU whose fatal report seized the console (see
// seizeConsole); 0 until then.
var consoleOwner atomic.Int32

// consoleWrite writes b to the console as one piece of output. Kernel context; in trap
// context only after seizeConsole, as fatalTrap does (the interrupted code may hold
// consoleLock).
func consoleWrite(b []byte) {
	if consoleAcquire() {
		consoleRaw(b)
		consoleRelease()
	}
}

// consoleAcquire takes the console for a write. After a fatal report seized it, only the
// reporting CPU writes (without the lock); every other CPU's output is dropped, so nothing lands
// inside the report the host parses.
//
// Kernel context; in trap context only after seizeConsole, as fatalTrap does (the interrupted
// code may hold consoleLock).
func consoleAcquire() bool {
	if consoleOwner.Load() != 0 {
		return consoleMine()
	}
	consoleLock.lock()
	if consoleOwner.Load() != 0 {
		// Seized while this CPU waited and the lock came free (its holder released it after
		// the report had taken the console by force): this CPU's output is dropped.
		consoleLock.unlock()
		return consoleMine()
	}
	return true
}

// consoleMine reports whether this CPU may write: the console is not seized, or seized by it.
//
// Trap context allowed.
func consoleMine() bool {
	owner := consoleOwner.Load()
	return owner == 0 || int(owner) == thisCPU().id+1
}

// consoleRelease ends a write begun by consoleAcquire.
//
// Kernel context; in trap context only after seizeConsole.
func consoleRelease() {
	if consoleOwner.Load() == 0 {
		consoleLock.unlock()
	}
}

// seizeSpins bounds how long a fatal report waits for the console lock: 2^18 PAUSEs, about
// 10 ms on hardware and 0.2 s under TCG (where a PAUSE costs about 0.7 µs).
const seizeSpins = 1 << 18

// seizeConsole gives the console to c's fatal report. It waits a bounded time for consoleLock,
// then takes the console anyway: the holder is either this CPU, interrupted inside a console
// write (the fault came from there), or a CPU that does not let go. A report interleaved with a
// half-written line beats a hang the host can only call a timeout. The console is never given
// back: the run ends after the report. It returns false when another CPU's report seized it
// first: that report is printed whole, and this CPU must leave the exit to it.
//
// Trap context.
func seizeConsole(c *CPU) bool {
	for i := 0; i < seizeSpins && !consoleLock.tryLock(); i++ {
		amd64.Pause()
	}
	if consoleOwner.CompareAndSwap(0, int32(c.id+1)) {
		consoleFreshLine()
		return true
	}
	return consoleMine()
}

// consoleMidLine is set while the last byte sent was not a newline.
var consoleMidLine atomic.Bool

// newline is a line end for consoleFreshLine (no slice literal in trap context).
var newline = [1]byte{'\n'}

// consoleFreshLine ends the line a seized writer left half-written, so that a report's first
// line parses. With the console seized or borrowed. Trap context.
func consoleFreshLine() {
	// A writer may have passed its ownership check just before the seizure: let its byte out
	// first (a few microseconds; a paced byte's time).
	for t0 := nanotime(); nanotime()-t0 < 20_000+consoleByteNs; {
		amd64.Pause()
	}
	if consoleMidLine.Load() {
		consoleRaw(newline[:])
	}
}

// borrowConsole gives c's watchdog=warn report the console for a while: as seizeConsole, a
// bounded wait for consoleLock and then the console anyway, but given back (returnConsole)
// when the report is done, so the run goes on. ok is false if another CPU's report holds it.
//
// Trap context allowed.
func borrowConsole(c *CPU) (locked, ok bool) { return borrowConsoleSpins(c, seizeSpins) }

// borrowConsoleSpins is borrowConsole with its wait for consoleLock bounded by spins PAUSEs.
// Trap context allowed.
func borrowConsoleSpins(c *CPU, spins int) (locked, ok bool) {
	for i := 0; i < spins && !locked; i++ {
		locked = consoleLock.tryLock()
		amd64.Pause()
	}
	if !consoleOwner.CompareAndSwap(0, int32(c.id+1)) {
		if locked {
			consoleLock.unlock()
		}
		return false, false
	}
	consoleFreshLine()
	return locked, true
}

// returnConsole ends a borrowConsole. Trap context allowed.
func returnConsole(c *CPU, locked bool) {
	consoleOwner.CompareAndSwap(int32(c.id+1), 0)
	if locked {
		consoleLock.unlock()
	}
}

// loserSpins bounds how long a CPU whose fatal report lost the console waits for the winner's
// report to end the run: 2^24 PAUSEs, about 0.7 s on hardware (a report takes about 0.13 s at
// 115200 baud) and 11 s under TCG. Then it exits itself, in case the winner is stuck.
const loserSpins = 1 << 24

// leaveExitToReporter waits for the CPU whose fatal report holds the console to end the run.
//
// Trap context.
func leaveExitToReporter() {
	for i := 0; i < loserSpins; i++ {
		amd64.Pause()
	}
}

// consoleRaw writes b to COM1; the caller holds the console (consoleAcquire or seizeConsole).
//
// Trap context allowed. With the console held (consoleAcquire or seizeConsole).
func consoleRaw(b []byte) {
	for _, c := range b {
		if c == '\n' {
			consoleTx('\r')
		}
		consoleTx(c)
	}
}

// consoleByteNs, set by console.baud=N, paces the console like a real UART at N baud (ten bits
// a byte): QEMU's takes bytes at once, which hides how long a write holds the console, with
// interrupts off, on hardware. 0 when not set.
var consoleByteNs int64

// noConsoleProgress (consoleprogress=0) stops console output from counting as progress for
// the watchdog: a mutation under which a long paced write must be reported as a hang.
var noConsoleProgress bool

// initConsoleBaud reads console.baud and consoleprogress; after the TSC's calibration.
func initConsoleBaud() {
	if b, ok := cmdlineInt("console.baud"); ok && b > 0 {
		consoleByteNs = 10 * 1e9 / b
	}
	if n, ok := cmdlineInt("consoleprogress"); ok && n == 0 {
		noConsoleProgress = true
	}
}

// consoleTx sends one byte, paced when console.baud is set. Once a report has seized the
// console, a byte of any other CPU is dropped here, mid-write, not at the end of its chunk:
// a paced 256-byte chunk lasts 22 ms, and its dots used to land inside the report's lines.
//
// Trap context allowed.
func consoleTx(c byte) {
	if consoleByteNs != 0 {
		for t0 := nanotime(); nanotime()-t0 < consoleByteNs; {
			amd64.Pause()
		}
	}
	if consoleOwner.Load() != 0 && !consoleMine() { // checked last: right before the byte goes out
		return
	}
	consoleMidLine.Store(c != '\n')
	com1.Tx(c)
}

// kbuf is a fixed-size line builder for kernel messages.
type kbuf struct {
	b [256]byte
	n int
}

// Trap context allowed.
func (k *kbuf) s(s string) *kbuf {
	for i := 0; i < len(s) && k.n < len(k.b); i++ {
		k.b[k.n] = s[i]
		k.n++
	}
	return k
}

// Trap context allowed.
func (k *kbuf) c(c byte) *kbuf {
	if k.n < len(k.b) {
		k.b[k.n] = c
		k.n++
	}
	return k
}

// Trap context allowed.
func (k *kbuf) bytes(b []byte) *kbuf {
	for _, c := range b {
		k.c(c)
	}
	return k
}

// hex appends v as 0x-prefixed hexadecimal.
//
// Trap context allowed.
func (k *kbuf) hex(v uint64) *kbuf {
	k.s("0x")
	started := false
	for sh := 60; sh >= 0; sh -= 4 {
		d := byte(v>>uint(sh)) & 15
		if d != 0 || started || sh == 0 {
			started = true
			k.c("0123456789abcdef"[d])
		}
	}
	return k
}

// dec appends v in decimal.
//
// Trap context allowed.
func (k *kbuf) dec(v int64) *kbuf {
	if v < 0 {
		k.c('-')
		v = -v
	}
	var d [20]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return k.bytes(d[i:])
}

// out writes the line (a newline is added) and resets the builder.
//
// Kernel context (it takes the console through consoleWrite); in trap context only after
// seizeConsole, as fatalTrap does.
func (k *kbuf) out() {
	if k.n == len(k.b) {
		k.n-- // a full line is cut by one byte, never run into the next
	}
	k.c('\n')
	consoleWrite(k.b[:k.n])
	k.n = 0
}

// FaultInConsoleWrite loads the byte at addr while holding the console lock (interrupts off)
// and writes it, the way a console write of an unchecked buffer once faulted under the lock. For the fault_console
// suite only: it shows that a fault there is reported, not hung. Never returns for a bad addr.
func FaultInConsoleWrite(addr uintptr) {
	fl := amd64.DisableInterrupts() // as in kernel code: a spinlock holder is never preempted
	consoleLock.lock()
	b := *(*byte)(unsafe.Pointer(addr))
	consoleRaw([]byte{b})
	consoleLock.unlock()
	amd64.RestoreInterrupts(fl)
}
