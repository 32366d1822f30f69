"""The PR slot of a file-backed LU: a sidecar file beside the image, swapped in by rename.

Why a sidecar and not an xattr on the image: ext4 keeps all of an inode's xattr values in one
filesystem block (4 KiB usually), not every filesystem offers ``user.*`` xattrs (tmpfs before
6.6, some NFS and overlay setups), and a v2 blob with many registrations reaches MiBs.  A plain
file has none of these limits and is as easy to inspect and back up as the image itself.

Layout, for an image ``/srv/lu0.img``:

- ``/srv/lu0.img.tcmu-pr``       the blob, exactly the stored bytes (absent = never written);
- ``/srv/lu0.img.tcmu-pr.lock``  an empty file that only serves ``flock``; never renamed or
  removed, so every writer locks the same inode;
- ``/srv/.lu0.img.tcmu-pr.*``    a temporary of a write in progress (left only by a crash,
  harmless: the next successful write does not look at it).

The compare-and-swap serialises writers of one host (two daemons = two gateways on that host)
with the lock file.  The sidecar itself cannot carry the lock: a write replaces its inode, so a
process waiting on the old inode would wake up holding a lock nobody else respects.

Readers take no lock and rely on ``rename(2)`` being atomic: ``open`` resolves the name to either
the old or the new inode, each complete, so a torn blob is never seen.  The price is a short
window where a reader can see a new blob whose directory entry is not yet fsynced; the writer
has not returned True yet, so no command was answered GOOD on it, and only a crash of this very
host (which takes the reader down too) could undo it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tcmu_pr.backends.base import StoreError

SIDECAR_SUFFIX = ".tcmu-pr"
LOCK_SUFFIX = ".tcmu-pr.lock"


def sidecar_path(image: str | os.PathLike[str]) -> Path:
    """Where the PR blob of ``image`` lives."""
    return Path(f"{os.fspath(image)}{SIDECAR_SUFFIX}")


def _describe(err: OSError) -> str:
    return err.strerror or errno.errorcode.get(err.errno or 0, str(err))


class FileSlot:
    """The ``pr_info`` slot of one image file; knows nothing of the blob's format."""

    def __init__(self, image: str | os.PathLike[str]) -> None:
        self.image = Path(image)
        self.path = sidecar_path(self.image)
        self.lock_path = Path(f"{os.fspath(self.image)}{LOCK_SUFFIX}")
        # flock is per open file description: threads sharing this slot's fd would all "own"
        # the lock, so they queue on a thread lock first.
        self._thread_lock = threading.Lock()
        self._lock_fd: int | None = None
        if not self.image.is_file():
            raise StoreError(errno.ENOENT, f"image {self.image} does not exist or is not a file")
        self._lock_fd = self._open_lock_file()

    def __repr__(self) -> str:
        return f"FileSlot({os.fspath(self.image)!r})"

    def _open_lock_file(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise StoreError(
                err.errno, f"cannot open lock file {self.lock_path}: {_describe(err)}"
            ) from err

    def read(self) -> bytes:
        """The stored blob; ``b""`` when it was never written."""
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            if not self.image.is_file():
                raise StoreError(errno.ENOENT, f"image {self.image} disappeared") from None
            return b""
        except OSError as err:
            raise StoreError(err.errno, f"cannot read {self.path}: {_describe(err)}") from err

    def compare_and_swap(self, expected: bytes, new: bytes) -> bool:
        """Store ``new`` if the sidecar still holds ``expected``; True once it is durable."""
        with self._thread_lock, self._locked():
            if self.read() != expected:
                return False
            self._replace(new)
            return True

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> FileSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive flock on the lock file."""
        self._acquire()
        try:
            yield
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _acquire(self) -> None:
        """Exclusive flock on the lock file, re-opened if it was removed meanwhile."""
        while True:
            if self._lock_fd is None:
                raise StoreError(errno.EBADF, f"{self!r} is closed")
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                held = os.fstat(self._lock_fd)
            except OSError as err:
                msg = f"cannot lock {self.lock_path}: {_describe(err)}"
                raise StoreError(err.errno, msg) from err
            try:
                now = os.stat(self.lock_path)
            except OSError:
                now = None
            if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                return
            # Someone removed or replaced the lock file: a lock on the orphan excludes nobody.
            os.close(self._lock_fd)
            self._lock_fd = None
            self._lock_fd = self._open_lock_file()

    def _replace(self, new: bytes) -> None:
        """Write ``new`` to a temporary, fsync it, rename it over the sidecar, fsync the dir."""
        directory = self.path.parent
        if not self.image.is_file():
            raise StoreError(errno.ENOENT, f"image {self.image} disappeared")
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        except OSError as err:
            raise StoreError(
                err.errno, f"cannot create a temporary in {directory}: {_describe(err)}"
            ) from err
        try:
            try:
                os.fchmod(fd, 0o644)
                view = memoryview(new)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as err:
            _unlink_quietly(tmp)
            raise StoreError(err.errno, f"cannot write {self.path}: {_describe(err)}") from err
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as err:
            # The new blob is visible but maybe not durable: the caller must not answer GOOD.
            raise StoreError(err.errno, f"cannot fsync {directory}: {_describe(err)}") from err


def _unlink_quietly(path: str) -> None:
    with suppress(OSError):
        os.unlink(path)
