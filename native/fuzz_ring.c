/*
 * libFuzzer harness for the ring loop (not part of the module build).
 *
 *   clang-14 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -Inative native/fuzz_ring.c native/ring.c -o fuzz_ring && ./fuzz_ring -max_total_time=60
 *
 * Without clang, -DRING_FUZZ_MAIN gives it a small driver of its own (random mutations of
 * seed files): tests/test_ring_audit.py builds that with gcc and ASan/UBSan.
 *
 * The input is the whole shared mapping as a hostile kernel could leave it: the mailbox
 * fields, the command ring and the data area come from the fuzzer, the mapping is an exact
 * malloc (so ASan sees one byte past it), and between process() and the completions of
 * punted commands some bytes are rewritten again, as a concurrent kernel could. The data
 * "disk" is memory with its own bounds checks, so a transfer outside the device aborts.
 *
 * Input layout (big-endian; missing bytes read as 0): sel u8 (bit 0: allow an unaligned ring
 * size, bit 1: cmdr_off byte follows, bit 2: cmd_tail follows, bit 3: no data-in answers,
 * bit 4: the backend has submit/reap, bit 5: and refuses every submit, bit 6: write-through,
 * bit 7: a MAXIMUM TRANSFER LENGTH byte follows the verdict),
 * cmdr_size-64 u16, data_size u16, [cmdr_off-128 u8], the ring and data area bytes, flags
 * u8, [cmd_tail u16], cmd_head u16, device blocks u16, verdict u8 (bit 3: nexus mode),
 * [max transfer u8], [nexus mode: slot count u8, then per slot handle u16 + verdict u8],
 * then per punt round:
 * rewrites (count u8, then offset u16 + byte each), per punt data-in length u16, sense
 * length u8, status u8.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ring.h"

#define DISK_SIZE (1u << 16)

static uint8_t disk[DISK_SIZE];

static ssize_t xfer(const struct iovec *iov, int cnt, uint64_t off, int write)
{
	ssize_t done = 0;

	if (cnt <= 0 || cnt > 64)
		abort(); /* the loop hands out at most IOV_CHUNK iovecs */
	for (int i = 0; i < cnt; i++) {
		if (off > DISK_SIZE || iov[i].iov_len > DISK_SIZE - off)
			abort(); /* the loop's LBA check must have refused this */
		if (write)
			memcpy(disk + off, iov[i].iov_base, iov[i].iov_len);
		else
			memcpy(iov[i].iov_base, disk + off, iov[i].iov_len);
		off += iov[i].iov_len;
		done += (ssize_t)iov[i].iov_len;
	}
	return done;
}

static ssize_t mem_readv(void *b, const struct iovec *iov, int cnt, uint64_t off)
{
	(void)b;
	return xfer(iov, cnt, off, 0);
}

static ssize_t mem_writev(void *b, const struct iovec *iov, int cnt, uint64_t off)
{
	(void)b;
	return xfer(iov, cnt, off, 1);
}

static unsigned long flushes;

static int mem_flush(void *b)
{
	(void)b;
	flushes++;
	return 0;
}

static const struct ring_backend_ops mem_ops = { mem_readv, mem_writev, mem_flush };

/* The submit/reap path: the transfer runs at reap, from the array submit was given (ASan
 * sees a use after its lifetime), or submit refuses it. */
struct pending {
	const struct iovec *iov;
	int cnt, write;
	uint64_t off;
};

static int mem_submit(void *b, int write, const struct iovec *iov, int cnt, uint64_t off,
		      void **h)
{
	struct pending *p;

	if (b) /* a non-NULL context: the backend refuses every submit */
		return -EAGAIN;
	p = malloc(sizeof(*p));
	if (!p)
		abort();
	*p = (struct pending){ iov, cnt, write, off };
	*h = p;
	return 0;
}

static ssize_t mem_reap(void *b, void *h)
{
	struct pending *p = h;
	ssize_t n = xfer(p->iov, p->cnt, p->off, p->write);

	(void)b;
	free(p);
	return n;
}

static const struct ring_backend_ops mem_aio_ops = { mem_readv, mem_writev, mem_flush,
						     mem_submit, mem_reap };

