"""cffi build (API mode, out of line) of native/rbd_io.c as the module ``tcmu_pr._rbd_io``.

Hook into the package build with ``setup(cffi_modules=["native/build_rbd_io.py:ffibuilder"])``;
``python native/build_rbd_io.py OUTDIR`` builds it by hand (tests do that into a temporary dir).
Needs librbd-dev and librados-dev.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct rbd_io;
int rbd_io_open(const char *pool, const char *image, const char *conf, const char *client_id,
                struct rbd_io **out);
int rbd_io_open_ioctx(uintptr_t ioctx, const char *image, struct rbd_io **out);
void rbd_io_close(struct rbd_io *io);
int rbd_io_size(struct rbd_io *io, uint64_t *size);
ssize_t rbd_io_readv(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off);
ssize_t rbd_io_writev(struct rbd_io *io, const struct iovec *iov, int iovcnt, uint64_t off);
int rbd_io_flush(struct rbd_io *io);
int rbd_io_discard(struct rbd_io *io, uint64_t off, uint64_t len);
int rbd_io_stripe_period(struct rbd_io *io, uint64_t *period);
struct rbd_io_extent { uint64_t off; uint64_t len; };
int rbd_io_allocated(struct rbd_io *io, uint64_t off, uint64_t len, struct rbd_io_extent *out,
                     size_t cap, size_t *count, uint64_t *next);
int rbd_io_write_same(struct rbd_io *io, uint64_t off, uint64_t len, const void *pattern,
                      size_t pattern_len);
int rbd_io_compare_and_write(struct rbd_io *io, uint64_t off, size_t len, const void *cmp,
                             const void *buf, uint64_t *mismatch);
struct ring_backend_ops { ...; };
const struct ring_backend_ops *rbd_io_ring_ops(void);
struct ublk_backend_ops { ...; };
const struct ublk_backend_ops *rbd_io_ublk_ops(void);
"""


def make_builder(*, absolute: bool = False) -> FFI:
    """The builder; setuptools wants source paths relative to the project root (its cwd),
    while ``FFI.compile`` changes into its output directory and so needs absolute ones."""

    def where(path: Path) -> str:
        return str(path) if absolute else os.path.relpath(path, Path.cwd())

    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "tcmu_pr._rbd_io",
        '#include "rbd_io.h"',
        sources=[where(HERE / "rbd_io.c")],
        include_dirs=[where(HERE)],
        libraries=["rbd", "rados"],
        extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror"],
    )
    return builder


def build(outdir: str | os.PathLike[str]) -> str:
    """Compile into ``outdir`` (the module lands in ``outdir/tcmu_pr/``); returns its path."""
    return make_builder(absolute=True).compile(tmpdir=os.fspath(outdir), verbose=False)


ffibuilder = make_builder()

if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else "."))
