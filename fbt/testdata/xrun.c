// xrun: the execution half of fbt's differential test (fbt/exec_test.go builds it with gcc and
// drives it; it is not part of the kernel).
//
// For each case read from stdin it maps the original instruction at `from` and the code under
// test at `to` (every other byte of those pages is INT3), the pages around the RIP-relative
// target, the branch target's page (INT3s), a stack and a data area (target window, stack and
// data not executable), and then runs twice from
// identical states: all 16 GPRs, RFLAGS, and the whole extended state the CPU and the kernel's
// signal frame carry (x87, MXCSR, XMM, YMM, and where present the AVX-512 opmask k0-k7,
// ZMM0-15's upper halves and ZMM16-31). A run starts from a SIGTRAP whose handler writes that
// state into the signal frame, and ends at the first INT3, fault, or the CPU-time alarm, whose
// handler captures the frame.
//
// The code under test is either
//   - a boosted copy (mode 0, fbt.Relocate): it runs on its own; or
//   - a single step (mode 1, fbt.PlanStep): the run starts at `to` with TF set and the scratch
//     register loaded; the handler of the step's SIGTRAP does what the kernel's #DB handler
//     will: restores the scratch register, replaces a call's pushed return address, moves RIP
//     through the resume table the Go side computed with Step.Resume, and clears TF (or leaves
//     it set when Resume says the instruction is not finished: a REP string iteration).
//
// Every end is compared in full, the fault path included. When the copy faults inside itself
// at one of the fault points the Go side listed (fbt.Copy.Faults; for a step, the instruction
// itself), the harness first undoes the copy's own work exactly as a kernel fault handler must
// (restore the saved scratch register from the stack or the handler, pop what the copy pushed,
// RIP = from), then compares GPRs, RIP, RFLAGS, signal, fault address, trap number, error code,
// the extended state and memory. A fault anywhere else in the copy is a mismatch. Both runs
// still looping at the alarm is reported as "loop": the state at an arbitrary moment of a loop
// cannot be compared.
//
// Input per case (little endian):
//   u64 from, to, memTarget (0: none), branchTarget (0: none; its page is INT3s), seed
//   u32 nOrig, nCode, mode (bit 0: a step; bit 8: the instruction writes the stack itself, so
//   some runs start with RSP at the stack's bottom), body (offset in the code of the displaced
//   instruction's work),
//   u32 nFault, then nFault × {u32 off, i32 saved GPR (-1 none), u32 pushed bytes}
//   steps only: i32 scratch GPR (-1 none), u64 scratch value, u32 call (0/1), u64 retFrom,
//                u64 retTo, u32 nResume, then nResume × {u64 rip, u64 resume, u32 again}
//   orig bytes, code bytes
// Output per case, one line: "ok", "fault" (both faulted alike, state equal), "loop",
// "skip <why>" or "mismatch <what>".
#define _GNU_SOURCE
#include <cpuid.h>
#include <setjmp.h>
#include <signal.h>
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
#define MAXFAULT 8
#define MAXRESUME 8
#define TF 0x100ULL
#define MODE_STEP 1
#define MODE_STACK_BOTTOM 0x100 /* flag: the instruction writes the stack itself */
/* RFLAGS bits an instruction or the harness can change in user mode and that must agree:
 * CF PF AF ZF SF TF DF OF AC ID. RF is the kernel's business on fault delivery. */
#define FLAGS_CMP 0x240dd5ULL

/* The XSAVE layout (SDM Vol. 1 13.4): a 512-byte legacy area, the 64-byte header at 512 whose
 * first quadword is XSTATE_BV, then components at the offsets CPUID 0xD reports. Linux's signal
 * frame holds it in the standard (uncompacted) form, and marks it with FP_XSTATE_MAGIC1 in the
 * legacy area's software-reserved bytes (arch/x86/include/uapi/asm/sigcontext.h). */
#define XSAVE_HDR 512
#define FP_XSTATE_MAGIC1 0x46505853U
#define SW_BYTES 464
enum { X_YMM = 2, X_OPMASK = 5, X_ZMM_HI256 = 6, X_HI16_ZMM = 7, X_PKRU = 9, NCOMP = 10 };
/* Components the harness sets at random and compares; PKRU is compared, never set. */
static const int comp_set[] = {X_YMM, X_OPMASK, X_ZMM_HI256, X_HI16_ZMM};
static uint32_t comp_off[NCOMP], comp_size[NCOMP];
static uint64_t xcr0;
#define XMAX 4096 /* legacy + header + the components above fit well below this */

