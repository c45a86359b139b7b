GO ?= go
QEMU ?= qemu-system-x86_64
KERNEL := build/kernel.elf
KERNEL_LDFLAGS := -T 0x101000 -E tracebed/kernel.pvhEntry

.PHONY: all kernel run test qemu clean
all: kernel

kernel: $(KERNEL)

$(KERNEL): FORCE
	@mkdir -p build
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -ldflags '$(KERNEL_LDFLAGS)' -o $@.tmp ./cmd/kernel
	$(GO) run ./cmd/pvhnote $@.tmp
	mv $@.tmp $@

FORCE:
