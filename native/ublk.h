/*
 * The ublk server's native half: control commands on /dev/ublk-control and one io_uring loop
 * per queue on /dev/ublkcN (docs/ublk.md).
 *
 * The kernel ABI below is written out here rather than taken from <linux/ublk_cmd.h>: the
 * build host's headers (Debian 12, linux-libc-dev 6.1) predate GET_FEATURES and the
 * ioctl-encoded opcodes that the 6.12 driver we serve on wants.  Numbers and layouts follow
 * include/uapi/linux/ublk_cmd.h of Linux 6.12; the _Static_asserts in ublk.c pin the sizes.
 */
#ifndef TCMU_PR_UBLK_H
#define TCMU_PR_UBLK_H

#include <stdint.h>

#include "cbt.h"
#include "ublk_backend.h"

/* ---- kernel ABI (Linux 6.12 include/uapi/linux/ublk_cmd.h) ---------------------------- */

/* Control command numbers; sent ioctl-encoded: _IOR/_IOWR('u', nr, struct ublksrv_ctrl_cmd). */
#define UBLK_CTRL_GET_DEV_INFO 0x02
#define UBLK_CTRL_ADD_DEV 0x04
#define UBLK_CTRL_DEL_DEV 0x05
#define UBLK_CTRL_START_DEV 0x06
#define UBLK_CTRL_STOP_DEV 0x07
#define UBLK_CTRL_SET_PARAMS 0x08
#define UBLK_CTRL_GET_PARAMS 0x09
#define UBLK_CTRL_START_USER_RECOVERY 0x10
#define UBLK_CTRL_END_USER_RECOVERY 0x11
#define UBLK_CTRL_GET_FEATURES 0x13

/* Per-I/O commands on /dev/ublkcN: _IOWR('u', nr, struct ublksrv_io_cmd). */
#define UBLK_IOCMD_FETCH_REQ 0x20
#define UBLK_IOCMD_COMMIT_AND_FETCH_REQ 0x21

#define UBLK_RES_ABORT (-19) /* -ENODEV: the device is going away, the tag is done */

/* Feature / device flags (dev_info.flags, GET_FEATURES). */
#define UBLK_FLAG_USER_RECOVERY (1ull << 3)
#define UBLK_FLAG_USER_RECOVERY_REISSUE (1ull << 4)
#define UBLK_FLAG_CMD_IOCTL_ENCODE (1ull << 6)

/* dev_info.state */
#define UBLK_STATE_DEAD 0
#define UBLK_STATE_LIVE 1
#define UBLK_STATE_QUIESCED 2

/* Descriptor ops (low 8 bits of op_flags) and flags. */
#define UBLK_OP_READ 0
#define UBLK_OP_WRITE 1
#define UBLK_OP_FLUSH 2
#define UBLK_OP_DISCARD 3
#define UBLK_OP_WRITE_SAME 4
#define UBLK_OP_WRITE_ZEROES 5
#define UBLK_IOF_FUA (1u << 13)

#define UBLK_DESC_AREA_DEPTH 4096 /* UBLK_MAX_QUEUE_DEPTH: each queue's mmap slot is this big */

/* params.types, params.basic.attrs */
#define UBLK_PTYPE_BASIC (1u << 0)
#define UBLK_PTYPE_DISCARD (1u << 1)
#define UBLK_ATTR_VOLATILE_CACHE_ (1u << 2)

struct ublk_ctrl_cmd {
	uint32_t dev_id;
	uint16_t queue_id;
	uint16_t len;
	uint64_t addr;
	uint64_t data[1];
	uint16_t dev_path_len;
	uint16_t pad;
	uint32_t reserved;
};

struct ublk_dev_info {
	uint16_t nr_hw_queues;
	uint16_t queue_depth;
	uint16_t state;
	uint16_t pad0;
	uint32_t max_io_buf_bytes;
	uint32_t dev_id;
	int32_t ublksrv_pid;
	uint32_t pad1;
	uint64_t flags;
	uint64_t ublksrv_flags;
	uint32_t owner_uid;
	uint32_t owner_gid;
	uint64_t reserved1;
	uint64_t reserved2;
};

struct ublk_io_desc {
	uint32_t op_flags;
	uint32_t nr_sectors;
	uint64_t start_sector;
	uint64_t addr;
};

struct ublk_io_cmd {
	uint16_t q_id;
	uint16_t tag;
	int32_t result;
	uint64_t addr;
};

struct ublk_param_basic_ {
	uint32_t attrs;
	uint8_t logical_bs_shift;
	uint8_t physical_bs_shift;
	uint8_t io_opt_shift;
	uint8_t io_min_shift;
	uint32_t max_sectors;
	uint32_t chunk_sectors;
	uint64_t dev_sectors;
	uint64_t virt_boundary_mask;
};

struct ublk_param_discard_ {
	uint32_t discard_alignment;
	uint32_t discard_granularity;
	uint32_t max_discard_sectors;
	uint32_t max_write_zeroes_sectors;
	uint16_t max_discard_segments;
	uint16_t reserved0;
};

/* The prefix of struct ublk_params we send (len says how much; the kernel takes a prefix). */
struct ublk_params_ {
	uint32_t len;
	uint32_t types;
	struct ublk_param_basic_ basic;
	struct ublk_param_discard_ discard;
};

/* ---- control ---------------------------------------------------------------------------- */

