package kernel

// Implemented in assembly (boot_amd64.s, entry_amd64.s, percpu_amd64.s).
func pvhEntry()
func entry64()
func syscallEntry()
func commonEntry()
func frameReturn()
func enterFrame(f *Frame)

// Trap context allowed.
func kernelStart() uintptr

// Trap context allowed.
func kernelEnd() uintptr

// Trap context allowed.
func kernelTextEnd() uintptr
func kernelRodata() uintptr
func kernelNoptrdata() uintptr

// Trap context allowed.
func pclntab() (start, end uintptr)
func stubAddr(v int) uintptr
func syscallEntryAddr() uintptr
func rt0Addr() uintptr
func apEntry()
func apEntryAddr() uintptr

// Boot-time state read by boot_amd64.s.
var (
	bootStack [65536]byte
	bootG     [32]uintptr
	bootTLS   [2]uintptr
)
