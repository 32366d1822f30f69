/*
 * ublk server, native half (see ublk.h and docs/ublk.md).
 *
 * One thread per queue runs ublk_queue_run: it owns the queue's io_uring, on which it keeps
 * one FETCH_REQ / COMMIT_AND_FETCH_REQ per tag and, for a file image, the reads, writes,
 * fsyncs and fallocates themselves; another backend (RBD) completes through a callback that
 * queues the result and wakes the ring through an eventfd.  The kernel writes descriptors
 * into a shared mapping: each is copied once and checked (ublk_decode) before anything is
 * done with it.  Before a READ/WRITE/DISCARD/WRITE_ZEROES/FLUSH runs, the device's verdict
 * word is read; a conflict answers -EBADE, the block layer's reservation-conflict status.
 */
#define _GNU_SOURCE
#include "ublk.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

_Static_assert(sizeof(struct ublk_ctrl_cmd) == 32, "ublksrv_ctrl_cmd");
_Static_assert(sizeof(struct ublk_dev_info) == 64, "ublksrv_ctrl_dev_info");
_Static_assert(sizeof(struct ublk_io_desc) == 24, "ublksrv_io_desc");
_Static_assert(sizeof(struct ublk_io_cmd) == 16, "ublksrv_io_cmd");
_Static_assert(sizeof(struct ublk_param_basic_) == 32, "ublk_param_basic");
_Static_assert(sizeof(struct ublk_param_discard_) == 20, "ublk_param_discard");
_Static_assert(offsetof(struct ublk_params_, discard) == 40, "ublk_params");

/* Control commands that only read are _IOR, the rest _IOWR (as the 6.12 uapi defines them). */
static uint32_t ctrl_op(uint32_t nr)
{
	int rd = nr == UBLK_CTRL_GET_DEV_INFO || nr == UBLK_CTRL_GET_PARAMS ||
		 nr == UBLK_CTRL_GET_FEATURES;
	return rd ? _IOR('u', nr, struct ublk_ctrl_cmd) : _IOWR('u', nr, struct ublk_ctrl_cmd);
}

int ublk_ctrl(int ctrl_fd, uint32_t nr, uint32_t dev_id, void *buf, uint32_t len, uint64_t data0)
{
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	struct ublk_ctrl_cmd *cmd;
	int rc;

	if (len > UINT16_MAX)
		return -EINVAL;
	rc = io_uring_queue_init(4, &ring, IORING_SETUP_SQE128);
	if (rc < 0)
		return rc;
	sqe = io_uring_get_sqe(&ring);
	if (!sqe) {
		io_uring_queue_exit(&ring);
		return -EBUSY;
	}
	memset((char *)sqe, 0, 128); /* an SQE128 slot */
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = ctrl_fd;
	sqe->cmd_op = ctrl_op(nr);
	cmd = (struct ublk_ctrl_cmd *)sqe->cmd;
	cmd->dev_id = dev_id;
	cmd->queue_id = (uint16_t)-1;
	cmd->addr = (uint64_t)(uintptr_t)buf;
	cmd->len = (uint16_t)len;
	cmd->data[0] = data0;
	rc = io_uring_submit(&ring);
	if (rc >= 0) {
		do
			rc = io_uring_wait_cqe(&ring, &cqe);
		while (rc == -EINTR);
		if (rc == 0) {
			rc = cqe->res;
			io_uring_cqe_seen(&ring, cqe);
		}
	}
	io_uring_queue_exit(&ring);
	return rc;
}

/* ---- verdict ---------------------------------------------------------------------------- */

int ublk_shared_init(struct ublk_shared *sh, uint32_t nr_queues, uint32_t depth)
{
	if (!nr_queues || nr_queues > UBLK_MAX_QUEUES || !depth || depth > UBLK_DESC_AREA_DEPTH)
		return -EINVAL;
	memset(sh, 0, sizeof(*sh));
	sh->tag_seq = calloc((size_t)nr_queues * depth, sizeof(uint64_t));
	if (!sh->tag_seq)
		return -ENOMEM;
	sh->nr_queues = nr_queues;
	sh->depth = depth;
	return 0;
}

void ublk_shared_free(struct ublk_shared *sh)
{
	free(sh->tag_seq);
	sh->tag_seq = NULL;
}