struct sw_bytes {
	uint32_t magic1, extended_size;
	uint64_t xfeatures;
	uint32_t xstate_size, padding[7];
};

struct state {
	greg_t g[NGREG];
	uint8_t x[XMAX]; /* legacy area and the compared components, in XSAVE layout */
	int sig;
	uint64_t addr; /* si_addr */
	uint8_t stack[4 * PAGE], data[4 * PAGE], target[3 * PAGE], land[PAGE];
};

/* One case, as read. */
static struct {
	uint64_t from, to, mt, bt, seed;
	uint32_t no, nc, mode, body, nfault;
	struct { uint32_t off; int32_t saved; uint32_t pushed; } fault[MAXFAULT];
	int32_t scratch;
	uint64_t scratch_value, ret_from, ret_to;
	uint32_t call, nres;
	struct { uint64_t rip, resume; uint32_t again; } res[MAXRESUME];
	uint8_t orig[64], code[256];
} c;

static struct state init, res[2];
static sigjmp_buf back;
static volatile int phase; /* 0: start a run, 1: running, 2: running, step pending, 3: probe, 4: harness */
static int cur;
static uint64_t page_addr[MAXPAGES];
static int npages;
static uint64_t code_lo[2], code_hi[2]; /* page ranges holding the original and the copy */
static int have_xsave;                  /* the signal frame carries an XSAVE image */

static int is_code(uint64_t p) {
	for (int i = 0; i < 2; i++)
		if (p >= code_lo[i] && p < code_hi[i])
			return 1;
	return 0;
}

/* The code under test may set RFLAGS.AC (popfw, say); the kernel keeps it for the handler,
 * and with CR0.AM set the harness's own unaligned copies would then fault forever. */
static inline void clear_ac(void) { __asm__ volatile("pushfq; andq $~0x40000, (%%rsp); popfq" ::: "memory", "cc"); }

static struct sw_bytes *swb(void *fp) { return (struct sw_bytes *)((uint8_t *)fp + SW_BYTES); }

/* Write the initial extended state into the signal frame's FP area. */
static void put_fp(void *fp) {
	memcpy(fp, init.x, 512 - 48); /* legacy area, not the software-reserved bytes */
	if (!have_xsave)
		return;
	uint64_t *bv = (uint64_t *)((uint8_t *)fp + XSAVE_HDR);
	for (size_t i = 0; i < sizeof comp_set / sizeof comp_set[0]; i++) {
		int k = comp_set[i];
		if (!(swb(fp)->xfeatures & (1ULL << k)))
			continue;
		memcpy((uint8_t *)fp + comp_off[k], init.x + comp_off[k], comp_size[k]);
		*bv |= 1ULL << k;
	}
}

/* Read the frame's extended state; a component whose XSTATE_BV bit is clear is in its initial
 * configuration (all zero for these), whatever the bytes in the frame say. */
static void get_fp(void *fp, uint8_t *x) {
	memcpy(x, fp, 512);
	memset(x + SW_BYTES, 0, 48);
	if (!have_xsave)
		return;
	uint64_t bv = *(uint64_t *)((uint8_t *)fp + XSAVE_HDR);
	for (int k = 2; k < NCOMP; k++) {
		if (!comp_size[k] || !(swb(fp)->xfeatures & (1ULL << k)))
			continue;
		if (bv & (1ULL << k))
			memcpy(x + comp_off[k], (uint8_t *)fp + comp_off[k], comp_size[k]);
		else
			memset(x + comp_off[k], 0, comp_size[k]);
	}
}

static int gpr_index(int n) {
	/* GPR number in encoding order → gregs index */
	static const int m[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
				  REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15};
	return m[n & 15];
}

/* A run's CPU-time budget: at its end the run is taken to loop. */
static const struct itimerval budget = {{0, 0}, {0, 100000}};

