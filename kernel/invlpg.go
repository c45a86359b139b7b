package kernel

func invlpg(va uint64)
