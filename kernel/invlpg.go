package kernel

// Trap context allowed.
func invlpg(va uint64)
