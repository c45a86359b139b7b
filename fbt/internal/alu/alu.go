// Package alu runs ADD and SUB on the host CPU and returns the flags it set: the reference the
// emulator's flag computation is tested against (fbt/emulate_test.go). Tests only.
package alu

// Add64 returns a+b and RFLAGS after ADDQ.
func Add64(a, b uint64) (res, flags uint64)

// Sub64 returns a-b and RFLAGS after SUBQ.
func Sub64(a, b uint64) (res, flags uint64)
