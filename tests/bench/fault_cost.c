/*
 * fault_cost: what a page fault on a module's code costs on this machine,
 * the part of a login's cost that grows with the module's size rather than
 * with its work.
 *
 * Maps FILE (say, the built module) as ld.so maps its code, touches N of its
 * 64-KiB windows (one read fault each: the kernel maps up to 16 cached
 * pages around the faulting one, "fault-around") and unmaps it, 2,000 times
 * for each N; then the same with the first 64, 128, ... KiB populated at
 * once (MADV_POPULATE_READ), to tell the cost per fault from the cost per
 * page mapped.
 *
 *   cc -O2 -o /tmp/fault_cost tests/bench/fault_cost.c
 *   /tmp/fault_cost target/release/libpam_sshidle.so
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define RUNS 2000
#define WINDOW 65536UL

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Mean and minimum of RUNS map + touch + unmap cycles. */
static void measure(int fd, size_t len, size_t windows, size_t populate)
{
	double sum = 0, best = 1e18;
	for (int run = 0; run < RUNS; run++) {
		double start = now_us();
		volatile char *p = mmap(NULL, len, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			perror("mmap");
			return;
		}
		if (populate && madvise((void *)p, populate, MADV_POPULATE_READ))
			perror("madvise");
		for (size_t i = 0; i < windows; i++)
			(void)p[i * WINDOW];
		munmap((void *)p, len);
		double took = now_us() - start;
		sum += took;
		if (took < best)
			best = took;
	}
	if (populate)
		printf("%3zu KiB populated, then touched:   mean %6.2f us  min %6.2f us\n", populate / 1024, sum / RUNS, best);
	else
		printf("%3zu windows touched (read faults): mean %6.2f us  min %6.2f us\n", windows, sum / RUNS, best);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fault_cost FILE\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	off_t size = fd < 0 ? -1 : lseek(fd, 0, SEEK_END);
	if (size < (off_t)(6 * WINDOW)) {
		fprintf(stderr, "fault_cost: %s: need a readable file of at least 384 KiB\n", argv[1]);
		return 1;
	}
	size_t len = (size_t)size & ~4095UL;
	for (size_t windows = 0; windows <= 6; windows += 2)
		measure(fd, len, windows, 0);
	for (size_t windows = 1; windows <= 5; windows += 2)
		measure(fd, len, windows, windows * WINDOW);
	return 0;
}
