package qemu

import (
	"debug/elf"
	"debug/gosym"
	"fmt"
	"strconv"
)

// Symbolize turns hexadecimal PCs printed by the kernel into "pc function file:line" using
// the kernel image's own pclntab. PCs it cannot resolve are kept as they are.
func Symbolize(kernel string, pcs []string) []string {
	out := make([]string, 0, len(pcs))
	tab := symtab(kernel)
	for i, s := range pcs {
		pc, err := strconv.ParseUint(s, 0, 64)
		if err != nil || tab == nil {
			out = append(out, s)
			continue
		}
		look := pc
		if i > 0 {
			look-- // a return address: the call is the instruction before it
		}
		file, line, fn := tab.PCToLine(look)
		if fn == nil {
			out = append(out, s)
			continue
		}
		out = append(out, fmt.Sprintf("%#x %s %s:%d", pc, fn.Name, file, line))
	}
	return out
}

func symtab(kernel string) *gosym.Table {
	f, err := elf.Open(kernel)
	if err != nil {
		return nil
	}
	defer f.Close()
	pcln, text := f.Section(".gopclntab"), f.Section(".text")
	if pcln == nil || text == nil {
		return nil
	}
	data, err := pcln.Data()
	if err != nil {
		return nil
	}
	t, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil
	}
	return t
}
