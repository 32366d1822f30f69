"""cffi (API mode) build of the native ring loop: ``tcmu_pr._ring_native``.

setup.py lists this file in ``cffi_modules``; tests also call :func:`make_builder` to build
an instrumented copy (AddressSanitizer/UBSan) into a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "tcmu_pr._ring_native"

#: The part of ring.h Python sees; structs with "...;" let the compiler fill in layouts.
CDEF = """
#define RING_VERDICT_READ ...
#define RING_VERDICT_WRITE ...
#define RING_VERDICT_UA ...
#define RING_VERDICT_KNOWN ...
#define RING_NEXUS_SLOTS ...
#define RING_ERR_MAILBOX ...
#define RING_ERR_HEAD ...
#define RING_ERR_ENTRY ...
#define RING_ERR_PENDING ...
#define RING_ERR_NOT_CMD ...
#define RING_ERR_IOV ...
#define RING_MAX_PUNTS ...
#define RING_MAX_INFLIGHT ...
#define RING_MB_CMD_HEAD ...
#define RING_MB_CMD_TAIL ...
#define RING_MAILBOX_SIZE ...
#define RING_REQ_IOV_CNT ...
#define RING_REQ_CDB_OFF ...
#define RING_REQ_NEXUS_HANDLE ...
#define RING_HDR_KFLAGS ...
#define RING_REQ_IOV ...
#define RING_RSP_SCSI_STATUS ...
#define RING_RSP_READ_LEN ...
#define RING_RSP_SENSE ...
#define RING_ENTRY_SIZE ...

struct ring_backend_ops { ...; };
struct ring_file_backend { int fd; ...; };
const struct ring_backend_ops *tcmu_ring_file_ops(void);
const struct ring_backend_ops *tcmu_ring_file_deferred_ops(void);

struct ring_stats {
    uint64_t cmds; uint64_t fast; uint64_t punted; uint64_t conflicts; uint64_t bad;
    uint64_t tmrs; uint64_t pads; uint64_t kicks; uint64_t submitted; uint64_t flushes;
};
struct ring_ctx {
    uint32_t cmdr_off; uint32_t cmdr_size; uint64_t data_off; uint16_t mb_flags;
    uint32_t verdict; uint32_t scan; uint32_t n_pending; struct ring_stats stats;
    uint32_t busy; uint64_t lease_ms; uint32_t max_transfer; uint32_t write_through;
    uint32_t nexus_mode; uint32_t nexus_verdict[...]; ...;
};

int tcmu_ring_init(struct ring_ctx *ctx, void *map, uint64_t map_size, int kick_fd,
                   const struct ring_backend_ops *ops, void *backend, uint64_t dev_size,
                   uint32_t block_size);
int tcmu_ring_process(struct ring_ctx *ctx, uint32_t *punts, uint32_t max_punts);
int tcmu_ring_cdb(struct ring_ctx *ctx, uint32_t entry_off, uint8_t *buf, uint32_t buflen);
int64_t tcmu_ring_data_len(struct ring_ctx *ctx, uint32_t entry_off);
int64_t tcmu_ring_gather(struct ring_ctx *ctx, uint32_t entry_off, uint8_t *buf,
                         uint64_t buflen);
int64_t tcmu_ring_complete(struct ring_ctx *ctx, uint32_t entry_off, uint8_t status,
                           const uint8_t *sense, uint32_t sense_len, const uint8_t *data,
                           uint64_t data_len);
int tcmu_ring_configure(struct ring_ctx *ctx, uint32_t max_transfer, int write_through);
int tcmu_ring_rw_usage(uint8_t opcode, uint8_t *out);
int tcmu_ring_commit(struct ring_ctx *ctx);
uint32_t tcmu_ring_publish(struct ring_ctx *ctx, uint32_t verdict, uint64_t lease_ms);
uint32_t tcmu_ring_publish_nexus(struct ring_ctx *ctx, uint64_t handle, uint32_t verdict,
                                 uint64_t lease_ms);
void tcmu_ring_nexus_mode(struct ring_ctx *ctx, uint32_t on);
int64_t tcmu_ring_nexus(struct ring_ctx *ctx, uint32_t entry_off);
int tcmu_ring_kflags(struct ring_ctx *ctx, uint32_t entry_off);
#define CBT_HEADER_SIZE ...
#define CBT_OFF_NUMBER ...
#define CBT_OFF_INFLIGHT ...
#define CBT_OFF_FREEZE ...
#define CBT_OFF_COW ...
struct cbt_map { uint64_t block_count; uint32_t block_shift; uint64_t marked; uint64_t punted;
                 ...; };
uint64_t tcmu_cbt_file_size(uint64_t block_count);
int tcmu_cbt_attach(struct cbt_map *m, void *base, uint64_t len);
int tcmu_cbt_enter(struct cbt_map *m, int force);
void tcmu_cbt_leave(struct cbt_map *m);
int tcmu_cbt_mark(struct cbt_map *m, uint64_t off, uint64_t len);
int tcmu_cbt_write_begin(struct cbt_map *m, uint64_t off, uint64_t len);
void tcmu_cbt_set_freeze(struct cbt_map *m, uint32_t on);
uint32_t tcmu_cbt_inflight(struct cbt_map *m);
void tcmu_cbt_reset_inflight(struct cbt_map *m);
int tcmu_ring_cbt(struct ring_ctx *ctx, struct cbt_map *cbt);
int tcmu_ring_run(struct ring_ctx *ctx, int wait_fd, uint32_t event_size, int timeout_ms,
                  uint32_t *punts, uint32_t max_punts);
"""

#: ring.c and the change-block tracking it calls on writes
SOURCES = ("ring.c", "cbt.c")

CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"]


def make_builder(
    module: str = MODULE,
    extra_cflags: list[str] | None = None,
    extra_ldflags: list[str] | None = None,
    *,
    absolute: bool = False,
) -> FFI:
    """An FFI builder for the ring module, optionally with sanitizer flags.

    setup.py needs source paths relative to the repository (setuptools refuses absolute
    ones); ``FFI.compile`` into another directory needs ``absolute=True``.
    """
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module,
        '#include "ring.h"',
        sources=[str(HERE / n) if absolute else os.path.relpath(HERE / n) for n in SOURCES],
        include_dirs=[str(HERE)],
        extra_compile_args=CFLAGS + (extra_cflags or []),
        extra_link_args=extra_ldflags or [],
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
