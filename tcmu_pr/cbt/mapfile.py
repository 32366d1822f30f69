"""The live map beside an image, shared by every server of the host through one mapping.

The crash rule (docs/cbt.md): a write's blocks are marked in the shared mapping before the
write is issued. The mapping is the page cache, so a killed process loses no mark; what a
host crash can lose is detected instead of made durable per write: the header's dirty flag
is set (and synced) when the first writer opens the map, with the boot id, and cleared
only by the last writer's clean close after the map itself is synced. An opener that finds
it alone with the flag set knows the last writers stopped uncleanly: same boot (process
death) the map is whole; another boot (power cut, kernel crash) the map may have lost
marks, so the generation is renewed and backup tools read everything once.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from tcmu_pr.cbt import generation, geometry, layout, locks
from tcmu_pr.cbt.generation import CbtInfo
from tcmu_pr.cbt.layout import LayoutError

BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: how long a snapshot may hold writes; a freeze older than this (its taker died) is ignored
FREEZE_BUDGET_NS = 10 * 1_000_000_000
FREEZE_GRACE_NS = 1_000_000_000


class CbtError(OSError):
    """Tracking cannot be used as asked: the message says why (nothing was changed)."""


def boot_id() -> bytes:
    with open(BOOT_ID) as f:
        return bytes.fromhex(f.read().strip().replace("-", ""))


def image_capacity(image: str) -> int:
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISBLK(st.st_mode):
            return os.lseek(fd, 0, os.SEEK_END)
        if stat.S_ISREG(st.st_mode):
            return st.st_size
        raise CbtError(errno.EINVAL, f"{image} is neither a regular file nor a block device")
    finally:
        os.close(fd)


def native() -> ModuleType:
    """The cffi module with the C side (atomics on the shared header, marking)."""
    try:
        from tcmu_pr import _ring_native  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise CbtError(errno.ENOSYS, "change-block tracking needs tcmu_pr._ring_native: "
                       "run scripts/setup") from exc  # fmt: skip
    return _ring_native


@contextmanager
def _no_server(image: str, what: str) -> Iterator[None]:
    """Hold off servers from opening ``image`` while tracking is switched; refuse at once
    if one has it open (it would keep writing without the map, or into a removed one)."""
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)  # a write lock wants a writable open
    try:
        if not locks.take_image(fd):
            raise CbtError(errno.EBUSY, f"{image} is open by a server: stop it to {what}")
        try:
            yield
        finally:
            locks.release_image(fd)
    finally:
        os.close(fd)


def enable(image: str, block_size: int | None = None) -> CbtInfo:
    """Create the map of ``image`` (a new generation, change number 1)."""
    with _no_server(image, "enable tracking"):
        return _enable(image, block_size)


def _enable(image: str, block_size: int | None) -> CbtInfo:
    capacity = image_capacity(image)
    bs = geometry.default_block_size(capacity) if block_size is None else block_size
    try:
        geometry.check_block_size(bs)
    except geometry.GeometryError as err:
        raise CbtError(errno.EINVAL, str(err)) from None
    path = layout.map_path(image)
    if os.path.exists(path):
        raise CbtError(errno.EEXIST, f"tracking is already enabled for {image} ({path})")
    head = layout.new_header(bs, capacity, generation.new_generation_id())
    tmp = f"{path}.new.{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, layout.file_size(geometry.block_count(capacity, bs)))
        os.pwrite(fd, head, 0)
        os.fsync(fd)
        os.link(tmp, path)  # fails if someone enabled meanwhile
    except FileExistsError:
        raise CbtError(errno.EEXIST, f"tracking is already enabled for {image}") from None
    finally:
        os.close(fd)
        os.unlink(tmp)
    sync_dir(path)
    with CbtMap.open(image, writer=False) as m:
        return m.info()


def disable(image: str) -> None:
    """Remove the map; refused while a server has the image open or snapshots exist."""
    path = layout.map_path(image)
    if not os.path.exists(path):
        raise CbtError(errno.ENOENT, f"tracking is not enabled for {image}")
    with _no_server(image, "disable tracking"):
        _disable(image, path)


def _disable(image: str, path: str) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CbtError(errno.ENOENT, f"tracking is not enabled for {image}") from None
    try:
        with locks.gate(fd):
            if locks.others_present(fd):
                raise CbtError(errno.EBUSY, f"{image} is open with tracking: stop its servers")
            from tcmu_pr.cbt import snapshot

            if snapshot.numbers(image):
                raise CbtError(errno.EBUSY, f"{image} has snapshots: delete them first")
            os.unlink(path)
    finally:
        os.close(fd)
    sync_dir(path)


def sync_dir(path: str) -> None:
    """Make a create, rename or unlink of ``path`` durable: its directory entry is data too."""
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class CbtMap:
    """One open of an image's map. ``writer``: this open marks writes (holds the users
    lock and keeps the dirty flag up); otherwise it only reads (info, map, diff)."""

    def __init__(self, image: str, fd: int, mm: mmap.mmap, geo: layout.Geometry,
                 writer: bool) -> None:  # fmt: skip
        self.image = image
        self.geometry = geo
        self.writer = writer
        self.recovered = ""  # what the open found: "", "process-death", "new-generation"
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        #: threads sharing this open (devices of one LU): an OFD lock does not part them
        self.copy_mutex = threading.Lock()
        mod = native()
        self.ffi: Any = mod.ffi
        self.lib: Any = mod.lib
        self._buf = self.ffi.from_buffer(mm)
        self.c = self.ffi.new("struct cbt_map *")
        if self.lib.tcmu_cbt_attach(self.c, self._buf, len(mm)):
            self.ffi.release(self._buf)
            raise CbtError(errno.EINVAL, f"{layout.map_path(image)}: the C side refuses it")

    @classmethod
    def open(cls, image: str, *, writer: bool = True) -> CbtMap:
        path = layout.map_path(image)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CbtError(errno.ENOENT, f"tracking is not enabled for {image}") from None
        try:
            length = os.fstat(fd).st_size
            if length < layout.HEADER_SIZE:
                raise LayoutError(f"{path}: shorter than its header")
            mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            try:
                geo = layout.parse(mm[: layout.HEADER_SIZE], length)
                if geo.capacity != image_capacity(image):
                    raise LayoutError(f"{image} changed size since tracking was enabled: "
                                      "disable and enable tracking again")  # fmt: skip
                self = cls(image, fd, mm, geo, writer)
            except BaseException:
                mm.close()
                raise
            with locks.gate(fd):
                if not locks.others_present(fd):
                    self._recover()
                if writer:
                    self._set(layout.OFF_DIRTY, 1)
                    self._mm_bytes(layout.OFF_BOOT, boot_id())
                    self._sync_header()
                    locks.join(fd)
        except LayoutError as err:
            os.close(fd)
            raise CbtError(errno.EINVAL, str(err)) from None
        except BaseException:
            os.close(fd)
            raise
        return self

    @classmethod
    def open_if_enabled(cls, image: str) -> CbtMap | None:
        """The writer's open for a server: None when tracking is not enabled."""
        if not os.path.exists(layout.map_path(image)):
            return None
        return cls.open(image, writer=True)

    # -- header fields -------------------------------------------------------------------

    def _get(self, off: int) -> int:
        return struct.unpack_from("<I", self.mm, off)[0]

    def _set(self, off: int, value: int) -> None:
        struct.pack_into("<I", self.mm, off, value)

    def _mm_bytes(self, off: int, value: bytes) -> None:
        self.mm[off : off + len(value)] = value

    @property
    def mm(self) -> mmap.mmap:
        if self._mm is None:
            raise CbtError(errno.EBADF, "the map is closed")
        return self._mm

    @property
    def number(self) -> int:
        return self._get(layout.OFF_NUMBER)

    @property
    def generation_id(self) -> bytes:
        return bytes(self.mm[32:48])

    def info(self) -> CbtInfo:
        g = self.geometry
        return CbtInfo(g.capacity, g.block_size, g.block_count,
                       generation.generation_text(self.generation_id), self.number)  # fmt: skip

    def map_bytes(self) -> bytes:
        g = self.geometry
        return bytes(self.mm[g.map_offset : g.map_offset + g.block_count])

    @property
    def cow(self) -> memoryview:
        g = self.geometry
        return memoryview(self.mm)[g.cow_offset : g.cow_offset + g.block_count]

    # -- crash rule ----------------------------------------------------------------------

    def _recover(self) -> None:
        """Alone under the gate: settle what the previous writers left (see module doc)."""
        if self._get(layout.OFF_DIRTY):
            if bytes(self.mm[layout.OFF_BOOT : layout.OFF_BOOT + 16]) == boot_id():
                self.recovered = "process-death"
            else:
                self.recovered = "new-generation"
                self.new_generation()
            if not self.writer:  # a reader settles it; the next writer raises it again
                self.mm.flush()
                self._set(layout.OFF_DIRTY, 0)
        self.lib.tcmu_cbt_reset_inflight(self.c)
        self._set(layout.OFF_FREEZE, 0)
        self.cow[:] = bytes(self.geometry.block_count)  # a cache of the snapshots' indexes
        self._sync_header()

    def new_generation(self) -> None:
        """Forget every mark: zero the map, new UUID, change number 1."""
        g = self.geometry
        self.mm[g.map_offset : g.map_offset + g.block_count] = bytes(g.block_count)
        self._mm_bytes(32, generation.new_generation_id())
        self._set(layout.OFF_NUMBER, generation.FIRST)

    def _sync_header(self) -> None:
        self.mm.flush(0, layout.HEADER_SIZE)

    # -- the data path -------------------------------------------------------------------

    def _enter(self) -> None:
        """Count this write in flight, waiting while a snapshot freezes the map (a freeze
        older than its budget plus a grace is its dead taker's: ignored)."""
        while self.lib.tcmu_cbt_enter(self.c, 0):
            deadline = struct.unpack_from("<Q", self.mm, layout.OFF_FREEZE_DEADLINE)[0]
            if time.monotonic_ns() > deadline + FREEZE_GRACE_NS:
                self.lib.tcmu_cbt_enter(self.c, 1)
                return
            time.sleep(0.0005)

    @contextmanager
    def writing(self, offset: int, length: int) -> Iterator[bool]:
        """Around one write: marks its blocks first; yields whether a live snapshot still
        needs the old data of one of them copied (the caller copies, then writes)."""
        need_copy = self.begin_write(offset, length)
        try:
            yield need_copy
        finally:
            self.end_write()

    def begin_write(self, offset: int, length: int) -> bool:
        """``writing`` split for a write another thread finishes (the ublk loop): entered
        and marked; True when a live snapshot still needs a block's old data copied. Pair
        with ``end_write`` (or the C side's tcmu_cbt_leave) once the write is done."""
        self._enter()
        try:
            return bool(self.lib.tcmu_cbt_mark(self.c, offset, length))
        except BaseException:
            self.end_write()
            raise

    def end_write(self) -> None:
        self.lib.tcmu_cbt_leave(self.c)

    def blocks(self, offset: int, length: int) -> range:
        r = geometry.block_range(offset, length, self.geometry.block_size)
        return range(r.start, min(r.stop, self.geometry.block_count))

    # -- close ---------------------------------------------------------------------------

    def close(self) -> None:
        """The last writer's clean close syncs the map, then clears the dirty flag."""
        if self._mm is None:
            return
        try:
            if self.writer:
                with locks.gate(self._fd):
                    locks.leave(self._fd)
                    if not locks.others_present(self._fd):
                        self.mm.flush()
                        os.fsync(self._fd)
                        self._set(layout.OFF_DIRTY, 0)
                        self._sync_header()
        finally:
            self.ffi.release(self._buf)
            self._mm.close()
            self._mm = None
            os.close(self._fd)

    def __enter__(self) -> CbtMap:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
