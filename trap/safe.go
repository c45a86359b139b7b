package trap

import (
	"strconv"
	"sync/atomic"
	"unsafe"

	"golang.org/x/arch/x86/x86asm"

	"tracebed/idt"
)

// Fault-safe reads for probe actions, and reads and writes of user memory for the system-call
// host (an EFAULT instead of a fatal trap).
//
// Protocol (an exception table of six entries): safeLoad8/16/32/64 and safeStore8/64
// (safe_amd64.s) each access addr with their one instruction through AX. When that instruction
// faults (#PF: not mapped;
// #GP: not canonical; #SS), recoverSafeLoad, called first by Dispatch, finds the faulting RIP
// in the table, writes v=0, the vector and the fault address into the function's results on
// the interrupted stack, and resumes at the function's return address with RSP past it — as if
// the function had returned. Nothing else runs on the interrupted stack, so this is safe on
// every CPU at once and at any nesting depth, trap context included.

// Fault describes a load that faulted. The zero Fault means the load succeeded. It is returned
// by value rather than as an error interface so that trap-context callers never allocate;
// Err gives an error for goroutine code.
type Fault struct {
	Vector uint8   // idt.PageFault, idt.GeneralProtection or idt.StackFault; 0: no fault
	Addr   uintptr // CR2 for a #PF (the first unmapped byte), the requested address otherwise
}

// Failed reports whether the load faulted.
//
// Trap context allowed.
func (f Fault) Failed() bool { return f.Vector != 0 }

func (f Fault) Error() string {
	return "trap: " + vectorName(f.Vector) + " reading " + strconv.FormatUint(uint64(f.Addr), 16)
}

// Err returns f as an error, nil when the load succeeded.
func (f Fault) Err() error {
	if !f.Failed() {
		return nil
	}
	return f
}

// Trap context allowed (see the protocol above: recoverSafeLoad returns on its behalf when
// it faults).
func safeLoad8(addr uintptr) (v uint64, vec uint64, faultAddr uintptr)
func safeLoad16(addr uintptr) (v uint64, vec uint64, faultAddr uintptr)

// Trap context allowed (see the protocol above: recoverSafeLoad returns on its behalf when
// it faults).
func safeLoad32(addr uintptr) (v uint64, vec uint64, faultAddr uintptr)

// Trap context allowed (see the protocol above: recoverSafeLoad returns on its behalf when
// it faults).
func safeLoad64(addr uintptr) (v uint64, vec uint64, faultAddr uintptr)

// Trap context allowed (see the protocol above: recoverSafeLoad returns on its behalf when
// it faults).
func safeStore8(addr uintptr, v uint64) (vec uint64, faultAddr uintptr)

// Trap context allowed (see the protocol above: recoverSafeLoad returns on its behalf when
// it faults).
func safeStore64(addr uintptr, v uint64) (vec uint64, faultAddr uintptr)
func safeLoadEntries(out *[nSafe]uintptr)

// nSafe is the number of fault-safe access functions (the exception table's size).
const nSafe = 6

// SafeLoad8 reads the byte at addr, or reports why it could not. Trap context allowed.
func SafeLoad8(addr uintptr) (uint8, Fault) {
	v, vec, fa := safeLoad8(addr)
	return uint8(v), Fault{uint8(vec), fa}
}

// SafeLoad16 reads 2 bytes at addr. Trap context allowed.
func SafeLoad16(addr uintptr) (uint16, Fault) {
	v, vec, fa := safeLoad16(addr)
	return uint16(v), Fault{uint8(vec), fa}
}

// SafeLoad32 reads 4 bytes at addr. Trap context allowed.
func SafeLoad32(addr uintptr) (uint32, Fault) {
	v, vec, fa := safeLoad32(addr)
	return uint32(v), Fault{uint8(vec), fa}
}

// SafeLoad64 reads 8 bytes at addr. Trap context allowed.
func SafeLoad64(addr uintptr) (uint64, Fault) {
	v, vec, fa := safeLoad64(addr)
	return v, Fault{uint8(vec), fa}
}

// SafeStore8 writes the byte v at addr, or reports why it could not. Trap context allowed.
func SafeStore8(addr uintptr, v uint8) Fault {
	vec, fa := safeStore8(addr, uint64(v))
	return Fault{uint8(vec), fa}
}

// SafeStore64 writes 8 bytes at addr. Trap context allowed.
func SafeStore64(addr uintptr, v uint64) Fault {
	vec, fa := safeStore64(addr, v)
	return Fault{uint8(vec), fa}
}

// CopyInString copies the NUL-terminated string at addr into dst, at most len(dst) bytes,
// and returns its length (without the NUL; len(dst) when no NUL came first). A fault ends the
// copy: n bytes were copied before it. Trap context allowed.
func CopyInString(dst []byte, addr uintptr) (n int, f Fault) {
	for n < len(dst) {
		b, f := SafeLoad8(addr + uintptr(n))
		if f.Failed() {
			return n, f
		}
		if b == 0 {
			break
		}
		dst[n] = b
		n++
	}
	return n, Fault{}
}

// safeRIP holds the address of the faulting instruction of each safe access, found by
// decoding each function up to its access through AX; 0 until the package is initialised (an
// access before that is not recoverable and reports as fatal, as any fault would).
var safeRIP [nSafe]uintptr

func init() {
	var entries [nSafe]uintptr
	safeLoadEntries(&entries)
	for i, entry := range entries {
		safeRIP[i] = accessThroughAX(entry)
		if safeRIP[i] == 0 {
			panic("trap: no access through AX in the first instructions of a safe access")
		}
	}
}

// accessThroughAX decodes the code at entry, at most four instructions, and returns the
// address of the first one with a memory operand based on RAX (0: none).
func accessThroughAX(entry uintptr) uintptr {
	code := (*[64]byte)(unsafe.Pointer(entry))
	off := 0
	for i := 0; i < 4; i++ {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			return 0
		}
		for _, a := range in.Args {
			if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.RAX {
				return entry + uintptr(off)
			}
		}
		off += in.Len
	}
	return 0
}

// recoverSafeLoad returns from a faulting safe load on its behalf (see the protocol above).
// Trap context.
//
//go:nosplit
func recoverSafeLoad(cpu int, f *Frame) bool {
	switch f.Vector {
	case idt.PageFault, idt.GeneralProtection, idt.StackFault:
	default:
		return false
	}
	found := false
	for _, rip := range safeRIP {
		if rip != 0 && uintptr(f.RIP) == rip {
			found = true
		}
	}
	if !found {
		return false
	}
	sp := uintptr(f.RSP)
	addr := *(*uintptr)(unsafe.Pointer(sp + 8))
	fa := addr
	if f.Vector == idt.PageFault {
		fa = uintptr(f.CR2)
	}
	*(*uint64)(unsafe.Pointer(sp + 16)) = 0
	*(*uint64)(unsafe.Pointer(sp + 24)) = f.Vector
	*(*uintptr)(unsafe.Pointer(sp + 32)) = fa
	f.RIP = *(*uint64)(unsafe.Pointer(sp))
	f.RSP = uint64(sp + 8)
	atomic.AddUint64(&percpu[cpu].recovered, 1)
	return true
}
