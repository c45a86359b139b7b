// xrun: the execution half of fbt's differential test (fbt/relocate_exec_test.go builds it
// with gcc and drives it; it is not part of the kernel).
//
// For each case read from stdin it maps the original instruction at `from` and its relocated
// code at `to` (every other byte of those pages is INT3), the pages around the RIP-relative
// target, the branch target's page (INT3s), a stack and a data area, and then runs twice from
// identical states: all 16 GPRs, RFLAGS, XMM0-15 and memory. A run starts from a SIGTRAP
// whose handler writes the state into the signal context, and ends at the first INT3 or fault,
// whose handler captures the context. The two end states must be equal, including the RIP
// (the landing INT3's address) and every byte of the stack, data and target pages.
//
// Input per case (little endian): u64 from, u64 to, u64 memTarget (0: none), u64 branch
// target (0: none; its page is INT3s), u64 seed,
// u32 nOrig, u32 nRel, orig bytes, rel bytes. Output per case, one line: "ok", "fault" (both
// faulted the same way at the instruction), "skip <why>" or "mismatch <what>".
#define _GNU_SOURCE
#include <signal.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#define PAGE 4096ULL
#define STACK_BASE 0x500000000000ULL /* 4 pages; RSP in the middle */
#define DATA_BASE 0x500000010000ULL  /* 4 pages the GPRs point into */
#define LAND_BASE 0x500000020000ULL  /* 1 page of INT3: where stack words and some GPRs point */
#define MAXPAGES 32

struct state {
	greg_t g[NGREG];
	uint8_t xmm[16][16];
	uint32_t mxcsr;
	int sig;
	uint64_t addr; /* si_addr for faults */
	uint8_t stack[4 * PAGE], data[4 * PAGE], target[3 * PAGE];
};

static struct state init, res[2];
static sigjmp_buf back;
static volatile int phase; /* 0: start a run, 1: running */
static int cur;
static uint64_t page_addr[MAXPAGES];
static int npages;
static uint64_t code_lo[2], code_hi[2]; /* page ranges holding the original and the copy */

static int is_code(uint64_t p) {
	for (int i = 0; i < 2; i++)
		if (p >= code_lo[i] && p < code_hi[i])
			return 1;
	return 0;
}

/* The code under test may set RFLAGS.AC (popfw, say); the kernel keeps it for the handler,
 * and with CR0.AM set the harness's own unaligned copies would then fault forever. */
static inline void clear_ac(void) { __asm__ volatile("pushfq; andq $~0x40000, (%%rsp); popfq" ::: "memory", "cc"); }

static void handler(int sig, siginfo_t *si, void *uv) {
	clear_ac();
	ucontext_t *uc = uv;
	if (phase == 0 && sig == SIGTRAP) {
		phase = 1;
		/* GPRs, RIP and RFLAGS; CS/GS/FS and the rest stay the kernel's. */
		for (int i = REG_R8; i <= REG_EFL; i++)
			uc->uc_mcontext.gregs[i] = init.g[i];
		memcpy(uc->uc_mcontext.fpregs->_xmm, init.xmm, sizeof init.xmm);
		uc->uc_mcontext.fpregs->mxcsr = init.mxcsr;
		return;
	}
	struct state *r = &res[cur];
	memcpy(r->g, uc->uc_mcontext.gregs, sizeof r->g);
	memcpy(r->xmm, uc->uc_mcontext.fpregs->_xmm, sizeof r->xmm);
	r->mxcsr = uc->uc_mcontext.fpregs->mxcsr;
	r->sig = sig;
	r->addr = (uint64_t)si->si_addr;
	/* Give the harness back a sane floating-point environment. */
	uc->uc_mcontext.fpregs->mxcsr = 0x1f80;
	siglongjmp(back, 1);
}

