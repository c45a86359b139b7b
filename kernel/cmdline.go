package kernel

import "unsafe"

// The kernel's own command-line parameters (ap_stuck=N, acpidump=1). The whole command line
// also reaches the Go program as argv, where ktest.ParseCmdline validates every word and
// reports bad ones as a failed KTAP result; these lookups only read what the kernel needs
// before the runtime starts, so they ignore what they cannot parse.

// cmdlineWords calls fn with each space-separated word of the command line until fn returns
// false. The words are views of boot.cmdline, which never changes: no allocation.
func cmdlineWords(fn func(w string) bool) {
	cl := boot.cmdline[:boot.cmdlen]
	for i := 0; i < len(cl); {
		for i < len(cl) && cl[i] == ' ' {
			i++
		}
		j := i
		for j < len(cl) && cl[j] != ' ' {
			j++
		}
		if j > i && !fn(unsafe.String(&cl[i], j-i)) {
			return
		}
		i = j
	}
}

// cmdlineValue returns the value of key=value on the command line.
func cmdlineValue(key string) (v string, found bool) {
	cmdlineWords(func(w string) bool {
		if len(w) > len(key) && w[:len(key)] == key && w[len(key)] == '=' {
			v, found = w[len(key)+1:], true
		}
		return !found
	})
	return v, found
}

// cmdlineInt returns key's decimal value; false when absent or not a number.
func cmdlineInt(key string) (int64, bool) {
	v, ok := cmdlineValue(key)
	if !ok || v == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' || n > (1<<62)/10 { // not a digit, or about to overflow
			return 0, false
		}
		n = n*10 + int64(v[i]-'0')
	}
	return n, true
}

// cmdlineFlag reports whether key=1 (or any non-zero number) is on the command line.
func cmdlineFlag(key string) bool {
	n, ok := cmdlineInt(key)
	return ok && n != 0
}
