/*
 * Change-block tracking for the native data path (see cbt.h and docs/cbt.md).
 *
 * The rule that keeps the map from under-reporting: a write's blocks are marked in the
 * shared mapping before the write is issued, and the mapping is the page cache itself, so
 * no process death can lose a mark; only a host crash can, and that is detected at the next
 * open (dirty flag, boot id) and answered with a new generation.
 */
#define _GNU_SOURCE
#include "cbt.h"

#include <errno.h>
#include <string.h>

static const uint8_t cbt_magic[8] = { 'T', 'C', 'M', 'U', 'C', 'B', 'T', '1' };

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint32_t *word(struct cbt_map *m, uint32_t off)
{
	return (uint32_t *)(m->base + off);
}

static uint64_t page_round(uint64_t n)
{
	return (n + CBT_HEADER_SIZE - 1) / CBT_HEADER_SIZE * CBT_HEADER_SIZE;
}

uint64_t tcmu_cbt_file_size(uint64_t block_count)
{
	return CBT_HEADER_SIZE + 2 * page_round(block_count);
}

int tcmu_cbt_attach(struct cbt_map *m, void *base, uint64_t len)
{
	const uint8_t *h = base;
	uint32_t bs, shift = 0;
	uint64_t cap, count;

	memset(m, 0, sizeof(*m));
	if (!base || (uintptr_t)base % 8 || len < CBT_HEADER_SIZE)
		return -EINVAL;
	if (memcmp(h + CBT_OFF_MAGIC, cbt_magic, sizeof(cbt_magic)) ||
	    rd32(h + CBT_OFF_VERSION) != CBT_VERSION)
		return -EINVAL;
	bs = rd32(h + CBT_OFF_BLOCK_SIZE);
	cap = rd64(h + CBT_OFF_CAPACITY);
	count = rd64(h + CBT_OFF_COUNT);
	if (!bs || bs & (bs - 1))
		return -EINVAL;
	while ((1u << shift) != bs)
		shift++;
	if (shift < CBT_MIN_SHIFT || shift > CBT_MAX_SHIFT)
		return -EINVAL;
	/* the count must be the capacity's, and both arrays must lie inside the mapping */
	if (count != (cap >> shift) + !!(cap & (bs - 1)) || count > (len - CBT_HEADER_SIZE) / 2 ||
	    tcmu_cbt_file_size(count) > len)
		return -EINVAL;
	m->base = base;
	m->len = len;
	m->block_shift = shift;
	m->block_count = count;
	m->map = m->base + CBT_HEADER_SIZE;
	m->cow = m->map + page_round(count);
	return 0;
}

int tcmu_cbt_enter(struct cbt_map *m, int force)
{
	__atomic_add_fetch(word(m, CBT_OFF_INFLIGHT), 1, __ATOMIC_SEQ_CST);
	/* store->load against the snapshot taker's freeze-then-read-inflight (Dekker) */
	if (!force && __atomic_load_n(word(m, CBT_OFF_FREEZE), __ATOMIC_SEQ_CST)) {
		__atomic_sub_fetch(word(m, CBT_OFF_INFLIGHT), 1, __ATOMIC_SEQ_CST);
		return 1;
	}
	return 0;
}

void tcmu_cbt_leave(struct cbt_map *m)
{
	__atomic_sub_fetch(word(m, CBT_OFF_INFLIGHT), 1, __ATOMIC_SEQ_CST);
}

int tcmu_cbt_mark(struct cbt_map *m, uint64_t off, uint64_t len)
{
	uint64_t first, last;
	uint8_t number;
	int need_cow = 0, cow;

	if (!len || !m->block_count)
		return 0;
	first = off >> m->block_shift;
	last = (off + len - 1) >> m->block_shift;
	if (off + len < off || last >= m->block_count)
		last = m->block_count - 1; /* the ring checked the range; never write past the map */
	if (first > last)
		return 0;
	number = (uint8_t)__atomic_load_n(word(m, CBT_OFF_NUMBER), __ATOMIC_ACQUIRE);
	cow = !!__atomic_load_n(word(m, CBT_OFF_COW), __ATOMIC_ACQUIRE);
	for (uint64_t b = first; b <= last; b++) {
		/* read first: a block already marked keeps its cache line clean */
		if (__atomic_load_n(&m->map[b], __ATOMIC_RELAXED) != number)
			__atomic_store_n(&m->map[b], number, __ATOMIC_RELAXED);
		if (cow && !__atomic_load_n(&m->cow[b], __ATOMIC_ACQUIRE))
			need_cow = 1;
	}
	m->marked++;
	return need_cow;
}

int tcmu_cbt_write_begin(struct cbt_map *m, uint64_t off, uint64_t len)
{
	if (tcmu_cbt_enter(m, 0)) {
		m->punted++;
		return 1;
	}
	if (tcmu_cbt_mark(m, off, len)) {
		tcmu_cbt_leave(m);
		m->punted++;
		return 1;
	}
	return 0;
}

void tcmu_cbt_set_freeze(struct cbt_map *m, uint32_t on)
{
	__atomic_store_n(word(m, CBT_OFF_FREEZE), on, __ATOMIC_SEQ_CST);
}

uint32_t tcmu_cbt_inflight(struct cbt_map *m)
{
	return __atomic_load_n(word(m, CBT_OFF_INFLIGHT), __ATOMIC_SEQ_CST);
}

void tcmu_cbt_reset_inflight(struct cbt_map *m)
{
	__atomic_store_n(word(m, CBT_OFF_INFLIGHT), 0, __ATOMIC_SEQ_CST);
}
