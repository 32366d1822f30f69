"""cffi (API mode) build of the ublk server's native half: ``tcmu_pr._ublk_native``.

setup.py lists this file in ``cffi_modules``; tests call :func:`make_builder` for an
instrumented copy (AddressSanitizer/UBSan) in a temporary directory.  Links liburing
(Debian: liburing-dev to build, liburing2 to run) and compiles native/cbt.c in; not librbd:
an RBD image's ops table comes from ``tcmu_pr._rbd_io`` as an address.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "tcmu_pr._ublk_native"

CDEF = """
#define UBLK_CTRL_GET_DEV_INFO ...
#define UBLK_CTRL_ADD_DEV ...
#define UBLK_CTRL_DEL_DEV ...
#define UBLK_CTRL_START_DEV ...
#define UBLK_CTRL_STOP_DEV ...
#define UBLK_CTRL_SET_PARAMS ...
#define UBLK_CTRL_GET_PARAMS ...
#define UBLK_CTRL_START_USER_RECOVERY ...
#define UBLK_CTRL_END_USER_RECOVERY ...
#define UBLK_CTRL_GET_FEATURES ...
#define UBLK_FLAG_USER_RECOVERY ...
#define UBLK_FLAG_USER_RECOVERY_REISSUE ...
#define UBLK_FLAG_CMD_IOCTL_ENCODE ...
#define UBLK_STATE_DEAD ...
#define UBLK_STATE_LIVE ...
#define UBLK_STATE_QUIESCED ...
#define UBLK_PTYPE_BASIC ...
#define UBLK_PTYPE_DISCARD ...
#define UBLK_ATTR_VOLATILE_CACHE_ ...
#define UBLK_DESC_AREA_DEPTH ...
#define UBLK_MAX_QUEUES ...
#define UBLK_VERDICT_READ ...
#define UBLK_VERDICT_WRITE ...
#define UBLK_OP_READ ...
#define UBLK_OP_WRITE ...
#define UBLK_OP_FLUSH ...
#define UBLK_OP_DISCARD ...
#define UBLK_OP_WRITE_ZEROES ...
#define UBLK_BE_READ ...
#define UBLK_BE_WRITE ...
#define UBLK_BE_FLUSH ...
#define UBLK_BE_DISCARD ...
#define UBLK_BE_WRITE_ZEROES ...

struct ublk_dev_info {
    uint16_t nr_hw_queues; uint16_t queue_depth; uint16_t state; uint16_t pad0;
    uint32_t max_io_buf_bytes; uint32_t dev_id; int32_t ublksrv_pid; uint32_t pad1;
    uint64_t flags; uint64_t ublksrv_flags; uint32_t owner_uid; uint32_t owner_gid;
    uint64_t reserved1; uint64_t reserved2;
};
struct ublk_param_basic_ {
    uint32_t attrs; uint8_t logical_bs_shift; uint8_t physical_bs_shift; uint8_t io_opt_shift;
    uint8_t io_min_shift; uint32_t max_sectors; uint32_t chunk_sectors; uint64_t dev_sectors;
    uint64_t virt_boundary_mask;
};
struct ublk_param_discard_ {
    uint32_t discard_alignment; uint32_t discard_granularity; uint32_t max_discard_sectors;
    uint32_t max_write_zeroes_sectors; uint16_t max_discard_segments; uint16_t reserved0;
};
struct ublk_params_ {
    uint32_t len; uint32_t types; struct ublk_param_basic_ basic;
    struct ublk_param_discard_ discard;
};
struct ublk_io_desc {
    uint32_t op_flags; uint32_t nr_sectors; uint64_t start_sector; uint64_t addr;
};

int ublk_ctrl(int ctrl_fd, uint32_t nr, uint32_t dev_id, void *buf, uint32_t len, uint64_t data0);

struct ublk_shared {
    uint32_t verdict; uint64_t lease_ms; uint32_t nr_queues; uint32_t depth;
    uint64_t admitted[...]; uint64_t snapshot[...]; uint64_t *tag_seq; ...;
};
int ublk_shared_init(struct ublk_shared *sh, uint32_t nr_queues, uint32_t depth);
void ublk_shared_free(struct ublk_shared *sh);
void ublk_publish(struct ublk_shared *sh, uint32_t verdict, uint64_t lease_ms);
int ublk_drained(struct ublk_shared *sh);

struct ublk_req { int be_op; uint32_t need; uint64_t off; uint64_t len; };
int ublk_decode(const struct ublk_io_desc *d, uint64_t dev_bytes, uint32_t lbs, uint32_t buf_bytes,
                struct ublk_req *out);

struct ublk_qstats {
    uint64_t reads; uint64_t writes; uint64_t flushes; uint64_t discards; uint64_t zeroes;
    uint64_t conflicts; uint64_t bad; uint64_t errors; uint64_t held;
};
struct ublk_backend_ops { ...; };
struct cbt_map { uint64_t block_count; uint32_t block_shift; uint64_t marked; uint64_t punted;
                 ...; };
struct ublk_queue {
    int cdev_fd; uint16_t q_id; uint16_t depth; uint32_t buf_bytes; uint64_t dev_bytes;
    uint32_t lbs; int file_fd; const struct ublk_backend_ops *ops; void *ctx;
    struct ublk_shared *sh; struct cbt_map *cbt; int cbt_fd; uint32_t ready;
    struct ublk_qstats stats; ...;
};
int ublk_queue_run(struct ublk_queue *q);
uint64_t ublk_coarse_ms(void);

int tcmu_cbt_attach(struct cbt_map *m, void *base, uint64_t len);
void tcmu_cbt_leave(struct cbt_map *m);
uint32_t tcmu_cbt_inflight(struct cbt_map *m);
struct ublk_cbt_punt { uint16_t q_id; uint16_t tag; uint64_t off; uint64_t len; ...; };
int ublk_cbt_begin(struct cbt_map *m, const struct ublk_req *r);
int ublk_cbt_resume(struct ublk_queue *q, uint16_t tag, int32_t res);
"""

#: the queue loop and the change-block tracking it calls on writes (docs/cbt.md)
SOURCES = ("ublk.c", "cbt.c")

CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def make_builder(
    module: str = MODULE,
    extra_cflags: list[str] | None = None,
    extra_ldflags: list[str] | None = None,
    *,
    absolute: bool = False,
) -> FFI:
    """The builder; setuptools wants relative source paths, ``FFI.compile`` elsewhere
    absolute ones (``absolute=True``)."""
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module,
        '#include "ublk.h"',
        sources=[str(HERE / n) if absolute else os.path.relpath(HERE / n) for n in SOURCES],
        include_dirs=[str(HERE)],
        libraries=["uring", "pthread"],
        extra_compile_args=CFLAGS + (extra_cflags or []),
        extra_link_args=extra_ldflags or [],
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
