"""Block data in a regular file or block device: the ``DataBackend`` of "file:PATH" stores.

Discard punches holes (``fallocate(PUNCH_HOLE | KEEP_SIZE)``), so a sparse image stays
sparse and discarded blocks read back as zeros (LBPRZ); where the filesystem cannot punch,
zeros are written instead, which keeps the LBPRZ promise at the cost of space.  The
allocation map is the filesystem's own (``SEEK_DATA`` / ``SEEK_HOLE``), so what GET LBA STATUS
calls deallocated is exactly what a punch left as a hole.

COMPARE AND WRITE and ORWRITE hold an exclusive open-file-description (OFD) range lock for
their read-modify-write, so two devices of one LU on this host — separate opens, possibly in
separate processes — cannot interleave on the same blocks; a mutex covers threads sharing
this object, which an OFD lock alone would not exclude.  Plain writes take no lock (the
native ring path writes without one too), so atomicity holds between CAWs and ORWRITEs only.

With change-block tracking on (``cbt``), every change goes through ``_tracked`` first.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from tcmu_pr.backends.base import StoreError

if TYPE_CHECKING:
    from tcmu_pr.cbt.mapfile import CbtMap

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = 1 << 20
_NO_PUNCH = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL})

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def _flock(kind: int, offset: int, length: int) -> bytes:
    """``struct flock`` for x86-64/aarch64 Linux: l_pid must be 0 for OFD locks."""
    return struct.pack("hhxxxxqqixxxx", kind, os.SEEK_SET, offset, length, 0)


class FileDataBackend:
    """A LU's data in one file (or block device), addressed in bytes."""

    can_or_write = True

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        punch_holes: bool = True,
        cbt: CbtMap | None = None,
    ) -> None:
        """Open ``path``; ``punch_holes=False`` always discards by writing zeros; ``cbt``:
        the image's change-block map, which every write marks first (this object does not
        own it)."""
        self.path = path
        self.cbt = cbt
        try:
            self._fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(exc.errno, f"cannot open data file {path}: {exc.strerror}") from exc
        mode = os.fstat(self._fd).st_mode
        if stat.S_ISBLK(mode):
            self._size = os.lseek(self._fd, 0, os.SEEK_END)
        elif stat.S_ISREG(mode):
            self._size = os.fstat(self._fd).st_size
        else:
            os.close(self._fd)
            raise StoreError(errno.EINVAL, f"{path} is neither a regular file nor a block device")
        self._can_punch = punch_holes
        self._mutex = threading.Lock()
        if not read_only:  # tracking is not switched on or off under a server (docs/cbt.md)
            from tcmu_pr.cbt.locks import hold_in_use

            hold_in_use(self._fd)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes; a file that shrank underneath reads as zeros past its end."""
        chunks, done = [], 0
        while done < length:
            chunk = os.pread(self._fd, length - done, offset + done)
            if not chunk:
                chunks.append(bytes(length - done))
                break
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)

    @contextmanager
    def _tracked(self, offset: int, length: int) -> Iterator[None]:
        """Around every write-class change: blocks marked before the data moves, and the
        live snapshots' copy-on-write done before it (docs/cbt.md)."""
        if self.cbt is None:
            yield
            return
        with self.cbt.writing(offset, length) as need_copy:
            if need_copy:
                from tcmu_pr.cbt import snapshot

                snapshot.copy_before_write(self.cbt, offset, length, self.read)
            yield

    def write(self, offset: int, data: bytes) -> None:
        with self._tracked(offset, len(data)):
            self._write(offset, data)

    def _write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def discard(self, offset: int, length: int) -> None:
        """Punch a hole; fall back to writing zeros once the filesystem says it cannot."""
        if length <= 0:
            return
        with self._tracked(offset, length):
            self._discard(offset, length)

    def _discard(self, offset: int, length: int) -> None:
        if self._can_punch:
            mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
            if _fallocate(self._fd, mode, offset, length) == 0:
                return
            err = ctypes.get_errno()
            if err not in _NO_PUNCH:
                raise OSError(err, os.strerror(err))
            self._can_punch = False
        self._write_zeros(offset, length)

    @property
    def discard_granularity(self) -> int:
        """The filesystem block (``st_blksize``): holes are whole blocks, so a discard frees
        only the blocks it covers entirely and zeroes the partial ones, which stay mapped."""
        return os.fstat(self._fd).st_blksize

    @property
    def allocation_scan_limit(self) -> None:
        """No limit: a query costs two ``lseek`` calls per extent, whatever the bytes."""
        return None

    def allocated(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """The data extents of the range, from ``SEEK_DATA`` / ``SEEK_HOLE``.

        The filesystem answers in whole blocks: a block holding one written byte is data.  A
        filesystem without hole tracking (and a block device) reports all of it as data,
        which is never wrong, only less useful.  Past the end of the file is a hole.
        """
        end = offset + length
        while offset < end:
            try:
                data = os.lseek(self._fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data at or after offset
                    return
                raise
            if data >= end:
                return
            hole = os.lseek(self._fd, data, os.SEEK_HOLE)
            if hole <= data:  # cannot happen on a sane filesystem; never spin
                raise OSError(errno.EIO, f"SEEK_HOLE did not advance in {self.path}")
            yield data, min(hole, end) - data
            offset = hole

    def _write_zeros(self, offset: int, length: int) -> None:
        zeros = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            self._write(offset, zeros[:n])
            offset += n

    @contextmanager
    def _range_locked(self, offset: int, length: int):  # type: ignore[no-untyped-def]
        with self._mutex:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, offset, length))
            try:
                yield
            finally:
                fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, offset, length))

    def compare_and_write(self, offset: int, expected: bytes, data: bytes) -> int | None:
        """Write ``data`` if the range holds ``expected``; else the first differing byte offset."""
        length = max(len(expected), len(data))
        with self._tracked(offset, len(data)), self._range_locked(offset, length):
            current = self.read(offset, len(expected))
            if current != expected:
                pairs = zip(current, expected, strict=True)
                return next(i for i, (a, b) in enumerate(pairs) if a != b)
            self._write(offset, data)
        return None

    def or_write(self, offset: int, data: bytes) -> None:
        """OR ``data`` into the range under the same lock COMPARE AND WRITE takes."""
        with self._tracked(offset, len(data)), self._range_locked(offset, len(data)):
            current = self.read(offset, len(data))
            merged = int.from_bytes(current, "little") | int.from_bytes(data, "little")
            self._write(offset, merged.to_bytes(len(data), "little"))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileDataBackend:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