static uint64_t rng;
static uint64_t next(void) {
	rng += 0x9e3779b97f4a7c15ULL;
	uint64_t z = rng;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static int mapped(uint64_t p) {
	for (int i = 0; i < npages; i++)
		if (page_addr[i] == p)
			return 1;
	return 0;
}

/* map the pages covering [lo, hi) (RWX, filled with fill); 0 if an address is taken. */
static int map_range(uint64_t lo, uint64_t hi, int fill) {
	for (uint64_t p = lo & ~(PAGE - 1); p < hi; p += PAGE) {
		if (mapped(p))
			continue;
		if (npages == MAXPAGES)
			return 0;
		void *m = mmap((void *)p, PAGE, PROT_READ | PROT_WRITE | PROT_EXEC,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
		if (m == MAP_FAILED || (uint64_t)m != p) {
			if (m != MAP_FAILED)
				munmap(m, PAGE);
			return 0;
		}
		memset(m, fill, PAGE);
		page_addr[npages++] = p;
	}
	return 1;
}

static void fill_fixed(uint64_t seed) {
	rng = seed;
	uint64_t *s = (uint64_t *)STACK_BASE;
	for (size_t i = 0; i < 4 * PAGE / 8; i++)
		s[i] = LAND_BASE + 16 * (next() % 200);
	uint64_t *d = (uint64_t *)DATA_BASE;
	for (size_t i = 0; i < 4 * PAGE / 8; i++)
		d[i] = (i % 4 == 0) ? DATA_BASE + 8 * (next() % 2048) : next();
	memset((void *)LAND_BASE, 0xcc, PAGE);
}

/* fill the target window, except pages that hold code */
static void fill_target(uint64_t tlo, uint64_t seed) {
	rng = seed ^ 0x5555;
	for (uint64_t p = tlo; p < tlo + 3 * PAGE; p += 8) {
		uint64_t v = next();
		if (!is_code(p & ~(PAGE - 1)))
			*(uint64_t *)p = v;
	}
}

static void make_init(uint64_t seed, uint64_t rip) {
	static const int regs[] = {REG_RAX, REG_RBX, REG_RCX, REG_RDX, REG_RSI, REG_RDI, REG_RBP,
				   REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15};
	rng = seed * 31 + 7;
	memset(&init, 0, sizeof init);
	for (size_t i = 0; i < sizeof regs / sizeof regs[0]; i++) {
		uint64_t v;
		switch (next() % 4) {
		case 0: v = DATA_BASE + PAGE + (next() % (2 * PAGE)); break;
		case 1: v = next() % 64; break;
		case 2: v = LAND_BASE + 16 * (next() % 200); break;
		default: v = next(); break;
		}
		init.g[regs[i]] = v;
	}
	init.g[REG_RSP] = STACK_BASE + 2 * PAGE - 8 * (next() % 2);
	init.g[REG_RIP] = rip;
	/* CF PF AF ZF SF OF DF at random; IF and bit 1 set. */
	init.g[REG_EFL] = 0x202 | (next() & 0xcd5);
	for (int i = 0; i < 16; i++)
		for (int j = 0; j < 16; j++)
			init.xmm[i][j] = next();
	init.mxcsr = 0x1f80;
}

static void run(int which, uint64_t rip, uint64_t seed, uint64_t tlo, int have_target) {
	struct itimerval t = {{0, 0}, {0, 50000}}, off = {{0, 0}, {0, 0}};
	fill_fixed(seed);
	if (have_target)
		fill_target(tlo, seed);
	make_init(seed, rip);
	cur = which;
	memset(&res[which], 0, sizeof res[which]);
	phase = 0;
	setitimer(ITIMER_REAL, &t, NULL);
	if (!sigsetjmp(back, 1))
		__asm__ volatile("int3");
	clear_ac();
	setitimer(ITIMER_REAL, &off, NULL);
	struct state *r = &res[which];
	memcpy(r->stack, (void *)STACK_BASE, sizeof r->stack);
	memcpy(r->data, (void *)DATA_BASE, sizeof r->data);
	if (have_target)
		memcpy(r->target, (void *)tlo, sizeof r->target);
}

static const char *gname(int i) {
	static const char *n[NGREG] = {"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi",
				       "rsi", "rbp", "rbx", "rdx", "rax", "rcx", "rsp", "rip", "efl",
				       "csgsfs", "err", "trapno", "oldmask", "cr2"};
	return n[i];
}

static int readn(void *p, size_t n) { return fread(p, 1, n, stdin) == n; }

int main(void) {
	static char altstack[1 << 16];
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	sigaltstack(&ss, NULL);
	struct sigaction sa = {.sa_sigaction = handler, .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER};
	int sigs[] = {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGALRM};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!map_range(STACK_BASE, STACK_BASE + 4 * PAGE, 0) || !map_range(DATA_BASE, DATA_BASE + 4 * PAGE, 0) ||
	    !map_range(LAND_BASE, LAND_BASE + PAGE, 0xcc)) {
		fprintf(stderr, "xrun: cannot map the fixed areas\n");
		return 2;
	}
	int fixed = npages;
	for (;;) {
		uint64_t from, to, mt, bt, seed;
		uint32_t no, nr;
		static uint8_t orig[64], rel[256];
		if (!readn(&from, 8))
			return 0;
		if (!readn(&to, 8) || !readn(&mt, 8) || !readn(&bt, 8) || !readn(&seed, 8) || !readn(&no, 4) || !readn(&nr, 4) ||
		    no > sizeof orig || nr > sizeof rel || !readn(orig, no) || !readn(rel, nr)) {
			fprintf(stderr, "xrun: bad input\n");
			return 2;
		}
		npages = fixed;
		uint64_t tlo = (mt & ~(PAGE - 1)) - PAGE;
		code_lo[0] = from & ~(PAGE - 1);
		code_hi[0] = (from + no + 32 + PAGE - 1) & ~(PAGE - 1);
		code_lo[1] = to & ~(PAGE - 1);
		code_hi[1] = (to + nr + 32 + PAGE - 1) & ~(PAGE - 1);
		int ok = map_range(from, from + no + 32, 0xcc) && map_range(to, to + nr + 32, 0xcc);
		if (ok && mt)
			ok = map_range(tlo, tlo + 3 * PAGE, 0);
		if (ok && bt)
			ok = map_range(bt, bt + 1, 0xcc);
		if (!ok) {
			printf("skip address taken\n");
			goto done;
		}
		int overlap = !(to + nr <= from || from + no <= to);
		if (mt && ((mt + 64 > from && mt < from + no) || (mt + 64 > to && mt < to + nr))) {
			printf("skip target overlaps the code\n");
			goto done;
		}
		if (bt && bt >= to && bt < to + nr) {
			/* The original would branch into the copy itself: the two runs execute different
			 * bytes there by construction. */
			printf("skip branch target inside the copy\n");
			goto done;
		}
		for (int w = 0; w < 2; w++) {
			for (uint64_t p = code_lo[0]; p < code_hi[0]; p += PAGE)
				memset((void *)p, 0xcc, PAGE);
			if (!overlap || w == 0)
				memcpy((void *)from, orig, no);
			if (!overlap || w == 1)
				memcpy((void *)to, rel, nr);
			run(w, w == 0 ? from : to, seed, tlo, mt != 0);
		}
		{
			struct state *a = &res[0], *b = &res[1];
			if (a->sig != SIGTRAP || b->sig != SIGTRAP) {
				/* A fault at the instruction itself: the copy reports its own RIP and may be
				 * part-way through its sequence; the signal and address must agree. */
				uint64_t ra = a->g[REG_RIP], rb = b->g[REG_RIP];
				int at_insn = ra == from && rb >= to && rb < to + nr;
				/* Both still looping at the 50 ms alarm: the RIP is wherever the loop was. */
				if (a->sig == SIGALRM && b->sig == SIGALRM) {
					printf("fault\n");
					goto done;
				}
				if (a->sig == b->sig && (ra == rb || at_insn) &&
				    (a->sig == SIGALRM || a->addr == b->addr || a->sig == SIGILL || a->sig == SIGFPE)) {
					printf(ra == rb ? "fault-same\n" : "fault\n");
				} else {
					printf("mismatch signal %d at %#llx addr %#llx vs signal %d at %#llx addr %#llx\n",
					       a->sig, (unsigned long long)ra, (unsigned long long)a->addr, b->sig,
					       (unsigned long long)rb, (unsigned long long)b->addr);
				}
				goto done;
			}
			static const int cmp[] = {REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15,
						  REG_RDI, REG_RSI, REG_RBP, REG_RBX, REG_RDX, REG_RAX, REG_RCX, REG_RSP,
						  REG_RIP, REG_EFL};
			for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
				uint64_t x = a->g[cmp[i]], y = b->g[cmp[i]];
				if (cmp[i] == REG_EFL) {
					x &= 0xcd5;
					y &= 0xcd5;
				}
				if (x != y) {
					printf("mismatch %s %#llx vs %#llx\n", gname(cmp[i]), (unsigned long long)x,
					       (unsigned long long)y);
					goto done;
				}
			}
			if (memcmp(a->xmm, b->xmm, sizeof a->xmm) || a->mxcsr != b->mxcsr) {
				printf("mismatch xmm/mxcsr\n");
				goto done;
			}
			/* Stack memory below RSP is dead (kernel code keeps no red zone, and the copy
			 * may save a scratch register there): compare from the lower of the initial and
			 * the final RSP up. */
			uint64_t lo = init.g[REG_RSP] < (uint64_t)a->g[REG_RSP] ? init.g[REG_RSP] : (uint64_t)a->g[REG_RSP];
			size_t skip = lo > STACK_BASE ? lo - STACK_BASE : 0;
			if (skip > sizeof a->stack)
				skip = sizeof a->stack;
			if (memcmp(a->stack + skip, b->stack + skip, sizeof a->stack - skip)) {
				printf("mismatch stack memory\n");
				goto done;
			}
			if (memcmp(a->data, b->data, sizeof a->data)) {
				printf("mismatch data memory\n");
				goto done;
			}
			for (uint64_t p = 0; mt && p < 3 * PAGE; p += PAGE) {
				if (!is_code(tlo + p) && memcmp(a->target + p, b->target + p, PAGE)) {
					printf("mismatch memory around the RIP-relative target\n");
					goto done;
				}
			}
			printf("ok\n");
		}
	done:
		for (int i = fixed; i < npages; i++)
			munmap((void *)page_addr[i], PAGE);
		npages = fixed;
	}
}