/*
 * The drain handshake: a queue increments admitted[q] and stores the number in its tag's
 * slot before it loads the verdict; publish stores the verdict before it loads admitted[].
 * All four are sequentially consistent, so an I/O either saw the new verdict or has a number
 * <= the snapshot, and the publish waits for it (ublk_drained).
 */
void ublk_publish(struct ublk_shared *sh, uint32_t verdict, uint64_t lease_ms)
{
	atomic_store(&sh->lease_ms, lease_ms);
	atomic_store(&sh->verdict, verdict);
	for (uint32_t q = 0; q < sh->nr_queues; q++)
		sh->snapshot[q] = atomic_load(&sh->admitted[q]);
}

int ublk_drained(struct ublk_shared *sh)
{
	for (uint32_t q = 0; q < sh->nr_queues; q++)
		for (uint32_t t = 0; t < sh->depth; t++) {
			uint64_t seq = atomic_load(&sh->tag_seq[(size_t)q * sh->depth + t]);
			if (seq && seq <= sh->snapshot[q])
				return 0;
		}
	return 1;
}

uint64_t ublk_coarse_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- decoding --------------------------------------------------------------------------- */

int ublk_decode(const struct ublk_io_desc *d, uint64_t dev_bytes, uint32_t lbs, uint32_t buf_bytes,
		struct ublk_req *out)
{
	uint32_t op = d->op_flags & 0xff;
	uint64_t off, len;

	memset(out, 0, sizeof(*out));
	switch (op) {
	case UBLK_OP_READ:
		out->be_op = UBLK_BE_READ;
		out->need = UBLK_VERDICT_READ;
		break;
	case UBLK_OP_WRITE:
		out->be_op = UBLK_BE_WRITE;
		out->need = UBLK_VERDICT_WRITE;
		break;
	case UBLK_OP_FLUSH:
		/* SYNCHRONIZE CACHE conflicts where WRITE does (SPC-4's table, engine/conflict.py) */
		out->be_op = UBLK_BE_FLUSH;
		out->need = UBLK_VERDICT_WRITE;
		return 0;
	case UBLK_OP_DISCARD:
		out->be_op = UBLK_BE_DISCARD;
		out->need = UBLK_VERDICT_WRITE;
		break;
	case UBLK_OP_WRITE_ZEROES:
		out->be_op = UBLK_BE_WRITE_ZEROES;
		out->need = UBLK_VERDICT_WRITE;
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (!lbs || (lbs & (lbs - 1)) || lbs < 512)
		return -EINVAL;
	if (d->nr_sectors == 0 || d->start_sector > (UINT64_MAX >> 9))
		return -EINVAL;
	off = d->start_sector << 9;
	len = (uint64_t)d->nr_sectors << 9;
	if ((off | len) & (lbs - 1))
		return -EINVAL;
	if (off >= dev_bytes || len > dev_bytes - off)
		return -ERANGE;
	if ((out->be_op == UBLK_BE_READ || out->be_op == UBLK_BE_WRITE) && len > buf_bytes)
		return -EINVAL;
	out->off = off;
	out->len = len;
	return 0;
}

/* ---- the queue loop --------------------------------------------------------------------- */

enum { T_IDLE, T_KERNEL, T_BACKEND, T_HELD, T_DONE, T_CBT };
enum { K_CMD = 1, K_IO = 2, K_EVT = 3 };

struct qloop;

struct tag {
	struct qloop *ql;
	uint16_t tag;
	uint8_t state;
	uint8_t cbt_in;	   /* entered in the change map: leave when answered */
	struct ublk_req req;
	uint64_t done;	   /* bytes of a READ/WRITE done so far (short transfers resume) */
	uint64_t held_at;  /* coarse ms the I/O first waited for a lease, 0 = not held */
};

struct completion {
	uint16_t tag;
	int64_t res;
};

struct qloop {
	struct ublk_queue *q;
	struct io_uring ring;
	const struct ublk_io_desc *descs;
	size_t descs_len;
	uint8_t *bufs;
	struct tag *tags;
	uint32_t aborted;
	uint32_t in_backend;
	uint32_t held;
	uint32_t cbt_out;  /* tags punted for change tracking, not yet handed back */
	int efd;
	uint64_t efd_val;
	pthread_mutex_t lock; /* guards done[] for backend callbacks */
	struct completion *done;
	uint32_t n_done;
};

static inline uint64_t ud(int kind, uint16_t tag)
{
	return ((uint64_t)kind << 32) | tag;
}

static struct io_uring_sqe *get_sqe(struct qloop *ql)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ql->ring);
	if (!sqe) { /* full: hand what is queued to the kernel and retry */
		io_uring_submit(&ql->ring);
		sqe = io_uring_get_sqe(&ql->ring);
	}
	return sqe;
}