struct input {
	const uint8_t *p;
	size_t left;
};

static uint32_t take(struct input *in, unsigned bytes)
{
	uint32_t v = 0;

	while (bytes--) {
		v = v << 8 | (in->left ? *in->p : 0);
		if (in->left) {
			in->p++;
			in->left--;
		}
	}
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int devnull = -1;
	struct input in = { data, size };
	struct ring_ctx ctx;
	uint32_t punts[RING_MAX_PUNTS];

	if (devnull < 0)
		devnull = open("/dev/null", O_WRONLY);
	uint32_t sel = take(&in, 1);
	uint32_t cmdr_size = (take(&in, 2) % 8192) + 64;
	uint32_t data_size = take(&in, 2) % 32768;
	if (!(sel & 1))
		cmdr_size &= ~7u; /* mostly valid sizes, sometimes odd ones */
	uint32_t cmdr_off = sel & 2 ? 128 + (take(&in, 1) & 0x3f) : 128;
	uint64_t map_size = (uint64_t)cmdr_off + cmdr_size + data_size;
	uint8_t *map = malloc(map_size);

	if (!map)
		return 0;
	memset(map, 0, map_size);
	/* the rest of the input: the ring, then the data area, then the mailbox's changeables */
	size_t body = in.left < map_size - 128 ? in.left : map_size - 128;
	memcpy(map + 128, in.p, body);
	in.p += body;
	in.left -= body;
	struct tcmu_mailbox *mb = (struct tcmu_mailbox *)map;
	mb->version = TCMU_MAILBOX_VERSION;
	mb->flags = (uint16_t)take(&in, 1);
	mb->cmdr_off = cmdr_off;
	mb->cmdr_size = cmdr_size;
	mb->cmd_tail = sel & 4 ? take(&in, 2) : 0;
	mb->cmd_head = take(&in, 2) % (cmdr_size + 16);

	uint64_t dev_size = (uint64_t)take(&in, 2) * 512 % (DISK_SIZE + 512);
	const struct ring_backend_ops *ops = sel & 0x10 ? &mem_aio_ops : &mem_ops;

	if (tcmu_ring_init(&ctx, map, map_size, devnull, ops, sel & 0x20 ? disk : NULL, dev_size,
			   512)) {
		free(map);
		return 0;
	}
	uint32_t vbyte = take(&in, 1);

	ctx.verdict = vbyte & 7;
	/* the device's Block Limits and Caching pages: over-long transfers are punted, and
	 * write-through flushes before GOOD */
	if (tcmu_ring_configure(&ctx, sel & 0x80 ? take(&in, 1) : 0, sel & 0x40))
		abort();
	unsigned long flushes_before = flushes;
	if (vbyte & 0x08) { /* per-handle verdicts; handles past the table are ignored */
		tcmu_ring_nexus_mode(&ctx, 1);
		for (uint32_t k = take(&in, 1) % 8; k; k--) {
			uint32_t h = take(&in, 2);

			tcmu_ring_publish_nexus(&ctx, h, take(&in, 1) & 7, 0);
		}
	}
	for (int round = 0; round < 8; round++) {
		int n = tcmu_ring_process(&ctx, punts, RING_MAX_PUNTS);

		if (n <= 0)
			break;
		/* a concurrent kernel: rewrite a few bytes of the ring before the completions */
		for (uint32_t k = take(&in, 1) % 4; k; k--) {
			uint32_t at = take(&in, 2) % cmdr_size;
			map[cmdr_off + at] = (uint8_t)take(&in, 1);
		}
		for (int i = 0; i < n; i++) {
			uint8_t cdb[272], sense[200];
			int64_t len = tcmu_ring_data_len(&ctx, punts[i]);

			tcmu_ring_cdb(&ctx, punts[i], cdb, sizeof(cdb));
			if (tcmu_ring_nexus(&ctx, punts[i]) < 0)
				abort(); /* a pending entry always has its handle (or 0) */
			if (len > (int64_t)data_size)
				abort(); /* the measured length is capped by the data area */
			if (len > 0) {
				uint8_t *buf = malloc((size_t)len);

				if (buf && tcmu_ring_gather(&ctx, punts[i], buf, (uint64_t)len) > len)
					abort();
				free(buf);
			}
			uint32_t dlen = take(&in, 2) % 9000, slen = take(&in, 1);
			uint8_t *reply = malloc(dlen + 1);

			if (!reply)
				abort();
			memset(reply, 0xa5, dlen + 1);
			memset(sense, 0x5a, sizeof(sense));
			slen %= sizeof(sense);
			if (tcmu_ring_complete(&ctx, punts[i], (uint8_t)take(&in, 1), sense, slen,
					       (sel & 8) ? NULL : reply, dlen) < 0)
				abort(); /* a pending entry can always be answered */
			if (tcmu_ring_nexus(&ctx, punts[i]) != RING_ERR_NOT_CMD)
				abort(); /* ... and then is no longer pending */
			free(reply);
			/* nothing of the request survives behind the sense written */
			const uint8_t *sb = map + punts[i] + 16;
			for (uint32_t k = slen < 18 ? 18 : slen; slen && k < TCMU_SENSE_BUFFERSIZE; k++)
				if (sb[k])
					abort();
		}
		if (tcmu_ring_commit(&ctx))
			abort(); /* every punt was completed */
	}
	if (flushes - flushes_before != ctx.stats.flushes)
		abort(); /* the loop counts every flush it makes, and makes none it does not count */
	free(map);
	return 0;
}

