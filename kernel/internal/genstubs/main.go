// Command genstubs writes kernel/entry_stubs_amd64.s from idt.EntryStubs; `go generate ./kernel`
// runs it, and kernel's TestEntryStubsAreCurrent fails when the checked-in file is stale.
package main

import (
	"fmt"
	"os"

	"tracebed/idt"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: genstubs OUTPUT.s")
		os.Exit(2)
	}
	if err := os.WriteFile(os.Args[1], []byte(idt.EntryStubs()), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "genstubs:", err)
		os.Exit(1)
	}
}