static int queue_io_cmd(struct qloop *ql, uint16_t tag, uint32_t nr, int32_t result)
{
	struct io_uring_sqe *sqe = get_sqe(ql);
	struct ublk_io_cmd *cmd;

	if (!sqe)
		return -EBUSY;
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_URING_CMD;
	sqe->fd = ql->q->cdev_fd;
	sqe->cmd_op = _IOWR('u', nr, struct ublk_io_cmd);
	sqe->user_data = ud(K_CMD, tag);
	cmd = (struct ublk_io_cmd *)&sqe->addr3; /* the 16-byte command area of a 64-byte SQE */
	cmd->q_id = ql->q->q_id;
	cmd->tag = tag;
	cmd->result = result;
	cmd->addr = (uint64_t)(uintptr_t)(ql->bufs + (size_t)tag * ql->q->buf_bytes);
	ql->tags[tag].state = T_KERNEL;
	return 0;
}

/* Answer the kernel and ask for the tag's next request. */
static void commit(struct qloop *ql, struct tag *t, int64_t res)
{
	struct ublk_queue *q = ql->q;

	if (res < 0 && res != -EBADE)
		q->stats.errors++;
	if (t->cbt_in) { /* the write is over (done or failed): the snapshot taker may go on */
		tcmu_cbt_leave(q->cbt);
		t->cbt_in = 0;
	}
	atomic_store(&q->sh->tag_seq[(size_t)q->q_id * q->sh->depth + t->tag], 0);
	t->held_at = 0;
	queue_io_cmd(ql, t->tag, UBLK_IOCMD_COMMIT_AND_FETCH_REQ, (int32_t)res);
}

static void be_done(void *arg, int64_t res)
{
	struct tag *t = arg;
	struct qloop *ql = t->ql;
	uint64_t one = 1;

	pthread_mutex_lock(&ql->lock);
	ql->done[ql->n_done].tag = t->tag;
	ql->done[ql->n_done].res = res;
	ql->n_done++;
	pthread_mutex_unlock(&ql->lock);
	(void)!write(ql->efd, &one, sizeof(one));
}

/* Start (or resume) the backend part of an admitted request. */
static void start_io(struct qloop *ql, struct tag *t)
{
	struct ublk_queue *q = ql->q;
	uint8_t *buf = ql->bufs + (size_t)t->tag * q->buf_bytes;
	struct ublk_req *r = &t->req;
	struct io_uring_sqe *sqe;
	int rc;

	t->state = T_BACKEND;
	ql->in_backend++;
	if (q->file_fd < 0) {
		rc = q->ops->submit(q->ctx, r->be_op, buf, r->len, r->off, be_done, t);
		if (rc < 0) {
			ql->in_backend--;
			commit(ql, t, rc);
		}
		return;
	}
	sqe = get_sqe(ql);
	if (!sqe) {
		ql->in_backend--;
		commit(ql, t, -EIO);
		return;
	}
	switch (r->be_op) {
	case UBLK_BE_READ:
		io_uring_prep_read(sqe, q->file_fd, buf + t->done, (unsigned)(r->len - t->done),
				   r->off + t->done);
		break;
	case UBLK_BE_WRITE:
		io_uring_prep_write(sqe, q->file_fd, buf + t->done, (unsigned)(r->len - t->done),
				    r->off + t->done);
		break;
	case UBLK_BE_FLUSH:
		io_uring_prep_fsync(sqe, q->file_fd, IORING_FSYNC_DATASYNC);
		break;
	case UBLK_BE_DISCARD:
		io_uring_prep_fallocate(sqe, q->file_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					(off_t)r->off, (off_t)r->len);
		break;
	default:
		io_uring_prep_fallocate(sqe, q->file_fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
					(off_t)r->off, (off_t)r->len);
		break;
	}
	sqe->user_data = ud(K_IO, t->tag);
}

