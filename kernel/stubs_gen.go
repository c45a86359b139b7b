package kernel

// The entry stubs are generated from idt's vector facts; see idt.EntryStubs.
//go:generate go run ./internal/genstubs entry_stubs_amd64.s