/* The kernel's #DB work for a single step (mode 1). Returns 1 when the step is finished. */
static int finish_step(greg_t *g) {
	uint64_t rip = g[REG_RIP];
	for (uint32_t i = 0; i < c.nres; i++) {
		if (c.res[i].rip != rip)
			continue;
		if (c.res[i].again) {
			/* Not finished (a REP iteration): keep stepping at the same RIP. Each iteration
			 * is progress, and costs a signal: the budget starts again, or a REP over the
			 * 16 KiB data area (16,384 signals) looks like a loop wherever a signal costs over
			 * 6 us, as CI's machine saw (rep stosb: the original faulted at the data area's
			 * end, the step ran out of time). Iterations are bounded: every area the
			 * registers point into is a few pages between unmapped ones. */
			setitimer(ITIMER_PROF, &budget, NULL);
			return 0;
		}
		rip = c.res[i].resume;
		break;
	}
	if (c.scratch >= 0)
		g[gpr_index(c.scratch)] = init.g[gpr_index(c.scratch)];
	if (c.call && *(uint64_t *)g[REG_RSP] == c.ret_from)
		*(uint64_t *)g[REG_RSP] = c.ret_to;
	g[REG_RIP] = rip;
	g[REG_EFL] &= ~TF;
	return 1;
}