/* A backend result: resume a short transfer, else answer the kernel. */
static void io_finished(struct qloop *ql, struct tag *t, int64_t res)
{
	struct ublk_req *r = &t->req;

	ql->in_backend--;
	if (r->be_op == UBLK_BE_READ || r->be_op == UBLK_BE_WRITE) {
		if (res == 0)
			res = -EIO; /* the image shrank under us: never loop on it */
		if (res > 0) {
			t->done += (uint64_t)res;
			if (t->done < r->len) {
				start_io(ql, t);
				return;
			}
			res = (int64_t)r->len;
		}
	} else if (res > 0) {
		res = 0;
	}
	commit(ql, t, res);
}

/*
 * Hand a write to the server's Python side, which waits out a snapshot being taken and
 * copies the old data of its blocks into the live snapshots (durably) before it comes back
 * through ublk_cbt_resume; the tag keeps its admission number meanwhile (a verdict change
 * drains it like any I/O).
 */
static void punt_cbt(struct qloop *ql, struct tag *t)
{
	struct ublk_queue *q = ql->q;
	struct ublk_cbt_punt p = {
		.q_id = q->q_id, .tag = t->tag, .off = t->req.off, .len = t->req.len,
	};
	ssize_t n;

	t->state = T_CBT;
	ql->in_backend++;
	ql->cbt_out++;
	do
		n = write(q->cbt_fd, &p, sizeof(p));
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(p)) { /* no Python side to copy first: never write unsaved */
		ql->in_backend--;
		ql->cbt_out--;
		commit(ql, t, -EIO);
	}
}

/* A request the kernel handed over: check it, check the verdict, start it. */
static void dispatch(struct qloop *ql, struct tag *t)
{
	struct ublk_queue *q = ql->q;
	struct ublk_shared *sh = q->sh;
	struct ublk_io_desc d;
	uint64_t lease, seq, now;
	uint32_t verdict;
	int rc;

	if (t->state != T_HELD) {
		/* one copy out of the shared mapping: the kernel may not change it under a
		 * running request, but nothing we decide may rest on that */
		memcpy(&d, (const void *)&ql->descs[t->tag], sizeof(d));
		rc = ublk_decode(&d, q->dev_bytes, q->lbs, q->buf_bytes, &t->req);
		if (rc < 0) {
			q->stats.bad++;
			commit(ql, t, rc == -ERANGE ? -EIO : rc);
			return;
		}
		t->done = 0;
	}
	lease = atomic_load(&sh->lease_ms);
	if (lease) {
		now = ublk_coarse_ms();
		if (now >= lease) { /* cannot vouch for the verdict: wait, never guess */
			if (!t->held_at) {
				t->held_at = now;
				q->stats.held++;
			}
			if (now - t->held_at < UBLK_HOLD_MS) {
				if (t->state != T_HELD)
					ql->held++;
				t->state = T_HELD;
				return;
			}
			if (t->state == T_HELD)
				ql->held--;
			commit(ql, t, -EIO);
			return;
		}
	}
	if (t->state == T_HELD)
		ql->held--;
	seq = atomic_fetch_add(&sh->admitted[q->q_id], 1) + 1;
	atomic_store(&sh->tag_seq[(size_t)q->q_id * sh->depth + t->tag], seq);
	verdict = atomic_load(&sh->verdict);
	if (!(verdict & t->req.need)) {
		q->stats.conflicts++;
		commit(ql, t, -EBADE);
		return;
	}
	switch (t->req.be_op) {
	case UBLK_BE_READ: q->stats.reads++; break;
	case UBLK_BE_WRITE: q->stats.writes++; break;
	case UBLK_BE_FLUSH: q->stats.flushes++; break;
	case UBLK_BE_DISCARD: q->stats.discards++; break;
	default: q->stats.zeroes++; break;
	}
	/*
	 * Change-tracking hook: every admitted WRITE, DISCARD and WRITE_ZEROES passes here,
	 * with t->req.off/len in bytes, before the backend sees it.  Its blocks are marked
	 * before it is issued; what needs a wait or a copy first goes to Python (punt_cbt).
	 */
	if (q->cbt && q->file_fd >= 0) {
		rc = ublk_cbt_begin(q->cbt, &t->req);
		if (rc == 1) {
			punt_cbt(ql, t);
			return;
		}
		t->cbt_in = rc == 0;
	}
	start_io(ql, t);
}

