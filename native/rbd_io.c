/*
 * rbd_io: see rbd_io.h.  Each call is synchronous for its caller (aio + wait for the vector
 * calls, which librbd offers only as aio); the ring loop gets its concurrency from several
 * commands in flight on several threads, not from here.
 */
#define _GNU_SOURCE /* IOV_MAX */
#include "rbd_io.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <rados/librados.h>
#include <rbd/librbd.h>

struct rbd_io {
	rados_t cluster;	/* NULL when the caller's connection is borrowed */
	rados_ioctx_t ioctx;
	rbd_image_t image;
};

int rbd_io_open(const char *pool, const char *image, const char *conf, const char *client_id,
		struct rbd_io **out)
{
	struct rbd_io *io;
	int rc;

	if (!pool || !image || !out)
		return -EINVAL;
	*out = NULL;
	io = calloc(1, sizeof(*io));
	if (!io)
		return -ENOMEM;
	rc = rados_create(&io->cluster, client_id ? client_id : "admin");
	if (rc < 0)
		goto fail_free;
	/* librados would wait 300 s for an unreachable monitor; the config file may override */
	rc = rados_conf_set(io->cluster, "client_mount_timeout", "30");
	if (rc < 0)
		goto fail_shutdown;
	rc = rados_conf_read_file(io->cluster, conf);
	if (rc < 0)
		goto fail_shutdown;
	rc = rados_conf_parse_env(io->cluster, NULL);
	if (rc < 0)
		goto fail_shutdown;
	rc = rados_connect(io->cluster);
	if (rc < 0)
		goto fail_shutdown;
	rc = rados_ioctx_create(io->cluster, pool, &io->ioctx);
	if (rc < 0)
		goto fail_shutdown;
	rc = rbd_open(io->ioctx, image, &io->image, NULL);
	if (rc < 0)
		goto fail_ioctx;
	*out = io;
	return 0;

fail_ioctx:
	rados_ioctx_destroy(io->ioctx);
fail_shutdown:
	rados_shutdown(io->cluster);
fail_free:
	free(io);
	return rc;
}

int rbd_io_open_ioctx(uintptr_t ioctx, const char *image, struct rbd_io **out)
{
	struct rbd_io *io;
	int rc;

	if (!ioctx || !image || !out)
		return -EINVAL;
	*out = NULL;
	io = calloc(1, sizeof(*io));
	if (!io)
		return -ENOMEM;
	io->ioctx = (rados_ioctx_t)ioctx;
	rc = rbd_open(io->ioctx, image, &io->image, NULL);
	if (rc < 0) {
		free(io);
		return rc;
	}
	*out = io;
	return 0;
}

void rbd_io_close(struct rbd_io *io)
{
	if (!io)
		return;
	rbd_close(io->image);
	if (io->cluster) {
		rados_ioctx_destroy(io->ioctx);
		rados_shutdown(io->cluster);
	}
	free(io);
}

int rbd_io_size(struct rbd_io *io, uint64_t *size)
{
	if (!io || !size)
		return -EINVAL;
	return rbd_get_size(io->image, size);
}

/* 0 when [off, off+len) lies inside the image, else a negative errno (overflow-safe). */
static int check_range(struct rbd_io *io, uint64_t off, uint64_t len)
{
	uint64_t size;
	int rc;

	if (!io)
		return -EINVAL;
	rc = rbd_get_size(io->image, &size);
	if (rc < 0)
		return rc;
	if (off > size || len > size - off)
		return -ERANGE;
	return 0;
}

/* Total length of an iovec array, or a negative errno when it is malformed. */
static int64_t iov_total(const struct iovec *iov, int iovcnt)
{
	uint64_t total = 0;
	int i;

	if (iovcnt <= 0 || iovcnt > IOV_MAX || !iov)
		return -EINVAL;
	for (i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len && !iov[i].iov_base)
			return -EFAULT;
		if (iov[i].iov_len > (uint64_t)INT64_MAX - total)
			return -EOVERFLOW;
		total += iov[i].iov_len;
	}
	return (int64_t)total;
}

