// Command kernel is the tracebed kernel image: the kernel package boots the machine and hosts
// the Go runtime, which then runs this main — the in-kernel test runner.
package main

import (
	"fmt"
	"os"

	_ "tracebed/kernel"
)

func main() {
	fmt.Println("hello from Go main, args", os.Args)
	os.Exit(0)
}
