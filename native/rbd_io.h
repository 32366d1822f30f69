/*
 * rbd_io: the data path of an RBD-backed LU, a thin bounds-checked layer over librbd.
 *
 * Why a C layer and not python-rbd: the TCMU ring loop hands us iovec arrays that point into
 * the shared ring mapping; passing them straight to librbd (rbd_aio_readv/writev) avoids a copy
 * and the GIL.  Python reaches the same entry points through cffi for the slow path and tests.
 *
 * Every function returns 0 (or a byte count) on success and a negative errno on failure; an
 * access outside the image answers -ERANGE before librbd is called.
 */
#ifndef TCMU_PR_RBD_IO_H
#define TCMU_PR_RBD_IO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "ring.h" /* struct ring_backend_ops */
#include "ublk_backend.h" /* struct ublk_backend_ops */

struct rbd_io;

/* Connect as client.<client_id> (NULL = "admin") with config file conf (NULL = librados'
 * usual search) and open pool/image for read-write. */
int rbd_io_open(const char *pool, const char *image, const char *conf, const char *client_id,
                struct rbd_io **out);
/* Open image on a caller's rados_ioctx_t (passed as an integer, from another binding of the
 * same librados): the image then shares that client, so blocklisting the client fences this
 * data path too.  The caller keeps the ioctx alive until rbd_io_close. */
int rbd_io_open_ioctx(uintptr_t ioctx, const char *image, struct rbd_io **out);
void rbd_io_close(struct rbd_io *io);

/* Current size in bytes (re-read from librbd: the image may have been resized). */
int rbd_io_size(struct rbd_io *io, uint64_t *size);

/* Scatter/gather I/O at byte offset off; returns the bytes transferred. */
ssize_t rbd_io_readv(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off);
ssize_t rbd_io_writev(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off);

int rbd_io_flush(struct rbd_io *io);

/* Deallocate [off, off+len) where whole granules allow, zero the rest: reads return zeros. */
int rbd_io_discard(struct rbd_io *io, uint64_t off, uint64_t len);

/* Bytes of image one object set covers (object size x stripe count): a discard of whole,
 * aligned periods removes whole objects, which is what the allocation map below can show. */
int rbd_io_stripe_period(struct rbd_io *io, uint64_t *period);

/* One allocated byte extent of the image. */
struct rbd_io_extent {
	uint64_t off;
	uint64_t len;
};

/* The allocated parts of [off, off+len) as librbd's allocation map reports them
 * (rbd_diff_iterate2 from the image's creation, parent included, extent precision): up to cap
 * extents, increasing and merged where they touch, into out[0..*count).  Everything in the
 * range not covered is unallocated and reads as zeros.  Returns 0 when the whole range is
 * described (*next = off + len); -E2BIG when more extents exist than fit: out[] is valid and
 * the answer is complete up to *next, where the caller continues; -ERANGE outside the image;
 * -EIO when librbd reports extents out of order or outside the range (never a guess). */
int rbd_io_allocated(struct rbd_io *io, uint64_t off, uint64_t len, struct rbd_io_extent *out,
                     size_t cap, size_t *count, uint64_t *next);

/* Write pattern (pattern_len bytes) repeatedly over [off, off+len); len must be a multiple
 * of pattern_len (-EINVAL otherwise). */
int rbd_io_write_same(struct rbd_io *io, uint64_t off, uint64_t len, const void *pattern,
                      size_t pattern_len);

/* Atomically: if [off, off+len) holds cmp, write buf there and return 0; otherwise write
 * nothing, set *mismatch to the offset of the first differing byte relative to off and
 * return -EILSEQ.  librbd 16 (Pacific) refuses a range that spans two 512-byte sectors with
 * -EINVAL: advertise a MAXIMUM COMPARE AND WRITE LENGTH of one 512-byte block. */
int rbd_io_compare_and_write(struct rbd_io *io, uint64_t off, size_t len, const void *cmp,
                             const void *buf, uint64_t *mismatch);

/* The command ring's backend ops over an open image (the context is a struct rbd_io *): the
 * ring loop passes its iovecs, which point into the ring mapping, straight to librbd.  The
 * ring module takes this table's address as an integer (tcmu_pr/ring/rbd_backend.py), so it
 * never links librbd itself.  A function, not the variable, crosses into Python: cffi
 * would hand out a copy of a const global, not its address. */
extern const struct ring_backend_ops rbd_ring_ops;
const struct ring_backend_ops *rbd_io_ring_ops(void);

/* The ublk server's backend over an open image (context: a struct rbd_io *), asynchronous:
 * librbd aio, its callback reports to the queue loop (native/ublk.c). */
extern const struct ublk_backend_ops rbd_ublk_ops;
const struct ublk_backend_ops *rbd_io_ublk_ops(void);

#endif