int ublk_cbt_begin(struct cbt_map *m, const struct ublk_req *r)
{
	if (r->be_op != UBLK_BE_WRITE && r->be_op != UBLK_BE_DISCARD &&
	    r->be_op != UBLK_BE_WRITE_ZEROES)
		return -1;
	return tcmu_cbt_write_begin(m, r->off, r->len);
}

int ublk_cbt_resume(struct ublk_queue *q, uint16_t tag, int32_t res)
{
	struct qloop *ql = q->priv;
	uint64_t one = 1;

	if (!ql || tag >= q->depth || ql->tags[tag].state != T_CBT)
		return -EINVAL;
	/* the wake-up under the lock: once the loop has taken the last punt back it may free
	 * ql, and nothing here may touch it after that */
	pthread_mutex_lock(&ql->lock);
	ql->done[ql->n_done].tag = tag;
	ql->done[ql->n_done].res = res > 0 ? -EIO : res;
	ql->n_done++;
	(void)!write(ql->efd, &one, sizeof(one));
	pthread_mutex_unlock(&ql->lock);
	return 0;
}

/* A punted tag came back from Python: write it (entered there), or answer its error. */
static void cbt_resumed(struct qloop *ql, struct tag *t, int64_t res)
{
	ql->in_backend--;
	ql->cbt_out--;
	if (res < 0) {
		commit(ql, t, res);
		return;
	}
	t->cbt_in = 1;
	start_io(ql, t);
}

static int arm_efd(struct qloop *ql)
{
	struct io_uring_sqe *sqe = get_sqe(ql);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, ql->efd, &ql->efd_val, sizeof(ql->efd_val), 0);
	sqe->user_data = ud(K_EVT, 0);
	return 0;
}

static void reap_backend(struct qloop *ql)
{
	struct completion batch[UBLK_DESC_AREA_DEPTH > 256 ? 256 : UBLK_DESC_AREA_DEPTH];
	uint32_t n;

	do {
		pthread_mutex_lock(&ql->lock);
		n = ql->n_done < 256 ? ql->n_done : 256;
		memcpy(batch, ql->done + (ql->n_done - n), n * sizeof(batch[0]));
		ql->n_done -= n;
		pthread_mutex_unlock(&ql->lock);
		for (uint32_t i = 0; i < n; i++)
			if (batch[i].tag < ql->q->depth) {
				struct tag *t = &ql->tags[batch[i].tag];
				if (t->state == T_CBT)
					cbt_resumed(ql, t, batch[i].res);
				else
					io_finished(ql, t, batch[i].res);
			}
	} while (n);
}

static void on_cqe(struct qloop *ql, struct io_uring_cqe *cqe)
{
	int kind = (int)(cqe->user_data >> 32);
	uint32_t tag = (uint32_t)(cqe->user_data & 0xffff);
	struct tag *t;

	if (kind == K_EVT) {
		reap_backend(ql);
		if (cqe->res >= 0 || cqe->res == -EINTR || cqe->res == -EAGAIN)
			arm_efd(ql);
		return;
	}
	if (tag >= ql->q->depth)
		return;
	t = &ql->tags[tag];
	if (kind == K_IO) {
		io_finished(ql, t, cqe->res);
		return;
	}
	if (cqe->res == 0) { /* UBLK_IO_RES_OK: a request is waiting in the descriptor */
		dispatch(ql, t);
		return;
	}
	/* aborted (device going away) or refused: this tag gets nothing more */
	if (t->state != T_DONE) {
		t->state = T_DONE;
		ql->aborted++;
	}
}

static void qloop_free(struct qloop *ql)
{
	if (ql->descs)
		munmap((void *)ql->descs, ql->descs_len);
	if (ql->efd >= 0)
		close(ql->efd);
	free(ql->bufs);
	free(ql->tags);
	free(ql->done);
	pthread_mutex_destroy(&ql->lock);
	free(ql);
}

