/*
 * Fuzz harness of the ublk server's descriptor decoding and verdict drain (native/ublk.c).
 *
 * libFuzzer: clang -fsanitize=fuzzer,address,undefined fuzz_ublk.c ublk.c -luring.
 * gcc: -DUBLK_FUZZ_MAIN builds a small driver that runs every file named on the command line
 * and then N random inputs (argv[1] = N, seeded by argv[2]), as tests/test_ublk_native.py does.
 *
 * Input: a device (size, block size, buffer size) and a run of 24-byte descriptors.  For
 * each, what ublk_decode accepts must lie inside the device, be aligned to the block size,
 * non-empty, and fit the tag buffer when it carries data; and the drain must report busy
 * exactly while a tag admitted before the last publish is still running.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ublk.h"

static uint64_t take(const uint8_t **p, size_t *n, size_t k)
{
	uint64_t v = 0;
	for (size_t i = 0; i < k && *n; i++, (*p)++, (*n)--)
		v |= (uint64_t)**p << (8 * i);
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data;
	size_t n = size;
	uint64_t dev_bytes = take(&p, &n, 8);
	uint32_t lbs = 512u << (take(&p, &n, 1) % 5);
	uint32_t buf_bytes = (uint32_t)(take(&p, &n, 1) + 1) * 4096;
	struct ublk_shared sh;
	struct ublk_io_desc d;
	struct ublk_req r;

	if (take(&p, &n, 1) & 1) /* half the inputs: small devices, where the edges are */
		dev_bytes &= 0xfffff;
	while (n >= sizeof(d)) {
		memcpy(&d, p, sizeof(d));
		p += sizeof(d);
		n -= sizeof(d);
		int rc = ublk_decode(&d, dev_bytes, lbs, buf_bytes, &r);
		if (rc == 0 && r.be_op != UBLK_BE_FLUSH) {
			assert(r.len > 0);
			assert(r.off < dev_bytes && r.len <= dev_bytes - r.off);
			assert(((r.off | r.len) & (lbs - 1)) == 0);
			assert(r.off == d.start_sector << 9 && r.len == (uint64_t)d.nr_sectors << 9);
			if (r.be_op == UBLK_BE_READ || r.be_op == UBLK_BE_WRITE)
				assert(r.len <= buf_bytes);
		} else if (rc == 0) {
			assert((d.op_flags & 0xff) == 2);
		} else {
			assert(rc == -EOPNOTSUPP || rc == -EINVAL || rc == -ERANGE);
		}
		if (rc == 0)
			assert(r.need == UBLK_VERDICT_READ || r.need == UBLK_VERDICT_WRITE);
	}

	/* the drain: a tag admitted before a publish keeps it busy until it is answered */
	if (ublk_shared_init(&sh, 2, 4) == 0) {
		const uint8_t *q = data;
		for (size_t i = 0; i + 1 < size && i < 64; i += 2, q += 2) {
			uint32_t qid = q[0] & 1, tag = (q[0] >> 1) & 3;
			uint64_t *slot = &sh.tag_seq[qid * 4 + tag];
			switch (q[1] % 3) {
			case 0: /* admit */
				if (!*slot)
					*slot = ++sh.admitted[qid];
				break;
			case 1: /* answer */
				*slot = 0;
				break;
			default:
				ublk_publish(&sh, q[1] & 3, 0);
				assert(sh.verdict == (uint32_t)(q[1] & 3));
			}
			int busy = 0;
			for (uint32_t k = 0; k < 8; k++)
				if (sh.tag_seq[k] && sh.tag_seq[k] <= sh.snapshot[k / 4])
					busy = 1;
			assert(ublk_drained(&sh) == !busy);
		}
		ublk_shared_free(&sh);
	}
	return 0;
}

#ifdef UBLK_FUZZ_MAIN
int main(int argc, char **argv)
{
	long iters = argc > 1 ? atol(argv[1]) : 10000;
	unsigned seed = argc > 2 ? (unsigned)atol(argv[2]) : 1;
	uint8_t buf[1024];

	for (int i = 3; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (!f)
			return 2;
		size_t k = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, k);
	}
	srand(seed);
	for (long it = 0; it < iters; it++) {
		size_t k = (size_t)rand() % sizeof(buf);
		for (size_t j = 0; j < k; j++)
			buf[j] = (uint8_t)rand();
		/* descriptors near the device's edge: start = dev_bytes/512 - small */
		if (k >= 11 + 24 && (rand() & 1)) {
			uint64_t dev = 0, sect;
			memcpy(&dev, buf, 8);
			if (buf[10] & 1)
				dev &= 0xfffff;
			sect = (dev >> 9) - (uint64_t)(rand() % 4);
			memcpy(buf + 11 + 8, &sect, 8);
		}
		LLVMFuzzerTestOneInput(buf, k);
	}
	printf("ok %ld\n", iters);
	return 0;
}
#endif