static void handler(int sig, siginfo_t *si, void *uv) {
	clear_ac();
	ucontext_t *uc = uv;
	greg_t *g = uc->uc_mcontext.gregs;
	if (phase == 3) { /* the probe trap at start-up */
		have_xsave = swb(uc->uc_mcontext.fpregs)->magic1 == FP_XSTATE_MAGIC1;
		phase = 0;
		return;
	}
	if (phase == 0 && sig == SIGTRAP) {
		/* GPRs, RIP and RFLAGS; CS/GS/FS and the rest stay the kernel's. */
		for (int i = REG_R8; i <= REG_EFL; i++)
			g[i] = init.g[i];
		put_fp(uc->uc_mcontext.fpregs);
		phase = 1;
		if (cur == 1 && (c.mode & MODE_STEP)) {
			g[REG_EFL] |= TF;
			if (c.scratch >= 0)
				g[gpr_index(c.scratch)] = c.scratch_value;
			phase = 2;
		}
		return;
	}
	if (phase == 4 || (phase == 0 && sig != SIGTRAP)) {
		/* The harness's own code faulted: say so and stop, never treat it as a run's end. */
		static const char msg[] = "xrun: fault in the harness itself\n";
		write(2, msg, sizeof msg - 1);
		_exit(3);
	}
	if (phase == 2 && sig == SIGTRAP && si->si_code == TRAP_TRACE) {
		if (finish_step(g))
			phase = 1;
		return;
	}
	struct state *r = &res[cur];
	memcpy(r->g, g, sizeof r->g);
	get_fp(uc->uc_mcontext.fpregs, r->x);
	r->sig = sig;
	r->addr = (uint64_t)si->si_addr;
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

/* map the pages covering [lo, hi) (filled with fill), executable or not; 0 if an address is
 * taken. The stack, data and target windows are not executable: a branch into them ends as an
 * instruction-fetch fault at the same RIP in both runs, instead of running random bytes that
 * may read the dead stack below RSP (where a copy keeps its temporaries). */
static int map_range(uint64_t lo, uint64_t hi, int fill, int exec) {
	for (uint64_t p = lo & ~(PAGE - 1); p < hi; p += PAGE) {
		if (mapped(p))
			continue;
		if (npages == MAXPAGES)
			return 0;
		void *m = mmap((void *)p, PAGE, PROT_READ | PROT_WRITE | (exec ? PROT_EXEC : 0),
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

/* fill the target window, except pages that hold code: random quadwords and pointers into the
 * landing page, so that a jmp/call/push through [rip] sometimes loads a canonical target and
 * arrives (random data alone is almost never canonical: the branch would fault on itself). */
static void fill_target(uint64_t tlo, uint64_t seed) {
	rng = seed ^ 0x5555;
	for (uint64_t p = tlo; p < tlo + 3 * PAGE; p += 8) {
		uint64_t v = next();
		if (v & 1)
			v = LAND_BASE + 16 * (v % 200);
		if (!is_code(p & ~(PAGE - 1)))
			*(uint64_t *)p = v;
	}
	/* The exact target is rarely 8-aligned: in every other case put a pointer right there. */
	if ((seed & 1) && !is_code(c.mt & ~(PAGE - 1)) && !is_code((c.mt + 7) & ~(PAGE - 1)))
		*(uint64_t *)c.mt = LAND_BASE + 16 * (next() % 200);
}

static void randomize(uint8_t *p, size_t n) {
	for (size_t i = 0; i < n; i++)
		p[i] = next();
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
	/* An instruction that writes the stack itself (push, call) sometimes starts with RSP at the
	 * bottom of the mapped stack, so that its write faults and the copy's stack fault points
	 * are exercised. (Others keep room below RSP: a copy may save a scratch register there, as
	 * kernel stacks always allow.) */
	if ((c.mode & MODE_STACK_BOTTOM) && next() % 4 == 0)
		init.g[REG_RSP] = STACK_BASE;
	init.g[REG_RIP] = rip;
	/* CF PF AF ZF SF OF DF at random; IF and bit 1 set. */
	init.g[REG_EFL] = 0x202 | (next() & 0xcd5);
	/* Legacy area (FXSAVE layout): FCW 0x37f (all exceptions masked), FSW 0, a random
	 * abridged tag word and ST0-7, FOP/FIP/FDP 0, MXCSR 0x1f80, random XMM0-15. */
	uint8_t *x = init.x;
	*(uint16_t *)(x + 0) = 0x37f;
	x[4] = next();
	*(uint32_t *)(x + 24) = 0x1f80;
	*(uint32_t *)(x + 28) = 0xffff; /* MXCSR_MASK: ignored on restore */
	for (int i = 0; i < 8; i++)
		randomize(x + 32 + 16 * i, 10);
	randomize(x + 160, 256);
	for (size_t i = 0; i < sizeof comp_set / sizeof comp_set[0]; i++)
		if (comp_size[comp_set[i]])
			randomize(x + comp_off[comp_set[i]], comp_size[comp_set[i]]);
}

static void run(int which, uint64_t rip, uint64_t seed, uint64_t tlo, int have_target) {
	/* CPU time, not wall time: a loaded machine must not turn a slow case into a "loop". */
	struct itimerval t = budget, off = {{0, 0}, {0, 0}};
	fill_fixed(seed);
	if (have_target)
		fill_target(tlo, seed);
	make_init(seed, rip);
	cur = which;
	memset(&res[which], 0, sizeof res[which]);
	setitimer(ITIMER_PROF, &t, NULL);
	phase = 0;
	if (!sigsetjmp(back, 1))
		__asm__ volatile("int3");
	phase = 4;
	clear_ac();
	setitimer(ITIMER_PROF, &off, NULL);
	struct state *r = &res[which];
	memcpy(r->stack, (void *)STACK_BASE, sizeof r->stack);
	memcpy(r->data, (void *)DATA_BASE, sizeof r->data);
	memcpy(r->land, (void *)LAND_BASE, sizeof r->land);
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

static void on_alarm(int sig) {
	(void)sig;
	static const char msg[] = "xrun: a case ran 10 s of wall time (blocked in a system call?)\n";
	write(2, msg, sizeof msg - 1);
	_exit(3);
}

/* A fault inside the copy at one of its fault points: undo the copy's own work the way a
 * kernel fault handler must, so that the state is the one the original instruction faulted
 * with. Returns 0 (and says why) when the fault is at no fault point. */
static int unwind(struct state *b, char *why, size_t n) {
	uint64_t rip = b->g[REG_RIP];
	if (b->sig == SIGTRAP || rip < c.to || rip >= c.to + c.nc)
		return 1; /* an INT3 landing (RIP past it), or a fault outside the copy: compared as it is */
	uint64_t off = rip - c.to;
	for (uint32_t i = 0; i < c.nfault; i++) {
		if (c.fault[i].off != off)
			continue;
		uint64_t rsp = b->g[REG_RSP];
		if (c.fault[i].saved >= 0) {
			if (rsp < STACK_BASE || rsp + 8 > STACK_BASE + 4 * PAGE) {
				snprintf(why, n, "copy faulted at +%llu with RSP %#llx off the stack", (unsigned long long)off,
					 (unsigned long long)rsp);
				return 0;
			}
			b->g[gpr_index(c.fault[i].saved)] = *(uint64_t *)(b->stack + (rsp - STACK_BASE));
		}
		if ((c.mode & MODE_STEP) && c.scratch >= 0)
			b->g[gpr_index(c.scratch)] = init.g[gpr_index(c.scratch)];
		b->g[REG_RSP] = rsp + c.fault[i].pushed;
		b->g[REG_EFL] &= ~TF;
		/* SIGILL, SIGFPE and SIGTRAP report the instruction's address. */
		if (b->addr == rip)
			b->addr = c.from;
		b->g[REG_RIP] = c.from;
		return 1;
	}
	snprintf(why, n, "copy faulted (signal %d, addr %#llx) at +%llu, which is no fault point", b->sig,
		 (unsigned long long)b->addr, (unsigned long long)off);
	return 0;
}

/* Compare the two end states in full; returns NULL when equal. */
static const char *compare(struct state *a, struct state *b, char *why, size_t n) {
	if (a->sig != b->sig || a->addr != b->addr) {
		snprintf(why, n, "signal %d addr %#llx vs signal %d addr %#llx", a->sig, (unsigned long long)a->addr, b->sig,
			 (unsigned long long)b->addr);
		return why;
	}
	static const int cmp[] = {REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15, REG_RDI, REG_RSI,
				  REG_RBP, REG_RBX, REG_RDX, REG_RAX, REG_RCX, REG_RSP, REG_RIP, REG_EFL, REG_ERR, REG_TRAPNO};
	for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
		uint64_t x = a->g[cmp[i]], y = b->g[cmp[i]];
		if (cmp[i] == REG_EFL) {
			x &= FLAGS_CMP;
			y &= FLAGS_CMP;
		}
		if (x != y) {
			snprintf(why, n, "%s %#llx vs %#llx", gname(cmp[i]), (unsigned long long)x, (unsigned long long)y);
			return why;
		}
	}
	/* x87: FCW FSW FTW FOP, FIP (the last x87 instruction: the original's address maps to the
	 * displaced instruction's place in the copy), FDP, MXCSR; ST0-7 (80 bits each); XMM0-15. */
	uint8_t *x = a->x, *y = b->x;
	uint64_t fa = *(uint64_t *)(x + 8), fb = *(uint64_t *)(y + 8);
	if (memcmp(x, y, 8) || (fa != fb && !(fa == c.from && fb == c.to + c.body)) || memcmp(x + 16, y + 16, 12)) {
		snprintf(why, n, "x87 control/status (fip %#llx vs %#llx)", (unsigned long long)fa, (unsigned long long)fb);
		return why;
	}
	for (int i = 0; i < 8; i++)
		if (memcmp(x + 32 + 16 * i, y + 32 + 16 * i, 10)) {
			snprintf(why, n, "st%d", i);
			return why;
		}
	for (int i = 0; i < 16; i++)
		if (memcmp(x + 160 + 16 * i, y + 160 + 16 * i, 16)) {
			snprintf(why, n, "xmm%d", i);
			return why;
		}
	static const char *cname[NCOMP] = {[X_YMM] = "ymm upper halves", [X_OPMASK] = "opmask k0-k7",
					   [X_ZMM_HI256] = "zmm0-15 upper halves", [X_HI16_ZMM] = "zmm16-31",
					   [X_PKRU] = "pkru"};
	for (int k = 2; k < NCOMP; k++)
		if (cname[k] && comp_size[k] && memcmp(x + comp_off[k], y + comp_off[k], comp_size[k])) {
			snprintf(why, n, "%s", cname[k]);
			return why;
		}
	/* Stack memory below RSP is dead (kernel code keeps no red zone, and the copy may save a
	 * scratch register there): compare from the lower of the initial and final RSP up. */
	uint64_t lo = init.g[REG_RSP] < (uint64_t)a->g[REG_RSP] ? init.g[REG_RSP] : (uint64_t)a->g[REG_RSP];
	size_t skip = lo > STACK_BASE ? lo - STACK_BASE : 0;
	if (skip > sizeof a->stack)
		skip = sizeof a->stack;
	if (memcmp(a->stack + skip, b->stack + skip, sizeof a->stack - skip))
		return "stack memory";
	if (memcmp(a->data, b->data, sizeof a->data))
		return "data memory";
	if (memcmp(a->land, b->land, sizeof a->land))
		return "landing page memory";
	uint64_t tlo = (c.mt & ~(PAGE - 1)) - PAGE;
	for (uint64_t p = 0; c.mt && p < 3 * PAGE; p += PAGE)
		if (!is_code(tlo + p) && memcmp(a->target + p, b->target + p, PAGE))
			return "memory around the RIP-relative target";
	return NULL;
}

/* Offsets and sizes of the XSAVE components from CPUID 0xD (SDM Vol. 1 13.2), when the OS
 * enabled XSAVE; XCR0 says which components are live. */
static void probe_xsave(void) {
	unsigned a, b, cx, d;
	if (!__get_cpuid(1, &a, &b, &cx, &d) || !(cx & (1u << 27))) /* OSXSAVE */
		return;
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	xcr0 = (uint64_t)hi << 32 | lo;
	for (int k = 2; k < NCOMP; k++) {
		if (!(xcr0 & (1ULL << k)))
			continue;
		__cpuid_count(0xd, k, a, b, cx, d);
		if (b + a > XMAX) {
			fprintf(stderr, "xrun: XSAVE component %d at %u+%u is past the harness's %d bytes\n", k, b, a, XMAX);
			exit(2);
		}
		comp_off[k] = b;
		comp_size[k] = a;
	}
}

int main(void) {
	static char altstack[1 << 16];
	stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
	sigaltstack(&ss, NULL);
	struct sigaction sa = {.sa_sigaction = handler, .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER};
	struct sigaction backstop = {.sa_handler = on_alarm, .sa_flags = SA_ONSTACK}; /* RSP may be unusable */
	sigaction(SIGALRM, &backstop, NULL);
	int sigs[] = {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGPROF};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	probe_xsave();
	if (!map_range(STACK_BASE, STACK_BASE + 4 * PAGE, 0, 0) || !map_range(DATA_BASE, DATA_BASE + 4 * PAGE, 0, 0) ||
	    !map_range(LAND_BASE, LAND_BASE + PAGE, 0xcc, 1)) {
		fprintf(stderr, "xrun: cannot map the fixed areas\n");
		return 2;
	}
	/* Learn whether the signal frame carries an XSAVE image, and say first what the harness
	 * sets and compares (the Go side prints it). */
	phase = 3;
	__asm__ volatile("int3");
	phase = 4;
	printf("xstate xcr0=%#llx frame=%s", (unsigned long long)xcr0, have_xsave ? "xsave" : "fxsave");
	for (size_t i = 0; i < sizeof comp_set / sizeof comp_set[0]; i++)
		if (have_xsave && comp_size[comp_set[i]])
			printf(" %d:%u@%u", comp_set[i], comp_size[comp_set[i]], comp_off[comp_set[i]]);
	printf("\n");
	int fixed = npages;
	for (;;) {
		size_t got = fread(&c.from, 1, 8, stdin);
		if (got == 0 && feof(stdin))
			return 0; /* a clean end between cases */
		if (got != 8) {
			fprintf(stderr, "xrun: bad input: a case header cut short\n");
			return 2;
		}
		alarm(10); /* wall-clock backstop: CPU-time alarms miss a case that blocks */
		int ok = readn(&c.to, 8) && readn(&c.mt, 8) && readn(&c.bt, 8) && readn(&c.seed, 8) && readn(&c.no, 4) &&
			 readn(&c.nc, 4) && readn(&c.mode, 4) && readn(&c.body, 4) && readn(&c.nfault, 4) &&
			 c.nfault <= MAXFAULT;
		for (uint32_t i = 0; ok && i < c.nfault; i++)
			ok = readn(&c.fault[i].off, 4) && readn(&c.fault[i].saved, 4) && readn(&c.fault[i].pushed, 4);
		c.scratch = -1;
		c.nres = 0;
		c.call = 0;
		if (ok && (c.mode & MODE_STEP)) {
			ok = readn(&c.scratch, 4) && readn(&c.scratch_value, 8) && readn(&c.call, 4) && readn(&c.ret_from, 8) &&
			     readn(&c.ret_to, 8) && readn(&c.nres, 4) && c.nres <= MAXRESUME;
			for (uint32_t i = 0; ok && i < c.nres; i++)
				ok = readn(&c.res[i].rip, 8) && readn(&c.res[i].resume, 8) && readn(&c.res[i].again, 4);
		}
		for (uint32_t i = 0; ok && i < c.nfault; i++)
			ok = c.fault[i].saved >= -1 && c.fault[i].saved < 16 && c.fault[i].off < sizeof c.code;
		if (ok && (c.mode & MODE_STEP))
			ok = c.scratch >= -1 && c.scratch < 16;
		if (!ok || (c.mode & ~(MODE_STEP | MODE_STACK_BOTTOM)) || c.no > sizeof c.orig || c.nc > sizeof c.code || !readn(c.orig, c.no) ||
		    !readn(c.code, c.nc)) {
			fprintf(stderr, "xrun: bad input\n");
			return 2;
		}
		npages = fixed;
		uint64_t from = c.from, to = c.to, mt = c.mt, bt = c.bt;
		if (from > (uint64_t)-PAGE * 2 || to > (uint64_t)-PAGE * 2 || mt > (uint64_t)-PAGE * 4 || bt > (uint64_t)-PAGE) {
			printf("skip address range wraps at 2^64\n");
			continue;
		}
		uint32_t no = c.no, nr = c.nc;
		uint64_t tlo = (mt & ~(PAGE - 1)) - PAGE;
		code_lo[0] = from & ~(PAGE - 1);
		code_hi[0] = (from + no + 32 + PAGE - 1) & ~(PAGE - 1);
		code_lo[1] = to & ~(PAGE - 1);
		code_hi[1] = (to + nr + 32 + PAGE - 1) & ~(PAGE - 1);
		ok = map_range(from, from + no + 32, 0xcc, 1) && map_range(to, to + nr + 32, 0xcc, 1);
		if (ok && mt)
			ok = map_range(tlo, tlo + 3 * PAGE, 0, 0);
		if (ok && bt)
			ok = map_range(bt, bt + 1, 0xcc, 1);
		if (!ok) {
			printf("skip address taken\n");
			goto done;
		}
		if (mt && mt < 0x10000 + PAGE) {
			/* An [EIP+d] target wraps at 4 GiB and can land in the low 64 KiB, which Linux
			 * does not map (vm.mmap_min_addr). */
			printf("skip target in the unmappable low 64 KiB\n");
			goto done;
		}
		int overlap = !(to + nr <= from || from + no <= to);
		if (mt && ((mt + 64 > from && mt < from + no) || (mt + 64 > to && mt < to + nr))) {
			printf("skip target overlaps the code\n");
			goto done;
		}
		if (bt && bt >= to && bt < to + nr + 2) {
			/* The original would branch into the copy itself (or onto a step's marker): the
			 * two runs execute different bytes there by construction. */
			printf("skip branch target inside the copy\n");
			goto done;
		}
		for (int w = 0; w < 2; w++) {
			for (uint64_t p = code_lo[0]; p < code_hi[0]; p += PAGE)
				memset((void *)p, 0xcc, PAGE);
			if (!overlap || w == 0)
				memcpy((void *)from, c.orig, no);
			if (!overlap || w == 1)
				memcpy((void *)to, c.code, nr);
			run(w, w == 0 ? from : to, c.seed, tlo, mt != 0);
		}
		{
			struct state *a = &res[0], *b = &res[1];
			char why[160];
			if (a->sig == SIGPROF && b->sig == SIGPROF) {
				/* The state of a loop at an arbitrary moment cannot be compared, but where it
				 * loops can: the copy must loop where the original does (its displaced
				 * instruction, a long REP at the body, maps back to from). */
				uint64_t ra = a->g[REG_RIP], rb = b->g[REG_RIP];
				if (rb == c.to + c.body)
					rb = c.from;
				if (ra == rb)
					printf("loop\n");
				else
					printf("mismatch looping at %#llx in the copy, the original at %#llx\n",
					       (unsigned long long)rb, (unsigned long long)ra);
				goto done;
			}
			int landed = a->sig == SIGTRAP && b->sig == SIGTRAP;
			if (!unwind(b, why, sizeof why)) {
				printf("mismatch %s\n", why);
				goto done;
			}
			const char *m = compare(a, b, why, sizeof why);
			if (m)
				printf("mismatch %s\n", m);
			else
				printf(landed ? "ok\n" : "fault\n");
		}
	done:
		alarm(0);
		for (int i = fixed; i < npages; i++)
			munmap((void *)page_addr[i], PAGE);
		npages = fixed;
	}
}
