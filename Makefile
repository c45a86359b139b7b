# tracebed: `make run` boots the kernel in QEMU with the default suites; `make test` runs every
# test, on the host and in QEMU. QEMU comes from Debian's qemu-system-x86, and Chromium (which
# make test opens the HTML report in, headless) from Debian's chromium, installed on first use
# when running as root.
GO     ?= go
QEMU   ?= qemu-system-x86_64
CHROMIUM ?= chromium
KERNEL := build/kernel.elf
SMP    ?= 4
RUNFLAGS ?=

.PHONY: all kernel run test torture qemu chromium clean
all: kernel

kernel:
	$(GO) run ./cmd/tracebed build -o $(KERNEL)

qemu:
	@command -v $(QEMU) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "tracebed: installing Debian's qemu-system-x86"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null; \
	  else \
	    echo "tracebed: $(QEMU) not found: install it with 'sudo apt-get install qemu-system-x86'" >&2; exit 1; \
	  fi; }

chromium:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "tracebed: installing Debian's chromium"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "tracebed: $(CHROMIUM) not found: install it with 'sudo apt-get install chromium'" >&2; exit 1; \
	  fi; }

run: qemu
	@start=$$(date +%s%N); \
	$(MAKE) --no-print-directory kernel && \
	$(GO) run ./cmd/tracebed run --smp $(SMP) $(RUNFLAGS); status=$$?; \
	end=$$(date +%s%N); \
	echo "tracebed: make run took $$(( (end - start) / 1000000 )) ms in total (build included)"; \
	exit $$status

# -p 1: one package at a time, so the CPU-heavy fbt differential run never competes with the
# QEMU boots for this machine's cores (their figures and GC-cycle floors assume they don't).
test: qemu chromium
	$(GO) test -p 1 -count=1 -timeout 60m ./...

# Long runs by hand (about 7 minutes): the xcall storm for 60 s at 4 and 8 CPUs, the smp
# suite's parallel GC for 60 s at 4, and every probe-able function probed under load for 60 s
# at 4 (and stepped, under the Xen PV stubs, at 2). make test runs each of them briefly.
torture: qemu kernel
	$(GO) run ./cmd/tracebed run --smp 4 --suite xcall --append xcall_seconds=60 --timeout 10m
	$(GO) run ./cmd/tracebed run --smp 8 --suite xcall --append xcall_seconds=60 --timeout 10m
	$(GO) run ./cmd/tracebed run --smp 4 --suite smp --append gc_seconds=60 --timeout 15m
	$(GO) run ./cmd/tracebed run --smp 4 --suite fbt --append fbt_seconds=60 --timeout 15m
	$(GO) run ./cmd/tracebed run --smp 2 --suite fbt --append 'fbt_seconds=60 idt=pvshim fbt.mode=step' --timeout 30m
	$(GO) run ./cmd/tracebed run --smp 4 --suite fbt_torture --append fbt_seconds=60 --timeout 15m
	$(GO) run ./cmd/tracebed run --smp 8 --suite fbt_torture --append fbt_seconds=60 --timeout 20m

clean:
	rm -rf build