#ifdef RING_FUZZ_MAIN
/* fuzz_ring SEED_FILE... : ITERATIONS mutations of each seed (env RING_FUZZ_ITER, default
 * 20000), from a fixed xorshift stream (env RING_FUZZ_SEED), so a failure replays. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

/* Boundary values, and the opcodes the emulation answers (so that a mutated opcode byte
 * often names a real command): READ/WRITE, VERIFY and WRITE AND VERIFY (10/12/16),
 * ORWRITE, COMPARE AND WRITE, WRITE SAME (10/16), UNMAP, SERVICE ACTION IN(16) (GET LBA
 * STATUS), SYNCHRONIZE CACHE (10/16), MAINTENANCE IN (REPORT SUPPORTED OPERATION CODES),
 * PERSISTENT RESERVE IN/OUT, variable length. */
static const uint8_t interesting[] = {
	0,    0xff, 0x7f, 0x80, 8,    0x0a, 0x28, 0x2a, 0xa8, 0xaa, 0x88, 0x8a, 0x2f,
	0xaf, 0x8f, 0x2e, 0xae, 0x8e, 0x8b, 0x89, 0x41, 0x93, 0x42, 0x9e, 0x12, 0x35,
	0x91, 0xa3, 0x0c, 0x5e, 0x5f, 0x18, 0x20, 0x08, 0x02, 0x01, 0x10, 0xe0,
};

int main(int argc, char **argv)
{
	const char *e = getenv("RING_FUZZ_ITER");
	long iters = e ? atol(e) : 20000;

	if ((e = getenv("RING_FUZZ_SEED")))
		rng_state ^= strtoull(e, NULL, 0);
	for (int a = 1; a < argc; a++) {
		static uint8_t seed[1 << 16], buf[1 << 16];
		FILE *f = fopen(argv[a], "rb");

		if (!f)
			return 2;
		size_t n = fread(seed, 1, sizeof(seed), f);
		fclose(f);
		for (long it = 0; it < iters; it++) {
			size_t len = n;

			memcpy(buf, seed, n);
			for (int k = (int)(rng() % 8); k >= 0 && len; k--) {
				size_t at = rng() % len;
				switch (rng() % 4) {
				case 0: buf[at] = (uint8_t)rng(); break;
				case 1: buf[at] ^= (uint8_t)(1u << (rng() % 8)); break;
				case 2: buf[at] = interesting[rng() % sizeof(interesting)]; break;
				default: len = at + 1; break; /* truncate */
				}
			}
			LLVMFuzzerTestOneInput(buf, len);
		}
	}
	printf("fuzzed %d seeds x %ld\n", argc - 1, iters);
	return 0;
}
#endif