/* Wait for c, release it and return its result. */
static ssize_t finish(rbd_completion_t c)
{
	ssize_t rc;

	rbd_aio_wait_for_complete(c);
	rc = rbd_aio_get_return_value(c);
	rbd_aio_release(c);
	return rc;
}

/* The completion's argument carries what wait_io needs: the length (librbd completes a
 * write with 0) and the direction, so nothing is allocated per transfer. */
#define ARG_WRITE 1u

/* Start a transfer of total (> 0) bytes at off: range-checked, then handed to librbd. */
static int start_io(struct rbd_io *io, int write, const struct iovec *iov, int iovcnt,
		    uint64_t off, int64_t total, rbd_completion_t *c)
{
	int rc;

	if ((uint64_t)total > UINTPTR_MAX >> 1)
		return -EOVERFLOW;
	rc = check_range(io, off, (uint64_t)total);
	if (rc < 0)
		return rc;
	rc = rbd_aio_create_completion((void *)(((uintptr_t)total << 1) | (write ? ARG_WRITE : 0)),
				       NULL, c);
	if (rc < 0)
		return rc;
	rc = write ? rbd_aio_writev(io->image, iov, iovcnt, off, *c)
		   : rbd_aio_readv(io->image, iov, iovcnt, off, *c);
	if (rc < 0)
		rbd_aio_release(*c);
	return rc;
}

/*
 * Wait for a transfer start_io began; bytes moved or -errno. librbd completes a write with
 * 0 and a read with the bytes it filled. A read is reported as librbd counted it: should
 * the image shrink between check_range and the read, claiming the whole length would pass
 * off stale buffer bytes as data.
 */
static ssize_t wait_io(rbd_completion_t c)
{
	uintptr_t arg = (uintptr_t)rbd_aio_get_arg(c);
	ssize_t total = (ssize_t)(arg >> 1);
	ssize_t ret = finish(c);

	if (ret < 0)
		return ret;
	return (arg & ARG_WRITE) ? total : (ret > total ? total : ret);
}

static ssize_t vector_io(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off,
			 int write)
{
	rbd_completion_t c;
	int64_t total = iov_total(iov, iovcnt);
	int rc;

	if (total < 0)
		return total;
	if (total == 0) {
		rc = check_range(io, off, 0);
		return rc < 0 ? rc : 0;
	}
	rc = start_io(io, write, iov, iovcnt, off, total, &c);
	return rc < 0 ? rc : wait_io(c);
}

ssize_t rbd_io_readv(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return vector_io(io, iov, iovcnt, off, 0);
}

ssize_t rbd_io_writev(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off)
{
	return vector_io(io, iov, iovcnt, off, 1);
}

int rbd_io_flush(struct rbd_io *io)
{
	if (!io)
		return -EINVAL;
	return rbd_flush(io->image);
}

int rbd_io_discard(struct rbd_io *io, uint64_t off, uint64_t len)
{
	int rc = check_range(io, off, len);
	ssize_t ret;

	if (rc < 0)
		return rc;
	if (len == 0)
		return 0;
	/* Not rbd_discard: librbd silently skips the parts of a discard that do not cover a whole
	 * rbd_discard_granularity_bytes (64 KiB), which would read back as old data.
	 * rbd_write_zeroes deallocates what it can and writes zeros over the rest. */
	if (len > SSIZE_MAX)
		return -EINVAL;
	ret = rbd_write_zeroes(io->image, off, (size_t)len, 0, 0);
	return ret < 0 ? (int)ret : 0;
}

int rbd_io_stripe_period(struct rbd_io *io, uint64_t *period)
{
	rbd_image_info_t info;
	uint64_t count;
	int rc;

	if (!io || !period)
		return -EINVAL;
	rc = rbd_stat(io->image, &info, sizeof(info));
	if (rc < 0)
		return rc;
	rc = rbd_get_stripe_count(io->image, &count);
	if (rc < 0)
		return rc;
	if (info.obj_size == 0 || count == 0 || info.obj_size > UINT64_MAX / count)
		return -EOVERFLOW;
	*period = info.obj_size * count;
	return 0;
}

