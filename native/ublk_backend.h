/*
 * The asynchronous backend interface of the ublk server's queue loop (native/ublk.c).
 *
 * Kept apart from ublk.h so that a backend (native/rbd_io.c) implements it without seeing
 * the loop: the loop serves file images itself, on its own io_uring; any other store hands
 * it this table.  submit() starts one operation and returns 0, after which done(arg, res)
 * is called exactly once, from any thread (librbd calls it from its own); a negative return
 * means nothing was started and done will not be called.
 */
#ifndef TCMU_PR_UBLK_BACKEND_H
#define TCMU_PR_UBLK_BACKEND_H

#include <stdint.h>

/* Operations a backend is asked for (not the kernel's UBLK_IO_OP_* numbers). */
#define UBLK_BE_READ 0
#define UBLK_BE_WRITE 1
#define UBLK_BE_FLUSH 2
#define UBLK_BE_DISCARD 3	/* deallocate; reads return zeros afterwards */
#define UBLK_BE_WRITE_ZEROES 4

/* res: bytes transferred for READ/WRITE, 0 for the others, or -errno. */
typedef void (*ublk_be_done)(void *arg, int64_t res);

struct ublk_backend_ops {
	int (*submit)(void *ctx, int op, void *buf, uint64_t len, uint64_t off, ublk_be_done done,
		      void *arg);
};

#endif
