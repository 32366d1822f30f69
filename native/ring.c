/*
 * tcmu-pr native command-ring loop.
 *
 * Serves READ/WRITE(6/10/12/16) straight from the ring's iovecs (no copy) after checking
 * the device's PR verdict; hands every other command to Python, and so every READ/WRITE the
 * Python emulation would refuse for a reason other than its LBA range (a CDB bit outside its
 * usage data, a transfer over MAXIMUM TRANSFER LENGTH): one place forms those answers. The
 * ring is shared with the kernel and nothing in it is trusted: every offset, length and
 * count read from it is bounds-checked against the mapping before use, CDBs and iovecs are
 * copied out before they are checked (so a concurrent change cannot slip past a check), and
 * a structurally corrupt ring stops the loop with an error code instead of looping or
 * scribbling.
 */
#define _GNU_SOURCE
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Offsets the kernel uses (include/uapi/linux/target_core_user.h, 6.x). */
_Static_assert(offsetof(struct tcmu_mailbox, cmd_head) == 12, "cmd_head");
_Static_assert(offsetof(struct tcmu_mailbox, cmd_tail) == 64, "cmd_tail");
_Static_assert(sizeof(struct tcmu_mailbox) == 128, "mailbox size");
_Static_assert(sizeof(struct tcmu_cmd_entry_hdr) == 8, "hdr size");
_Static_assert(offsetof(struct tcmu_cmd_entry, req.iov_cnt) == 8, "iov_cnt");
_Static_assert(offsetof(struct tcmu_cmd_entry, req.cdb_off) == 24, "cdb_off");
_Static_assert(offsetof(struct tcmu_cmd_entry, req.nexus_handle) == 32, "nexus_handle");
_Static_assert(offsetof(struct tcmu_cmd_entry, req.iov) == 48, "iov");
_Static_assert(offsetof(struct tcmu_cmd_entry, rsp.scsi_status) == 8, "scsi_status");
_Static_assert(offsetof(struct tcmu_cmd_entry, rsp.read_len) == 12, "read_len");
_Static_assert(offsetof(struct tcmu_cmd_entry, rsp.sense_buffer) == 16, "sense");
_Static_assert(sizeof(struct tcmu_cmd_entry) == 112, "entry size");
_Static_assert(sizeof(struct iovec) == 16, "iovec");

#define ENTRY_IOV_CNT_OFF RING_REQ_IOV_CNT
#define ENTRY_CDB_OFF RING_REQ_CDB_OFF
#define ENTRY_KFLAGS_OFF RING_HDR_KFLAGS
#define ENTRY_NEXUS_OFF RING_REQ_NEXUS_HANDLE
#define ENTRY_IOV_OFF ((uint32_t)RING_REQ_IOV)
#define ENTRY_MIN_LEN ((uint32_t)sizeof(struct tcmu_cmd_entry))
#define IOV_CHUNK RING_IOV_CHUNK

#define ST_GOOD 0x00
#define ST_CHECK_CONDITION 0x02
#define ST_RESERVATION_CONFLICT 0x18

/* sense key, ASC, ASCQ */
#define SENSE_INVALID_FIELD_IN_CDB 0x05, 0x24, 0x00
#define SENSE_LBA_OUT_OF_RANGE 0x05, 0x21, 0x00
#define SENSE_INTERNAL_TARGET_FAILURE 0x04, 0x44, 0x00
#define SENSE_READ_ERROR 0x03, 0x11, 0x00
#define SENSE_WRITE_ERROR 0x03, 0x0c, 0x00

/* ---- file backend ------------------------------------------------------------------ */

static ssize_t file_readv(void *b, const struct iovec *iov, int cnt, uint64_t off)
{
	ssize_t n = preadv(((struct ring_file_backend *)b)->fd, iov, cnt, (off_t)off);
	return n < 0 ? -errno : n;
}

static ssize_t file_writev(void *b, const struct iovec *iov, int cnt, uint64_t off)
{
	ssize_t n = pwritev(((struct ring_file_backend *)b)->fd, iov, cnt, (off_t)off);
	return n < 0 ? -errno : n;
}

static int file_flush(void *b)
{
	return fdatasync(((struct ring_file_backend *)b)->fd) < 0 ? -errno : 0;
}

const struct ring_backend_ops ring_file_ops = {
	.readv = file_readv,
	.writev = file_writev,
	.flush = file_flush,
};

const struct ring_backend_ops *tcmu_ring_file_ops(void)
{
	return &ring_file_ops;
}

struct file_deferred {
	const struct iovec *iov;
	int cnt;
	int write;
	uint64_t off;
};

static int file_submit(void *b, int write, const struct iovec *iov, int cnt, uint64_t off,
		       void **h)
{
	struct file_deferred *d = malloc(sizeof(*d));

	if (!d)
		return -ENOMEM;
	*d = (struct file_deferred){ iov, cnt, write, off };
	*h = d;
	return 0;
}

static ssize_t file_reap(void *b, void *h)
{
	struct file_deferred *d = h;
	ssize_t n = d->write ? file_writev(b, d->iov, d->cnt, d->off)
			     : file_readv(b, d->iov, d->cnt, d->off);

	free(d);
	return n;
}

static const struct ring_backend_ops ring_file_deferred_ops = {
	.readv = file_readv,
	.writev = file_writev,
	.flush = file_flush,
	.submit = file_submit,
	.reap = file_reap,
};