/* What rbd_io_allocated's callback fills; librbd calls it once per extent, in image order
 * (its ordered throttle), possibly on one of its own threads but never two at once, and
 * rbd_diff_iterate2 returns only after the last call, so the walk may live on our stack. */
struct alloc_walk {
	uint64_t lo, hi;		/* the range asked about */
	struct rbd_io_extent *out;
	size_t cap, count;
	uint64_t next;			/* on -E2BIG: the first allocated byte that did not fit */
	int err;			/* sticky: once set, every later call returns it */
};

static int alloc_cb(uint64_t off, size_t len, int exists, void *arg)
{
	struct alloc_walk *w = arg;
	struct rbd_io_extent *last;
	uint64_t end;

	/* After an abort librbd may still deliver the objects already in flight. */
	if (w->err)
		return w->err;
	if (!exists || len == 0)
		return 0;
	if (off < w->lo || off >= w->hi || (uint64_t)len > w->hi - off) {
		w->err = -EIO;
		return w->err;
	}
	end = off + len;
	last = w->count ? &w->out[w->count - 1] : NULL;
	if (last && off < last->off) { /* out of order: the "complete up to" promise breaks */
		w->err = -EIO;
		return w->err;
	}
	if (last && off <= last->off + last->len) {
		if (end > last->off + last->len)
			last->len = end - last->off;
		return 0;
	}
	if (w->count == w->cap) {
		w->next = off;
		w->err = -E2BIG;
		return w->err;
	}
	w->out[w->count].off = off;
	w->out[w->count].len = len;
	w->count++;
	return 0;
}

int rbd_io_allocated(struct rbd_io *io, uint64_t off, uint64_t len, struct rbd_io_extent *out,
		     size_t cap, size_t *count, uint64_t *next)
{
	struct alloc_walk w = { 0 };
	int rc;

	if (!out || cap == 0 || !count || !next)
		return -EINVAL;
	*count = 0;
	*next = off;
	rc = check_range(io, off, len);
	if (rc < 0)
		return rc;
	if (len == 0)
		return 0;
	w.lo = off;
	w.hi = off + len;
	w.out = out;
	w.cap = cap;
	/* fromsnap NULL: everything since the image was created; include_parent 1: a clone's
	 * unwritten objects read its parent's data, so they count as allocated; whole_object 0:
	 * per-extent answers (librbd then lists each object; its fast-diff object map only
	 * serves whole-object answers). */
	rc = rbd_diff_iterate2(io->image, NULL, off, len, 1, 0, alloc_cb, &w);
	*count = w.count;
	if (w.err == -E2BIG) {
		*next = w.next;
		return -E2BIG;
	}
	if (w.err)
		return w.err;
	if (rc < 0)
		return rc;
	*next = off + len;
	return 0;
}

int rbd_io_write_same(struct rbd_io *io, uint64_t off, uint64_t len, const void *pattern,
		      size_t pattern_len)
{
	ssize_t rc;

	if (!pattern || pattern_len == 0 || len % pattern_len || len > SSIZE_MAX)
		return -EINVAL;
	rc = check_range(io, off, len);
	if (rc < 0)
		return (int)rc;
	if (len == 0)
		return 0;
	rc = rbd_writesame(io->image, off, (size_t)len, pattern, pattern_len, 0);
	return rc < 0 ? (int)rc : 0;
}

int rbd_io_compare_and_write(struct rbd_io *io, uint64_t off, size_t len, const void *cmp,
			     const void *buf, uint64_t *mismatch)
{
	uint64_t where = 0;
	ssize_t rc;

	if (!cmp || !buf || !mismatch || len == 0)
		return -EINVAL;
	rc = check_range(io, off, len);
	if (rc < 0)
		return (int)rc;
	rc = rbd_compare_and_write(io->image, off, len, cmp, buf, &where, 0);
	if (rc == -EILSEQ) {
		/* librbd (Pacific) reports it relative to off already. */
		*mismatch = where;
		return -EILSEQ;
	}
	return rc < 0 ? (int)rc : 0;
}

