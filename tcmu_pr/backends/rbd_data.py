"""Block data of an RBD image through native/rbd_io.c (a :class:`DataBackend`).

The C layer does the bounds checks and talks to librbd; this class only turns its negative
errno returns into :class:`StoreError` and its out-parameters into return values.  The module
``tcmu_pr._rbd_io`` is built by cffi from native/build_rbd_io.py at package build time.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from typing import Any

from tcmu_pr.backends.base import StoreError

#: Extents one rbd_io_allocated call may return before the walk continues in another.
_EXTENTS_PER_CALL = 1024
#: Bytes one allocation query should cover at most.  librbd lists every object of the range
#: (one OSD op each, `rbd_concurrent_management_ops` at a time): measured 11-15 ms per GiB
#: of 4 MiB objects against the loopback test cluster, so 8 GiB stays near 100 ms.
_SCAN_LIMIT = 8 << 30


def native_module() -> Any:
    """``tcmu_pr._rbd_io``, or StoreError(ENOENT) naming how to build it."""
    try:
        from tcmu_pr import _rbd_io  # type: ignore[attr-defined]
    except ImportError as err:
        raise StoreError(
            errno.ENOENT,
            f"the native RBD data layer is not built ({err}); "
            "build it with native/build_rbd_io.py (needs librbd-dev)",
        ) from err
    return _rbd_io


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise StoreError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


class RbdImage:
    """One open RBD image; every call is synchronous and thread-safe (librbd's guarantee).

    ``ioctx``: an open ``rados_ioctx_t`` (as an integer, see rados_cas.IoCtx.handle) to open
    the image on, sharing that RADOS client (what a gateway does: rbd_store.py); without it the
    image gets a connection of its own (config from ``conf``/$CEPH_CONF, id from
    ``client_id``/$CEPH_ID/admin).

    No ORWRITE: librbd has no OR primitive, and a read + compare-and-write loop is atomic
    only within one object (librbd's compare-and-write does not span objects), so an
    ORWRITE across an object boundary could lose another gateway's bits.
    """

    can_or_write = False

    def __init__(
        self,
        pool: str,
        image: str,
        *,
        conf: str | None = None,
        client_id: str | None = None,
        ioctx: int | None = None,
    ) -> None:
        self._mod = native_module()
        ffi, lib = self._mod.ffi, self._mod.lib
        out = ffi.new("struct rbd_io **")
        if ioctx is not None:
            rc = lib.rbd_io_open_ioctx(ioctx, image.encode(), out)
        else:
            conf = conf if conf is not None else os.environ.get("CEPH_CONF")
            client_id = client_id or os.environ.get("CEPH_ID") or "admin"
            rc = lib.rbd_io_open(
                pool.encode(),
                image.encode(),
                conf.encode() if conf else ffi.NULL,
                client_id.encode(),
                out,
            )
        _check(rc, f"opening rbd image {pool}/{image}")
        self._io = out[0]
        self._pins = 0
        self.name = f"{pool}/{image}"

    def _live(self) -> Any:
        if self._io is None:
            raise StoreError(errno.EBADF, f"rbd image {self.name} is closed")
        return self._io

    def pin(self) -> int:
        """The native handle (a ``struct rbd_io *``) as an integer, for C code that keeps it
        (the ring loop's backend ops); :meth:`close` refuses until :meth:`unpin`, so that C
        code can never call into a freed handle."""
        handle = int(self._mod.ffi.cast("uintptr_t", self._live()))
        self._pins += 1
        return handle

    def unpin(self) -> None:
        if self._pins <= 0:
            raise RuntimeError(f"rbd image {self.name} is not pinned")
        self._pins -= 1

    @property
    def size(self) -> int:
        size = self._mod.ffi.new("uint64_t *")
        _check(self._mod.lib.rbd_io_size(self._live(), size), f"size of {self.name}")
        return int(size[0])

    def readv(self, offset: int, buffers: Sequence[bytearray | memoryview]) -> int:
        """Fill ``buffers`` in order from ``offset``; returns the bytes read."""
        ffi = self._mod.ffi
        iov = ffi.new("struct iovec[]", len(buffers))
        keep = []
        for i, buf in enumerate(buffers):
            cbuf = ffi.from_buffer(buf, require_writable=True)
            keep.append(cbuf)
            iov[i].iov_base, iov[i].iov_len = cbuf, len(cbuf)
        rc = self._mod.lib.rbd_io_readv(self._live(), iov, len(buffers), offset)
        return _check(rc, f"read of {self.name} at {offset}")

    def writev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> int:
        """Write ``buffers`` back to back from ``offset``; returns the bytes written."""
        ffi = self._mod.ffi
        iov = ffi.new("struct iovec[]", len(buffers))
        keep = []
        for i, buf in enumerate(buffers):
            cbuf = ffi.from_buffer(buf)
            keep.append(cbuf)
            iov[i].iov_base, iov[i].iov_len = cbuf, len(cbuf)
        rc = self._mod.lib.rbd_io_writev(self._live(), iov, len(buffers), offset)
        return _check(rc, f"write of {self.name} at {offset}")

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        if length:
            self.readv(offset, [buf])
        return bytes(buf)

    def write(self, offset: int, data: bytes) -> None:
        if data:
            self.writev(offset, [data])

    def flush(self) -> None:
        _check(self._mod.lib.rbd_io_flush(self._live()), f"flush of {self.name}")

    def discard(self, offset: int, length: int) -> None:
        rc = self._mod.lib.rbd_io_discard(self._live(), offset, length)
        _check(rc, f"discard of {self.name} at {offset}+{length}")

    @property
    def discard_granularity(self) -> int:
        """Object size x stripe count: the unit whose whole, aligned discards remove objects.

        A discard inside an object zeroes (librbd's write_zeroes), and the OSD may free that
        space too, but librbd's allocation map still counts the object up to its size, so
        only whole periods are sure to read back as deallocated.
        """
        period = self._mod.ffi.new("uint64_t *")
        rc = self._mod.lib.rbd_io_stripe_period(self._live(), period)
        _check(rc, f"layout of {self.name}")
        return int(period[0])

    @property
    def allocation_scan_limit(self) -> int:
        """Bytes one query should cover: the cost grows with the objects in the range."""
        return _SCAN_LIMIT

    def allocated(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """The allocated extents of the range, as librbd's allocation map has them.

        librbd counts an object from its start up to its size: a write at 8 KiB into an empty
        object makes 0..12 KiB allocated; zeroing the middle of an object leaves it allocated;
        zeroing its tail (a truncate) or all of it (a removal) does not.  Never less than the
        data, so a block that holds data is never reported unallocated.
        """
        ffi, lib = self._mod.ffi, self._mod.lib
        out = ffi.new("struct rbd_io_extent[]", _EXTENTS_PER_CALL)
        count = ffi.new("size_t *")
        following = ffi.new("uint64_t *")
        end = offset + length
        while True:  # at least one call: the C layer checks the range, even an empty one
            rc = lib.rbd_io_allocated(
                self._live(), offset, end - offset, out, _EXTENTS_PER_CALL, count, following
            )
            if rc != -errno.E2BIG:
                _check(rc, f"allocation map of {self.name} at {offset}+{end - offset}")
            for i in range(count[0]):
                yield int(out[i].off), int(out[i].len)
            if rc == 0:
                return
            if following[0] <= offset:  # the C layer promises progress; never spin
                raise StoreError(errno.EIO, f"allocation map of {self.name} did not advance")
            offset = int(following[0])

    def write_same(self, offset: int, length: int, pattern: bytes) -> None:
        """Repeat ``pattern`` over ``length`` bytes (a multiple of its length)."""
        rc = self._mod.lib.rbd_io_write_same(self._live(), offset, length, pattern, len(pattern))
        _check(rc, f"write same on {self.name} at {offset}+{length}")

    def compare_and_write(self, offset: int, expected: bytes, data: bytes) -> int | None:
        """Write ``data`` if the range holds ``expected``; else the first mismatch offset."""
        if len(expected) != len(data):
            raise ValueError("compare and write needs equal compare and write lengths")
        ffi = self._mod.ffi
        mismatch = ffi.new("uint64_t *")
        rc = self._mod.lib.rbd_io_compare_and_write(
            self._live(), offset, len(data), expected, data, mismatch
        )
        if rc == -errno.EILSEQ:
            return int(mismatch[0])
        _check(rc, f"compare and write on {self.name} at {offset}")
        return None

    def or_write(self, offset: int, data: bytes) -> None:
        """Not offered (see the class docstring)."""
        raise StoreError(errno.EOPNOTSUPP, f"ORWRITE is not supported on rbd image {self.name}")

    def close(self) -> None:
        """Close the image; StoreError(EBUSY) while a ring loop still uses it (close that
        first)."""
        if self._io is not None:
            if self._pins:
                raise StoreError(errno.EBUSY, f"rbd image {self.name} is in use by a ring loop")
            self._mod.lib.rbd_io_close(self._io)
            self._io = None

    def __enter__(self) -> RbdImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