int ublk_queue_run(struct ublk_queue *q)
{
	struct qloop *ql;
	long page = sysconf(_SC_PAGESIZE);
	size_t slot, off;
	struct io_uring_cqe *cqe;
	int rc;

	if (!q->depth || q->depth > UBLK_DESC_AREA_DEPTH || q->buf_bytes % page || !q->buf_bytes ||
	    !q->sh || q->q_id >= q->sh->nr_queues || q->depth != q->sh->depth ||
	    (q->file_fd < 0 && (!q->ops || !q->ops->submit)))
		return -EINVAL;
	ql = calloc(1, sizeof(*ql));
	if (!ql)
		return -ENOMEM;
	ql->q = q;
	ql->efd = -1;
	pthread_mutex_init(&ql->lock, NULL);
	q->priv = ql;
	rc = -ENOMEM;
	ql->tags = calloc(q->depth, sizeof(*ql->tags));
	ql->done = calloc(q->depth, sizeof(*ql->done));
	if (!ql->tags || !ql->done ||
	    posix_memalign((void **)&ql->bufs, (size_t)page, (size_t)q->depth * q->buf_bytes))
		goto out;
	for (uint16_t i = 0; i < q->depth; i++) {
		ql->tags[i].ql = ql;
		ql->tags[i].tag = i;
	}
	/* each queue's descriptors sit at its own slot, sized for the deepest queue */
	slot = ((size_t)UBLK_DESC_AREA_DEPTH * sizeof(struct ublk_io_desc) + page - 1) / page * page;
	off = (size_t)q->q_id * slot;
	ql->descs_len = ((size_t)q->depth * sizeof(struct ublk_io_desc) + page - 1) / page * page;
	ql->descs = mmap(NULL, ql->descs_len, PROT_READ, MAP_SHARED | MAP_POPULATE, q->cdev_fd,
			 (off_t)off);
	if (ql->descs == MAP_FAILED) {
		ql->descs = NULL;
		rc = -errno;
		goto out;
	}
	rc = io_uring_queue_init(2 * q->depth + 8, &ql->ring, 0);
	if (rc < 0)
		goto out;
	if (q->file_fd < 0 || q->cbt) { /* backend callbacks, tracked writes handed back */
		ql->efd = eventfd(0, EFD_CLOEXEC);
		if (ql->efd < 0 || arm_efd(ql) < 0) {
			rc = -errno;
			goto out_ring;
		}
	}
	for (uint16_t i = 0; i < q->depth; i++)
		queue_io_cmd(ql, i, UBLK_IOCMD_FETCH_REQ, -1);
	rc = io_uring_submit(&ql->ring);
	if (rc < 0)
		goto out_ring;
	atomic_store(&q->ready, 1);
	rc = 0;
	while (ql->aborted < q->depth || ql->in_backend) {
		if (ql->held) {
			struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
			rc = io_uring_submit_and_wait_timeout(&ql->ring, &cqe, 1, &ts, NULL);
		} else {
			rc = io_uring_submit_and_wait(&ql->ring, 1);
		}
		if (rc < 0 && rc != -EINTR && rc != -ETIME && rc != -EAGAIN && rc != -EBUSY)
			break;
		rc = 0;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&ql->ring, head, cqe) {
			on_cqe(ql, cqe);
			n++;
		}
		io_uring_cq_advance(&ql->ring, n);
		if (ql->held)
			for (uint16_t i = 0; i < q->depth; i++)
				if (ql->tags[i].state == T_HELD)
					dispatch(ql, &ql->tags[i]);
	}
out_ring:
	io_uring_queue_exit(&ql->ring); /* first: its pending eventfd read would eat our wake-ups */
	/* a backend callback still owed to us would write into freed memory: wait for it */
	while ((ql->in_backend && q->file_fd < 0) || ql->cbt_out) {
		uint64_t v;
		if (read(ql->efd, &v, sizeof(v)) < 0 && errno != EINTR)
			break;
		pthread_mutex_lock(&ql->lock);
		for (uint32_t i = 0; i < ql->n_done; i++) {
			struct tag *t;
			if (ql->done[i].tag >= q->depth)
				continue;
			t = &ql->tags[ql->done[i].tag];
			if (t->state == T_CBT) {
				ql->cbt_out--;
				t->state = T_DONE;
				if (ql->done[i].res == 0) /* entered for us: never leave it counted */
					tcmu_cbt_leave(q->cbt);
			}
		}
		ql->in_backend -= ql->n_done;
		ql->n_done = 0;
		pthread_mutex_unlock(&ql->lock);
	}
	for (uint16_t i = 0; q->cbt && i < q->depth; i++)
		if (ql->tags[i].cbt_in) /* a write cut off by a fatal error */
			tcmu_cbt_leave(q->cbt);
out:
	q->priv = NULL;
	qloop_free(ql);
	return rc;
}