/* ---- the command ring's backend ops ----------------------------------------------- */

static ssize_t ring_rbd_readv(void *b, const struct iovec *iov, int cnt, uint64_t off)
{
	return rbd_io_readv(b, iov, cnt, off);
}

static ssize_t ring_rbd_writev(void *b, const struct iovec *iov, int cnt, uint64_t off)
{
	return rbd_io_writev(b, iov, cnt, off);
}

static int ring_rbd_flush(void *b)
{
	return rbd_io_flush(b);
}

static int ring_rbd_submit(void *b, int write, const struct iovec *iov, int cnt, uint64_t off,
			   void **h)
{
	int64_t total = iov_total(iov, cnt);
	rbd_completion_t c;
	int rc;

	if (total <= 0)
		return total < 0 ? (int)total : -EINVAL;
	rc = start_io(b, write, iov, cnt, off, total, &c);
	if (rc < 0)
		return rc;
	*h = c;
	return 0;
}

static ssize_t ring_rbd_reap(void *b __attribute__((unused)), void *h)
{
	return wait_io(h);
}

const struct ring_backend_ops rbd_ring_ops = {
	.readv = ring_rbd_readv,
	.writev = ring_rbd_writev,
	.flush = ring_rbd_flush,
	.submit = ring_rbd_submit,
	.reap = ring_rbd_reap,
};

const struct ring_backend_ops *rbd_io_ring_ops(void)
{
	return &rbd_ring_ops;
}

/* ---- the ublk server's backend (native/ublk_backend.h) ---------------------------------- */

struct ublk_aio {
	ublk_be_done done;
	void *arg;
	int op;
	uint64_t len;
};

static void ublk_aio_cb(rbd_completion_t c, void *arg)
{
	struct ublk_aio *a = arg;
	int64_t res = rbd_aio_get_return_value(c);

	rbd_aio_release(c);
	if (res >= 0 && a->op == UBLK_BE_WRITE)
		res = (int64_t)a->len; /* librbd completes a write with 0 */
	else if (res >= 0 && a->op != UBLK_BE_READ)
		res = 0;
	a->done(a->arg, res);
	free(a);
}

/* One librbd aio per call; the ublk loop checked the range against the image size it was
 * given, and librbd refuses anything past the image's end on its own. */
static int rbd_ublk_submit(void *ctx, int op, void *buf, uint64_t len, uint64_t off,
			   ublk_be_done done, void *arg)
{
	struct rbd_io *io = ctx;
	struct ublk_aio *a;
	rbd_completion_t c;
	int rc;

	a = malloc(sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->done = done;
	a->arg = arg;
	a->op = op;
	a->len = len;
	rc = rbd_aio_create_completion(a, ublk_aio_cb, &c);
	if (rc < 0) {
		free(a);
		return rc;
	}
	switch (op) {
	case UBLK_BE_READ:
		rc = rbd_aio_read(io->image, off, (size_t)len, buf, c);
		break;
	case UBLK_BE_WRITE:
		rc = rbd_aio_write(io->image, off, (size_t)len, buf, c);
		break;
	case UBLK_BE_FLUSH:
		rc = rbd_aio_flush(io->image, c);
		break;
	case UBLK_BE_DISCARD:
		rc = rbd_aio_discard(io->image, off, len, c);
		break;
	case UBLK_BE_WRITE_ZEROES:
		rc = rbd_aio_write_zeroes(io->image, off, (size_t)len, c, 0, 0);
		break;
	default:
		rc = -EOPNOTSUPP;
	}
	if (rc < 0) {
		rbd_aio_release(c);
		free(a);
	}
	return rc;
}

const struct ublk_backend_ops rbd_ublk_ops = {.submit = rbd_ublk_submit};

const struct ublk_backend_ops *rbd_io_ublk_ops(void)
{
	return &rbd_ublk_ops;
}