const struct ring_backend_ops *tcmu_ring_file_deferred_ops(void)
{
	return &ring_file_deferred_ops;
}

/* ---- small helpers ----------------------------------------------------------------- */

static inline struct tcmu_mailbox *mailbox(struct ring_ctx *ctx)
{
	return (struct tcmu_mailbox *)ctx->map;
}

/*
 * Loads of ring fields. Relaxed atomics, not plain loads: a plain load lets the compiler
 * fetch the field again later instead of keeping the checked copy (a double fetch), and the
 * kernel may have changed it in between. Every caller's address is naturally aligned:
 * tcmu_ring_init requires an 8-aligned mapping and cmdr_off, entries are 8-aligned in the
 * ring, and the fields sit at multiples of their size inside an entry.
 */
static inline uint32_t load_u32(const void *p)
{
	return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
}

static inline uint64_t load_u64(const void *p)
{
	return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
}

static inline uint8_t load_u8(const uint8_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

/* Keep the compiler from replacing a copy out of the ring by later reads of the ring. */
#define ring_copy_barrier() __asm__ __volatile__("" ::: "memory")

static inline uint64_t be(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* [off, off+len) inside [lo, hi), without overflow. */
static inline int in_range(uint64_t off, uint64_t len, uint64_t lo, uint64_t hi)
{
	return off >= lo && off <= hi && len <= hi - off;
}

/*
 * Copy the CDB at cdb_off (an offset into the mapping) into buf. Its length comes from the
 * opcode group, as the kernel's scsi_command_size() computes it. The opcode (and, for a
 * variable-length CDB, byte 7) is read exactly once and written over the copy, so a
 * concurrent change cannot make the length and the bytes disagree. Returns the length,
 * -EFAULT when it is not inside the mapping, -ENOSPC when buf is too small.
 */
static int read_cdb(const struct ring_ctx *ctx, uint64_t cdb_off, uint8_t *buf, uint32_t buflen)
{
	static const uint8_t by_group[8] = { 6, 10, 10, 12, 16, 12, 10, 10 };
	uint8_t op, add = 0;
	uint32_t len;

	if (!in_range(cdb_off, 6, 0, ctx->map_size))
		return -EFAULT;
	op = load_u8(ctx->map + cdb_off);
	if (op == 0x7f) { /* VARIABLE LENGTH: ADDITIONAL CDB LENGTH + 8 */
		if (!in_range(cdb_off, 8, 0, ctx->map_size))
			return -EFAULT;
		add = load_u8(ctx->map + cdb_off + 7);
		len = (uint32_t)add + 8;
	} else {
		len = by_group[op >> 5];
	}
	if (!in_range(cdb_off, len, 0, ctx->map_size))
		return -EFAULT;
	if (len > buflen)
		return -ENOSPC;
	memcpy(buf, ctx->map + cdb_off, len);
	ring_copy_barrier();
	buf[0] = op; /* the bytes the length came from, as they were read */
	if (op == 0x7f)
		buf[7] = add;
	return (int)len;
}

/*
 * With sense, the whole 96-byte buffer is written: the kernel hands all of it to LIO, and
 * what a shorter sense leaves behind is the request the response overlays (iovec offsets,
 * the CDB).
 */
static void write_rsp(struct tcmu_cmd_entry *ent, uint8_t status, const uint8_t *sense,
		      uint32_t sense_len)
{
	if (sense_len > TCMU_SENSE_BUFFERSIZE)
		sense_len = TCMU_SENSE_BUFFERSIZE;
	if (sense && sense_len) {
		memcpy(ent->rsp.sense_buffer, sense, sense_len);
		memset(ent->rsp.sense_buffer + sense_len, 0, TCMU_SENSE_BUFFERSIZE - sense_len);
	}
	ent->rsp.scsi_status = status;
}

/* CHECK CONDITION with fixed-format sense; malformed entries/CDBs count as "bad". */
static void fail(struct ring_ctx *ctx, struct tcmu_cmd_entry *ent, uint8_t key, uint8_t asc,
		 uint8_t ascq)
{
	uint8_t s[18] = { 0 };

	if (asc == 0x24 || asc == 0x44)
		ctx->stats.bad++;

	s[0] = 0x70; /* current error, fixed format */
	s[2] = key;
	s[7] = 10;
	s[12] = asc;
	s[13] = ascq;
	write_rsp(ent, ST_CHECK_CONDITION, s, sizeof(s));
}

static void kick(struct ring_ctx *ctx)
{
	uint32_t one = 0;
	ssize_t n;

	do
		n = write(ctx->kick_fd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
	ctx->stats.kicks++;
}

/*
 * Validated view of an entry's iovec array: entry_off is an offset into the mapping and
 * the entry must lie in the command ring with room for iov_cnt iovecs. Returns iov_cnt or
 * -1 when the count cannot be honest.
 */
static int64_t entry_iov_cnt(struct ring_ctx *ctx, const uint8_t *ent, uint32_t len)
{
	uint32_t cnt = load_u32(ent + ENTRY_IOV_CNT_OFF);

	if (len < ENTRY_IOV_OFF || cnt > (len - ENTRY_IOV_OFF) / sizeof(struct iovec))
		return -1;
	(void)ctx;
	return cnt;
}

/* Copy iovec i of an entry, checked against the data area; 0 or -1. */
static int entry_iov(struct ring_ctx *ctx, const uint8_t *ent, uint32_t i, uint64_t *off,
		     uint64_t *len)
{
	const uint8_t *p = ent + ENTRY_IOV_OFF + (size_t)i * sizeof(struct iovec);

	*off = load_u64(p);
	*len = load_u64(p + 8);
	return in_range(*off, *len, ctx->data_off, ctx->map_size) ? 0 : -1;
}

/* ---- the fast path ----------------------------------------------------------------- */

enum disposition { DONE, PUNT, PUNT_AND_STOP };

/*
 * Point v (at most IOV_CHUNK entries, *n of them filled) at the entry's iovecs from *i on,
 * at most bytes in all, skipping empty ones; each is re-read and must still be in bounds.
 * Returns the bytes gathered (0: the iovecs end before bytes) or -1 on a bad iovec.
 */
static int64_t gather(struct ring_ctx *ctx, const uint8_t *ent, uint32_t cnt, uint32_t *i,
		      uint64_t bytes, struct iovec *v, int *n)
{
	uint64_t o, l, total = 0;

	while (*i < cnt && *n < IOV_CHUNK && total < bytes) {
		if (entry_iov(ctx, ent, *i, &o, &l))
			return -1;
		(*i)++;
		if (l > bytes - total)
			l = bytes - total;
		if (!l)
			continue;
		v[*n].iov_base = ctx->map + o;
		v[*n].iov_len = l;
		(*n)++;
		total += l;
	}
	return (int64_t)total;
}

/* All or nothing: every iovec of the entry in bounds before any transfer; 0 or -1. */
static int check_iovs(struct ring_ctx *ctx, const uint8_t *ent, uint32_t cnt)
{
	uint64_t o, l;

	for (uint32_t i = 0; i < cnt; i++)
		if (entry_iov(ctx, ent, i, &o, &l))
			return -1;
	return 0;
}

/* A failed transfer: WRITE ERROR or UNRECOVERED READ ERROR. */
static void fail_io(struct ring_ctx *ctx, struct tcmu_cmd_entry *ent, int write)
{
	if (write)
		fail(ctx, ent, SENSE_WRITE_ERROR);
	else
		fail(ctx, ent, SENSE_READ_ERROR);
}

/*
 * Move bytes between the backend at byte offset off and the entry's iovecs, in chunks,
 * resuming after short transfers. 0, or -1 on a bad iovec, or -2 on an I/O error.
 */
static int data_io(struct ring_ctx *ctx, const uint8_t *ent, uint32_t cnt, int write,
		   uint64_t off, uint64_t bytes)
{
	struct iovec v[IOV_CHUNK];
	uint32_t i = 0;

	if (check_iovs(ctx, ent, cnt))
		return -1;
	while (bytes) {
		int n = 0;
		int64_t got = gather(ctx, ent, cnt, &i, bytes, v, &n);
		uint64_t chunk;

		if (got < 0)
			return -1;
		chunk = (uint64_t)got;
		if (!chunk) /* iovecs shorter than the transfer: the rest is not wanted */
			return 0;
		/* one chunk, retried until complete */
		struct iovec *p = v;
		int left = n;
		uint64_t done = 0;

		while (done < chunk) {
			ssize_t r = write ? ctx->ops->writev(ctx->backend, p, left, off)
					  : ctx->ops->readv(ctx->backend, p, left, off);
			if (r == -EINTR)
				continue;
			if (r <= 0)
				return -2;
			done += (uint64_t)r;
			off += (uint64_t)r;
			while (left && (uint64_t)r >= p->iov_len) {
				r -= (ssize_t)p->iov_len;
				p++;
				left--;
			}
			if (left && r) {
				p->iov_base = (uint8_t *)p->iov_base + r;
				p->iov_len -= (size_t)r;
			}
		}
		bytes -= chunk;
	}
	return 0;
}

/*
 * Answer every submitted command, in submission order. Under write-through the batch's
 * writes get one flush, after all of them completed and before any is answered GOOD.
 */
static void reap_all(struct ring_ctx *ctx)
{
	int wrote = 0, flush_failed = 0;

	for (uint32_t i = 0; i < ctx->n_inflight; i++) {
		struct ring_inflight *f = &ctx->inflight[i];
		ssize_t r = ctx->ops->reap(ctx->backend, f->h);

		f->ok = r >= 0 && (uint64_t)r == f->bytes;
		wrote |= f->ok && f->write;
	}
	if (wrote && ctx->write_through) {
		ctx->stats.flushes++;
		flush_failed = ctx->ops->flush(ctx->backend) != 0;
	}
	for (uint32_t i = 0; i < ctx->n_inflight; i++) {
		struct ring_inflight *f = &ctx->inflight[i];

		if (f->ok && !(f->write && flush_failed))
			write_rsp(f->ent, ST_GOOD, NULL, 0);
		else
			fail_io(ctx, f->ent, f->write);
	}
	ctx->n_inflight = 0;
}

/*
 * Start a data command through ops->submit; its answer is written when reaped. Returns 1
 * when the command is answered or will be, 0 when it must take the synchronous path (more
 * iovecs than one call takes). The iovecs are checked and copied before anything starts,
 * and the entry is not read again: its response overlays them.
 */
static int submit_cmd(struct ring_ctx *ctx, struct tcmu_cmd_entry *ent, uint32_t cnt,
		      int write, uint64_t off, uint64_t bytes)
{
	struct ring_inflight *f;
	uint32_t i = 0;
	int n = 0;
	int64_t total;

	if (cnt > IOV_CHUNK)
		return 0;
	if (ctx->n_inflight == RING_MAX_INFLIGHT)
		reap_all(ctx);
	f = &ctx->inflight[ctx->n_inflight];
	total = check_iovs(ctx, (const uint8_t *)ent, cnt)
			? -1
			: gather(ctx, (const uint8_t *)ent, cnt, &i, bytes, f->iov, &n);
	if (total < 0) {
		fail(ctx, ent, SENSE_INTERNAL_TARGET_FAILURE);
		return 1;
	}
	if (!total) { /* nothing wanted: as the synchronous path answers */
		write_rsp(ent, ST_GOOD, NULL, 0);
		return 1;
	}
	if (ctx->ops->submit(ctx->backend, write, f->iov, n, off, &f->h)) {
		fail_io(ctx, ent, write);
		return 1;
	}
	f->ent = ent;
	f->bytes = (uint64_t)total;
	f->write = write;
	ctx->n_inflight++;
	ctx->stats.submitted++;
	return 1;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	/* coarse: a vDSO read of the tick's time, never a syscall or a clock device; the
	 * deadlines it serves (the run loop's timeout, the lease) tolerate a tick of error */
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int is_pr_changer(uint8_t op)
{
	/* PERSISTENT RESERVE OUT, RESERVE(6/10), RELEASE(6/10) */
	return op == 0x5f || op == 0x16 || op == 0x17 || op == 0x56 || op == 0x57;
}

/* Why an entry's verdict is not known in nexus mode: it is punted for Python to resolve. */
enum unknown { KNOWN = 0, NO_HANDLE, UNRESOLVED };

/*
 * The verdict an entry is checked against: the device's word, or in nexus mode the slot of
 * the entry's handle (read from the entry once, by the caller). A handle outside the table
 * or without a published slot (or an entry opening a new session of its nexus: Python
 * handles the nexus loss) leaves *why set and the verdict 0.
 */
static uint32_t entry_verdict(struct ring_ctx *ctx, uint64_t handle, uint8_t kflags,
			      enum unknown *why)
{
	uint32_t v;

	*why = KNOWN;
	if (!__atomic_load_n(&ctx->nexus_mode, __ATOMIC_RELAXED))
		return __atomic_load_n(&ctx->verdict, __ATOMIC_SEQ_CST);
	if (!handle || handle >= RING_NEXUS_SLOTS) {
		*why = NO_HANDLE;
		return 0;
	}
	v = __atomic_load_n(&ctx->nexus_verdict[handle], __ATOMIC_SEQ_CST);
	if (!(v & RING_VERDICT_KNOWN) || (kflags & TCMU_KFLAG_NEXUS_NEW_SESSION)) {
		*why = UNRESOLVED; /* the batch ends: once resolved, later commands go fast */
		return 0;
	}
	return v;
}

/*
 * The CDB bits the fast path serves, per READ/WRITE size: the emulation's CDB USAGE DATA
 * (tcmu_pr/emulation/__init__.py; tests/test_ring_vs_emulation.py pins the two). DPO, FUA,
 * LBA and TRANSFER LENGTH; any other bit (RD/WRPROTECT, GROUP NUMBER, reserved, obsolete,
 * CONTROL) sends the command to Python, which refuses it with a field pointer. Byte 0 (the
 * opcode) is matched by the switch, not here.
 */
static const uint8_t rw6_usage[16] = { 0xff, 0x1f, 0xff, 0xff, 0xff, 0x00 };
static const uint8_t rw10_usage[16] = { 0xff, 0x18, 0xff, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff };
static const uint8_t rw12_usage[16] = { 0xff, 0x18, 0xff, 0xff, 0xff, 0xff,
					0xff, 0xff, 0xff, 0xff, 0x00, 0x00 };
static const uint8_t rw16_usage[16] = { 0xff, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00 };

/* The usage data of a READ/WRITE opcode and its CDB length; NULL for other opcodes. */
static const uint8_t *rw_usage(uint8_t op, int *len)
{
	switch (op) {
	case 0x08: /* READ(6) */
	case 0x0a: /* WRITE(6) */
		*len = 6;
		return rw6_usage;
	case 0x28: /* READ(10) */
	case 0x2a:
		*len = 10;
		return rw10_usage;
	case 0xa8: /* READ(12) */
	case 0xaa:
		*len = 12;
		return rw12_usage;
	case 0x88: /* READ(16) */
	case 0x8a:
		*len = 16;
		return rw16_usage;
	}
	return NULL;
}

/* Any CDB bit outside the usage data (bytes 1 on; the opcode was matched). */
static inline int outside_usage(const uint8_t *cdb, const uint8_t *usage, int len)
{
	uint8_t extra = 0;

	for (int i = 1; i < len; i++)
		extra |= cdb[i] & (uint8_t)~usage[i];
	return extra != 0;
}

/* Hand a command to Python; a PR change, a pending unit attention or (nexus mode) a
 * handle Python has not resolved yet ends the batch. */
static enum disposition punt(struct ring_ctx *ctx, const uint8_t *cdb, int clen,
			     uint64_t handle, uint8_t kflags)
{
	enum unknown why;
	uint32_t v = entry_verdict(ctx, handle, kflags, &why);

	if (clen > 0 && is_pr_changer(cdb[0]))
		return PUNT_AND_STOP;
	if (why != KNOWN)
		return why == UNRESOLVED ? PUNT_AND_STOP : PUNT;
	return (v & RING_VERDICT_UA) ? PUNT_AND_STOP : PUNT;
}

static enum disposition serve_cmd(struct ring_ctx *ctx, struct tcmu_cmd_entry *ent,
				  uint32_t len, int expired, uint64_t *handle, uint8_t *kflags)
{
	const uint8_t *raw = (const uint8_t *)ent;
	const uint8_t *usage;
	uint8_t cdb[16];
	uint64_t cdb_off = load_u64(raw + ENTRY_CDB_OFF);
	int64_t cnt = entry_iov_cnt(ctx, raw, len);
	uint64_t lba, blocks;
	int write, fua, usage_len;
	enum unknown why;

	/* read once: what the fast path decides on is what Python is told (tcmu_ring_nexus) */
	*kflags = load_u8(raw + ENTRY_KFLAGS_OFF);
	*handle = (*kflags & TCMU_KFLAG_NEXUS) ? load_u64(raw + ENTRY_NEXUS_OFF) & INT64_MAX : 0;

	if (cnt < 0) {
		fail(ctx, ent, SENSE_INTERNAL_TARGET_FAILURE);
		return DONE;
	}
	int clen = read_cdb(ctx, cdb_off, cdb, sizeof(cdb));

	if (clen == -EFAULT) {
		fail(ctx, ent, SENSE_INVALID_FIELD_IN_CDB);
		return DONE;
	}
	/* a CDB longer than 16 bytes is never fast */
	usage = clen > 0 ? rw_usage(cdb[0], &usage_len) : NULL;
	if (!usage)
		return punt(ctx, cdb, clen, *handle, *kflags);
	switch (usage_len) {
	case 6:
		lba = be(cdb + 1, 3) & 0x1fffff;
		blocks = cdb[4] ? cdb[4] : 256;
		break;
	case 10:
		lba = be(cdb + 2, 4);
		blocks = be(cdb + 7, 2);
		break;
	case 12:
		lba = be(cdb + 2, 4);
		blocks = be(cdb + 6, 4);
		break;
	default:
		lba = be(cdb + 2, 8);
		blocks = be(cdb + 10, 4);
		break;
	}
	/* what the emulation refuses before the range check, it answers itself */
	if (outside_usage(cdb, usage, usage_len) || blocks > ctx->max_transfer)
		return punt(ctx, cdb, clen, *handle, *kflags);
	write = (cdb[0] & 0x0f) == 0x0a;
	fua = write && usage_len > 6 && (cdb[1] & 0x08);

	uint32_t v = entry_verdict(ctx, *handle, *kflags, &why);

	if (expired) /* the PR state is not vouched for: Python re-validates first */
		return PUNT;
	if (why != KNOWN) /* whose command this is, Python finds out */
		return why == UNRESOLVED ? PUNT_AND_STOP : PUNT;
	if (v & RING_VERDICT_UA) /* Python delivers the unit attention first */
		return PUNT_AND_STOP;
	if (!(v & (write ? RING_VERDICT_WRITE : RING_VERDICT_READ))) {
		write_rsp(ent, ST_RESERVATION_CONFLICT, NULL, 0);
		ctx->stats.conflicts++;
		return DONE;
	}

	uint64_t nblocks = ctx->dev_size / ctx->block_size;

	/* the LBA must name a block even when nothing moves (SBC-4 4.5, as the emulation) */
	if (lba >= nblocks || blocks > nblocks - lba) {
		fail(ctx, ent, SENSE_LBA_OUT_OF_RANGE);
		return DONE;
	}
	/* change-block tracking: blocks marked before the data moves; a write the map must
	 * not take yet (snapshot being taken, copy-on-write pending) goes to Python */
	struct cbt_map *cbt = write ? ctx->cbt : NULL;

	if (cbt && tcmu_cbt_write_begin(cbt, lba * ctx->block_size, blocks * ctx->block_size))
		return PUNT;
	ctx->stats.fast++;
	/* FUA needs its own flush after its data: that one takes the synchronous path;
	 * write-through writes are flushed per batch when reaped; a tracked write too (it
	 * stays counted in flight until its data is in) */
	if (ctx->ops->submit && !fua && !cbt &&
	    submit_cmd(ctx, ent, (uint32_t)cnt, write, lba * ctx->block_size,
		       blocks * ctx->block_size))
		return DONE;
	if (ctx->n_inflight) /* what went before lands before a flush or a long transfer */
		reap_all(ctx);
	int r = data_io(ctx, raw, (uint32_t)cnt, write, lba * ctx->block_size,
			blocks * ctx->block_size);
	if (cbt)
		tcmu_cbt_leave(cbt);
	if (r == 0 && (fua || (write && ctx->write_through))) {
		ctx->stats.flushes++;
		if (ctx->ops->flush(ctx->backend))
			r = -2;
	}
	if (r == -1)
		fail(ctx, ent, SENSE_INTERNAL_TARGET_FAILURE);
	else if (r == -2)
		fail_io(ctx, ent, write);
	else
		write_rsp(ent, ST_GOOD, NULL, 0);
	return DONE;
}

/* ---- public API -------------------------------------------------------------------- */

int tcmu_ring_init(struct ring_ctx *ctx, void *map, uint64_t map_size, int kick_fd,
		   const struct ring_backend_ops *ops, void *backend, uint64_t dev_size,
		   uint32_t block_size)
{
	struct tcmu_mailbox *mb = map;

	memset(ctx, 0, sizeof(*ctx));
	if (!map || map_size < sizeof(*mb) || !ops || !ops->readv || !ops->writev || !ops->flush ||
	    !ops->submit != !ops->reap || !block_size || (uintptr_t)map % TCMU_OP_ALIGN_SIZE)
		return -EINVAL;
	if (mb->version != TCMU_MAILBOX_VERSION)
		return RING_ERR_MAILBOX;
	uint32_t off = mb->cmdr_off, size = mb->cmdr_size;
	uint32_t tail = __atomic_load_n(&mb->cmd_tail, __ATOMIC_ACQUIRE);

	/* entry offsets travel as u32: the whole ring must lie below 4 GiB; an 8-aligned ring
	 * keeps every entry field naturally aligned for load_u32/load_u64 */
	if (off < sizeof(*mb) || off % TCMU_OP_ALIGN_SIZE || size < ENTRY_MIN_LEN ||
	    size % TCMU_OP_ALIGN_SIZE ||
	    !in_range(off, size, 0, map_size) || (uint64_t)off + size > UINT32_MAX ||
	    tail >= size || tail % TCMU_OP_ALIGN_SIZE)
		return RING_ERR_MAILBOX;
	ctx->map = map;
	ctx->map_size = map_size;
	ctx->cmdr_off = off;
	ctx->cmdr_size = size;
	ctx->data_off = (uint64_t)off + size;
	ctx->mb_flags = mb->flags;
	ctx->kick_fd = kick_fd;
	ctx->ops = ops;
	ctx->backend = backend;
	ctx->dev_size = dev_size;
	ctx->block_size = block_size;
	ctx->max_transfer = UINT32_MAX;
	ctx->verdict = RING_VERDICT_READ | RING_VERDICT_WRITE;
	ctx->scan = tail;
	return 0;
}

int tcmu_ring_cbt(struct ring_ctx *ctx, struct cbt_map *cbt)
{
	if (!ctx || !ctx->map || (cbt && !cbt->base))
		return -EINVAL;
	ctx->cbt = cbt;
	return 0;
}

int tcmu_ring_configure(struct ring_ctx *ctx, uint32_t max_transfer, int write_through)
{
	if (!ctx || !ctx->map)
		return -EINVAL;
	ctx->max_transfer = max_transfer ? max_transfer : UINT32_MAX;
	ctx->write_through = !!write_through;
	return 0;
}

int tcmu_ring_rw_usage(uint8_t opcode, uint8_t *out)
{
	int len;
	const uint8_t *usage = rw_usage(opcode, &len);

	if (!usage || !out)
		return -EINVAL;
	memcpy(out, usage, 16);
	out[0] = opcode;
	return len;
}

int tcmu_ring_commit(struct ring_ctx *ctx)
{
	struct tcmu_mailbox *mb = mailbox(ctx);

	if (ctx->n_pending)
		return RING_ERR_PENDING;
	if (__atomic_load_n(&mb->cmd_tail, __ATOMIC_RELAXED) != ctx->scan) {
		/* responses must be visible before the kernel sees the new tail */
		__atomic_store_n(&mb->cmd_tail, ctx->scan, __ATOMIC_RELEASE);
		kick(ctx);
	}
	return 0;
}

static int process(struct ring_ctx *ctx, uint32_t *punts, uint32_t max_punts);

int tcmu_ring_process(struct ring_ctx *ctx, uint32_t *punts, uint32_t max_punts)
{
	int n;

	__atomic_add_fetch(&ctx->busy, 1, __ATOMIC_SEQ_CST); /* odd: serving */
	n = process(ctx, punts, max_punts);
	__atomic_add_fetch(&ctx->busy, 1, __ATOMIC_SEQ_CST); /* even: done */
	return n;
}

uint32_t tcmu_ring_publish(struct ring_ctx *ctx, uint32_t verdict, uint64_t lease_ms)
{
	__atomic_store_n(&ctx->lease_ms, lease_ms, __ATOMIC_SEQ_CST);
	__atomic_store_n(&ctx->verdict, verdict, __ATOMIC_SEQ_CST);
	return __atomic_load_n(&ctx->busy, __ATOMIC_SEQ_CST);
}

uint32_t tcmu_ring_publish_nexus(struct ring_ctx *ctx, uint64_t handle, uint32_t verdict,
				 uint64_t lease_ms)
{
	__atomic_store_n(&ctx->lease_ms, lease_ms, __ATOMIC_SEQ_CST);
	if (handle && handle < RING_NEXUS_SLOTS)
		__atomic_store_n(&ctx->nexus_verdict[handle], verdict | RING_VERDICT_KNOWN,
				 __ATOMIC_SEQ_CST);
	return __atomic_load_n(&ctx->busy, __ATOMIC_SEQ_CST);
}

void tcmu_ring_nexus_mode(struct ring_ctx *ctx, uint32_t on)
{
	if (!on)
		for (uint32_t i = 0; i < RING_NEXUS_SLOTS; i++)
			__atomic_store_n(&ctx->nexus_verdict[i], 0, __ATOMIC_SEQ_CST);
	__atomic_store_n(&ctx->nexus_mode, !!on, __ATOMIC_SEQ_CST);
}

static int process(struct ring_ctx *ctx, uint32_t *punts, uint32_t max_punts)
{
	struct tcmu_mailbox *mb = mailbox(ctx);
	uint8_t *ring = ctx->map + ctx->cmdr_off;
	uint32_t size = ctx->cmdr_size, n = 0;
	int err = 0;

	if (ctx->n_pending)
		return RING_ERR_PENDING;
	if (!punts || !max_punts)
		return -EINVAL;
	if (max_punts > RING_MAX_PUNTS)
		max_punts = RING_MAX_PUNTS;
	uint64_t lease = __atomic_load_n(&ctx->lease_ms, __ATOMIC_SEQ_CST);
	/* one clock read per batch, and none at all without a lease */
	int expired = lease && (uint64_t)now_ms() >= lease;
	uint32_t head = __atomic_load_n(&mb->cmd_head, __ATOMIC_ACQUIRE);

	if (head >= size || head % TCMU_OP_ALIGN_SIZE)
		return RING_ERR_HEAD;
	while (ctx->scan != head) {
		uint32_t scan = ctx->scan;
		uint32_t len_op = load_u32(ring + scan);
		uint32_t len = len_op & ~TCMU_OP_MASK, op = len_op & TCMU_OP_MASK;
		uint32_t avail = (uint32_t)(((uint64_t)head + size - scan) % size); /* to cmd_head */

		/* an entry never wraps (the kernel pads) and never passes cmd_head */
		if (!len || len > size - scan || len > avail) {
			err = RING_ERR_ENTRY;
			break;
		}
		if (op == TCMU_OP_PAD) {
			ctx->stats.pads++;
		} else if (op == TCMU_OP_TMR) {
			/* notification only: the aborted commands still get their own answers */
			ctx->stats.tmrs++;
		} else if (op == TCMU_OP_CMD && len >= ENTRY_MIN_LEN) {
			if (n == max_punts)
				break; /* no room to punt this one: next call */
			uint64_t handle;
			uint8_t kflags;
			enum disposition d = serve_cmd(ctx, (struct tcmu_cmd_entry *)(ring + scan),
						       len, expired, &handle, &kflags);

			ctx->stats.cmds++;
			if (d != DONE) {
				punts[n] = ctx->cmdr_off + scan;
				ctx->pending_len[n] = len;
				ctx->pending_nexus[n] = handle;
				ctx->pending_kflags[n] = kflags;
				ctx->pending[n++] = ctx->cmdr_off + scan;
				ctx->n_pending = n;
				ctx->stats.punted++;
				ctx->scan = (scan + len) % size;
				if (d == PUNT_AND_STOP)
					break;
				continue;
			}
		} else {
			err = RING_ERR_ENTRY; /* unknown op, or a CMD too short for its response */
			break;
		}
		ctx->scan = (scan + len) % size;
	}
	/* every answer is written before punts reach Python or the tail moves */
	reap_all(ctx);
	if (n)
		return (int)n;
	tcmu_ring_commit(ctx);
	return err;
}

/* Index of a pending entry, or -1. */
static int pending_index(struct ring_ctx *ctx, uint32_t entry_off)
{
	for (uint32_t i = 0; i < ctx->n_pending; i++)
		if (ctx->pending[i] == entry_off)
			return (int)i;
	return -1;
}

/*
 * A pending entry and its length as checked when it was scanned. The header is not read
 * again: a kernel that rewrote it meanwhile would otherwise leave the entry unanswerable,
 * pending for ever, and the ring wedged (every later call failing with RING_ERR_PENDING).
 * What the entry's body says (iovecs, CDB) is still re-read and re-checked on each use.
 */
static int64_t pending_entry(struct ring_ctx *ctx, uint32_t entry_off, const uint8_t **ent)
{
	int i = pending_index(ctx, entry_off);

	if (i < 0)
		return RING_ERR_NOT_CMD;
	*ent = ctx->map + entry_off;
	return ctx->pending_len[i];
}

int64_t tcmu_ring_nexus(struct ring_ctx *ctx, uint32_t entry_off)
{
	int i = pending_index(ctx, entry_off);

	if (i < 0)
		return RING_ERR_NOT_CMD;
	return (int64_t)ctx->pending_nexus[i];
}

int tcmu_ring_kflags(struct ring_ctx *ctx, uint32_t entry_off)
{
	int i = pending_index(ctx, entry_off);

	return i < 0 ? RING_ERR_NOT_CMD : ctx->pending_kflags[i];
}

int tcmu_ring_cdb(struct ring_ctx *ctx, uint32_t entry_off, uint8_t *buf, uint32_t buflen)
{
	const uint8_t *ent;
	int64_t len = pending_entry(ctx, entry_off, &ent);

	return len < 0 ? (int)len : read_cdb(ctx, load_u64(ent + ENTRY_CDB_OFF), buf, buflen);
}

/* Walk a pending entry's iovecs; copy out (to buf) or in (from data). */
static int64_t move_data(struct ring_ctx *ctx, const uint8_t *ent, uint32_t len, uint8_t *out,
			 const uint8_t *in, uint64_t max)
{
	int64_t cnt = entry_iov_cnt(ctx, ent, len);
	uint64_t done = 0;

	if (cnt < 0)
		return RING_ERR_IOV;
	for (uint32_t i = 0; i < (uint32_t)cnt; i++) {
		uint64_t o, l;

		if (entry_iov(ctx, ent, i, &o, &l))
			return RING_ERR_IOV;
		if (!out && !in) { /* just measure */
			/* iovecs may overlap: a total beyond the data area is a lie that
			 * would make the caller allocate gigabytes */
			if (l > ctx->map_size - ctx->data_off - done)
				return RING_ERR_IOV;
			done += l;
			continue;
		}
		if (l > max - done)
			l = max - done;
		if (out)
			memcpy(out + done, ctx->map + o, l);
		else
			memcpy(ctx->map + o, in + done, l);
		done += l;
		if (done == max)
			break;
	}
	return (int64_t)done;
}

int64_t tcmu_ring_data_len(struct ring_ctx *ctx, uint32_t entry_off)
{
	const uint8_t *ent;
	int64_t len = pending_entry(ctx, entry_off, &ent);

	return len < 0 ? len : move_data(ctx, ent, (uint32_t)len, NULL, NULL, 0);
}

int64_t tcmu_ring_gather(struct ring_ctx *ctx, uint32_t entry_off, uint8_t *buf,
			 uint64_t buflen)
{
	const uint8_t *ent;
	int64_t len = pending_entry(ctx, entry_off, &ent);

	if (len < 0)
		return len;
	if (!buflen)
		return 0;
	return move_data(ctx, ent, (uint32_t)len, buf, NULL, buflen);
}

int64_t tcmu_ring_complete(struct ring_ctx *ctx, uint32_t entry_off, uint8_t status,
			   const uint8_t *sense, uint32_t sense_len, const uint8_t *data,
			   uint64_t data_len)
{
	const uint8_t *ent;
	int64_t len = pending_entry(ctx, entry_off, &ent);
	int64_t copied = 0;
	struct tcmu_cmd_entry *e;

	if (len < 0)
		return len;
	e = (struct tcmu_cmd_entry *)ent;
	if (data) { /* a data-in answer, possibly empty */
		int64_t room = move_data(ctx, ent, (uint32_t)len, NULL, NULL, 0);

		/* the response overlays the iovecs: all data moves before it is written */
		copied = room < 0 ? room : move_data(ctx, ent, (uint32_t)len, NULL, data, data_len);
		if (copied < 0) { /* answered, but not with what the caller meant */
			fail(ctx, e, SENSE_INTERNAL_TARGET_FAILURE);
			copied = 0;
			goto done;
		}
		if ((uint64_t)copied < (uint64_t)room &&
		    (ctx->mb_flags & TCMU_MAILBOX_FLAG_CAP_READ_LEN)) {
			e->hdr.uflags |= TCMU_UFLAG_READ_LEN;
			e->rsp.read_len = copied > UINT32_MAX ? UINT32_MAX : (uint32_t)copied;
		}
	}
	write_rsp(e, status, sense, sense_len);
done:;
	int i = pending_index(ctx, entry_off);

	ctx->n_pending--;
	ctx->pending[i] = ctx->pending[ctx->n_pending];
	ctx->pending_len[i] = ctx->pending_len[ctx->n_pending];
	ctx->pending_nexus[i] = ctx->pending_nexus[ctx->n_pending];
	ctx->pending_kflags[i] = ctx->pending_kflags[ctx->n_pending];
	return copied;
}

/* ---- the serve loop ---------------------------------------------------------------- */

/* Take one pending event: 1 taken, 0 none pending (EAGAIN/EINTR), or -errno. */
static int take_event(int fd, uint32_t event_size)
{
	uint64_t event; /* the count itself is not needed: cmd_head says what is queued */
	ssize_t got = read(fd, &event, event_size);

	if (got > 0)
		return 1;
	if (got == 0)
		return -EPIPE; /* end of file: nothing will ever wake us again */
	if (errno == EAGAIN || errno == EINTR)
		return 0;
	return -errno; /* uio: EIO once the device is unregistered */
}

/*
 * Why in C: at queue depth 16 a batch is a handful of 4 KiB commands, and the Python round
 * trip around each one (poll, read the event, call in, commit, kick) cost more than the
 * I/O. Here the GIL is released for the whole call (cffi drops it) and Python runs only
 * for punted commands and once per timeout. With a non-blocking wait fd, a busy ring costs
 * one read() per batch: the event that arrived while the batch ran is taken without a
 * poll(); poll() only runs when nothing is pending.
 */
int tcmu_ring_run(struct ring_ctx *ctx, int wait_fd, uint32_t event_size, int timeout_ms,
		  uint32_t *punts, uint32_t max_punts)
{
	int64_t deadline;
	int nonblock, flags;

	if (wait_fd < 0 || timeout_ms < 0 || (event_size != 4 && event_size != 8))
		return -EINVAL;
	flags = fcntl(wait_fd, F_GETFL);
	if (flags < 0)
		return -errno;
	nonblock = !!(flags & O_NONBLOCK);
	deadline = now_ms() + timeout_ms;
	for (;;) {
		int n = tcmu_ring_process(ctx, punts, max_punts);

		if (n)
			return n;
		int64_t left = deadline - now_ms();

		if (left <= 0)
			return 0;
		int r = nonblock ? take_event(wait_fd, event_size) : 0;

		if (r < 0)
			return r;
		if (r > 0)
			continue; /* more was queued meanwhile: no need to sleep */
		struct pollfd pfd = { .fd = wait_fd, .events = POLLIN };

		r = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
		if (r < 0)
			return errno == EINTR ? 0 : -errno;
		if (r == 0)
			return 0;
		r = take_event(wait_fd, event_size);
		if (r < 0)
			return r;
	}
}