/* One control command through a private SQE128 io_uring on ctrl_fd (/dev/ublk-control):
 * nr is the command number (UBLK_CTRL_*), sent ioctl-encoded; buf/len the command's buffer,
 * data0 its data[0].  Blocks until the kernel answers (START_DEV and END_USER_RECOVERY wait
 * for every queue's FETCH_REQs).  Returns the CQE result (>= 0) or -errno. */
int ublk_ctrl(int ctrl_fd, uint32_t nr, uint32_t dev_id, void *buf, uint32_t len, uint64_t data0);

/* ---- the verdict shared by a device's queues ------------------------------------------- */

/* Verdict bits: the same numbers as RING_VERDICT_READ/WRITE (tcmu_pr/ring/abi.py). */
#define UBLK_VERDICT_READ 1u
#define UBLK_VERDICT_WRITE 2u

#define UBLK_MAX_QUEUES 64
#define UBLK_HOLD_MS 30000 /* an I/O waits this long for a valid lease, then fails -EIO */

struct ublk_shared {
	uint32_t verdict;  /* atomic; written by Python (ublk_publish) */
	uint64_t lease_ms; /* atomic; 0 = none, else a CLOCK_MONOTONIC_COARSE deadline */
	uint32_t nr_queues;
	uint32_t depth;
	uint64_t admitted[UBLK_MAX_QUEUES];  /* atomic per-queue admission counters */
	uint64_t snapshot[UBLK_MAX_QUEUES];  /* admitted[] as the last publish saw it */
	uint64_t *tag_seq;		     /* [nr_queues * depth]: admission number, 0 = idle */
};

int ublk_shared_init(struct ublk_shared *sh, uint32_t nr_queues, uint32_t depth);
void ublk_shared_free(struct ublk_shared *sh);
/* Store a verdict and lease, then note what every queue had admitted by then. */
void ublk_publish(struct ublk_shared *sh, uint32_t verdict, uint64_t lease_ms);
/* 1 once every I/O admitted before the last publish has been answered. */
int ublk_drained(struct ublk_shared *sh);

/* ---- descriptor decoding (pure; fuzzed by native/fuzz_ublk.c) ---------------------------- */

struct ublk_req {
	int be_op;	   /* UBLK_BE_* */
	uint32_t need;	   /* UBLK_VERDICT_* bit the op needs */
	uint64_t off;	   /* bytes */
	uint64_t len;	   /* bytes */
};

/* Decode a descriptor (already copied out of shared memory) for a device of dev_bytes with
 * logical blocks of lbs bytes and per-tag buffers of buf_bytes: 0 and *out, or
 * -EOPNOTSUPP (unknown op), -EINVAL (misaligned, empty or over-long transfer), -ERANGE
 * (outside the device, overflow-safe). */
int ublk_decode(const struct ublk_io_desc *d, uint64_t dev_bytes, uint32_t lbs, uint32_t buf_bytes,
		struct ublk_req *out);

/* ---- one queue -------------------------------------------------------------------------- */

struct ublk_qstats {
	uint64_t reads, writes, flushes, discards, zeroes, conflicts, bad, errors, held;
};

struct ublk_queue {
	/* set by the caller before ublk_queue_run */
	int cdev_fd;	/* /dev/ublkcN */
	uint16_t q_id;
	uint16_t depth;
	uint32_t buf_bytes; /* per tag, = dev_info.max_io_buf_bytes */
	uint64_t dev_bytes;
	uint32_t lbs;
	int file_fd;	/* file image, or -1 with ops/ctx below */
	const struct ublk_backend_ops *ops;
	void *ctx;
	struct ublk_shared *sh;
	struct cbt_map *cbt; /* file image with change-block tracking (docs/cbt.md), or NULL */
	int cbt_fd;	/* with cbt: write end of the pipe its punted writes go to */
	/* read by the caller */
	uint32_t ready; /* atomic: every FETCH_REQ is submitted (START_DEV may go) */
	struct ublk_qstats stats;
	void *priv;	/* the loop's state */
};

/* Serve the queue until every tag is aborted (STOP_DEV/DEL_DEV) or a fatal error; 0 or
 * -errno.  Runs on the calling thread, which the kernel then binds the queue to. */
int ublk_queue_run(struct ublk_queue *q);

/* ---- change-block tracking ------------------------------------------------------------ */

/* A write the loop cannot start on its own (a snapshot is being taken, or a block still
 * needs its copy-on-write): written whole to the queue's cbt_fd (< PIPE_BUF: atomic). */
struct ublk_cbt_punt {
	uint16_t q_id;
	uint16_t tag;
	uint32_t pad;
	uint64_t off;
	uint64_t len;
};

/* The loop's tracking step for one admitted request: -1 (not a change: READ, FLUSH),
 * 0 (entered and marked: leave once it completes), 1 (nothing entered: punt). */
int ublk_cbt_begin(struct cbt_map *m, const struct ublk_req *r);

/* Hand a punted tag back: res 0 means the caller has entered the map for it and done any
 * copy-on-write (the loop writes, then leaves), else the -errno to answer with.  Exactly
 * once per punt record; -EINVAL for a tag that is not punted. */
int ublk_cbt_resume(struct ublk_queue *q, uint16_t tag, int32_t res);

/* CLOCK_MONOTONIC_COARSE in ms, the clock lease deadlines are in (tcmu_pr.ring.loop). */
uint64_t ublk_coarse_ms(void);

#endif
