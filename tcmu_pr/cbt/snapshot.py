"""Copy-on-write snapshots of a tracked image, with difference storage (blksnap-style).

A snapshot N is two files beside the image: IMAGE.cbt.snap-N (a header, the CBT map frozen
at creation, and an index: per block 0 or 1 + the slot of its old data) and
IMAGE.cbt.snap-N.diff (the old data, one block per slot). Until N is deleted, the first
write to a block after N copies the block's old data into every live snapshot lacking it:
data first (fdatasync), then the index entry (msync), then the live map's "copied" byte, and
only then may the new data land. A power cut therefore leaves each index entry either
absent (the image block still holds the old data) or pointing at durable old data.

A difference file that would pass its limit marks the snapshot corrupt (reads fail from
then on) and the write goes ahead: a snapshot never blocks or fails the LU's writes.

Taking a snapshot freezes the map for a moment (docs/cbt.md): the taker sets the freeze
flag and waits for the writes in flight to drain (new ones wait, or are punted by the
native loop), syncs the image, writes the snapshot, bumps the change number and lets go.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import mmap
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tcmu_pr.cbt import generation, layout, locks
from tcmu_pr.cbt.mapfile import FREEZE_BUDGET_NS, CbtError, CbtMap, image_capacity, sync_dir

MAGIC = b"TCMUSNP1"
VERSION = 1
READY, CORRUPT = 1, 2
# magic, version, number, state, changes_number, block size, block count, capacity,
# generation, diff limit (slots), next slot
_HEAD = struct.Struct("<8sIIIIIxxxxQQ16sQQ")
OFF_STATE = 16
OFF_NEXT_SLOT = 72  # the last field of _HEAD
OFF_REASON = 128
REASON_LEN = 128
_NAME = re.compile(r"\.cbt\.snap-(\d+)$")


def meta_path(image: str, number: int) -> str:
    return f"{image}.cbt.snap-{number}"


def diff_path(image: str, number: int) -> str:
    return meta_path(image, number) + ".diff"


def numbers(image: str) -> list[int]:
    """Numbers of the snapshots of ``image``, oldest first."""
    found = []
    for path in glob.glob(glob.escape(image) + ".cbt.snap-*"):
        m = _NAME.search(path[len(image) :])
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    number: int
    changes_number: int
    generation_id: str
    state: str
    diff_bytes: int
    diff_limit: int
    reason: str

    def as_json(self) -> dict[str, int | str]:
        return {
            "number": self.number,
            "changes_number": self.changes_number,
            "generation_id": self.generation_id,
            "state": self.state,
            "diff_bytes": self.diff_bytes,
            "diff_limit": self.diff_limit,
            "reason": self.reason,
        }


class Snapshot:
    """One snapshot's files, mapped (the index is shared with the writers' copies)."""

    def __init__(self, image: str, number: int) -> None:
        self.image = image
        self.number = number
        path = meta_path(image, number)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CbtError(errno.ENOENT, f"{image} has no snapshot {number}") from None
        try:
            length = os.fstat(self._fd).st_size
            if length < layout.HEADER_SIZE:
                raise CbtError(errno.EINVAL, f"{path}: shorter than its header")
            self.mm = mmap.mmap(self._fd, length, mmap.MAP_SHARED)
            (magic, version, num, _state, self.changes_number, self.block_size,
             self.block_count, self.capacity, self.generation, self.limit,
             _next) = _HEAD.unpack_from(self.mm, 0)  # fmt: skip
            rounded = layout.page_round(self.block_count)
            if (magic != MAGIC or version != VERSION or num != number or not self.block_size
                    or layout.HEADER_SIZE + rounded + 4 * self.block_count > length
                    or self.block_count != -(-self.capacity // self.block_size)):  # fmt: skip
                self.mm.close()
                raise CbtError(errno.EINVAL, f"{path}: not a snapshot of this format")
            self.map_off = layout.HEADER_SIZE
            self.index_off = layout.HEADER_SIZE + rounded
            self._diff = os.open(diff_path(image, number), os.O_RDWR | os.O_CLOEXEC)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def open(cls, image: str, number: int) -> Snapshot:
        return cls(image, number)

    # -- fields --------------------------------------------------------------------------

    @property
    def state(self) -> int:
        return struct.unpack_from("<I", self.mm, OFF_STATE)[0]

    @property
    def next_slot(self) -> int:
        return struct.unpack_from("<Q", self.mm, OFF_NEXT_SLOT)[0]

    @property
    def reason(self) -> str:
        raw = bytes(self.mm[OFF_REASON : OFF_REASON + REASON_LEN])
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def slot_of(self, block: int) -> int:
        """1 + the diff slot of ``block``'s old data, or 0 (still in the image)."""
        return struct.unpack_from("<I", self.mm, self.index_off + 4 * block)[0]

    def frozen_map(self) -> bytes:
        return bytes(self.mm[self.map_off : self.map_off + self.block_count])

    def info(self) -> SnapshotInfo:
        return SnapshotInfo(
            self.number, self.changes_number, generation.generation_text(self.generation),
            "corrupt" if self.state == CORRUPT else "ready",
            self.next_slot * self.block_size, self.limit * self.block_size, self.reason,
        )  # fmt: skip

    def mark_corrupt(self, reason: str) -> None:
        raw = reason.encode()[: REASON_LEN - 1]
        self.mm[OFF_REASON : OFF_REASON + len(raw) + 1] = raw + b"\0"
        struct.pack_into("<I", self.mm, OFF_STATE, CORRUPT)
        self.mm.flush(0, layout.HEADER_SIZE)

    # -- reading -------------------------------------------------------------------------

    def read_block(self, block: int, image_fd: int) -> bytes:
        """The block as it was at the snapshot. The image is read first and the index looked
        at again after: a copy-on-write sets the index before the new data lands, so an
        entry still absent then means the image read saw the old data."""
        off = block * self.block_size
        length = min(self.block_size, self.capacity - off)
        for _ in range(2):
            slot = self.slot_of(block)
            if slot:
                return _pread_full(self._diff, length, (slot - 1) * self.block_size)
            data = _pread_full(image_fd, length, off)
            if not self.slot_of(block):
                return data
        return _pread_full(self._diff, length, (self.slot_of(block) - 1) * self.block_size)

    def close(self) -> None:
        if self._fd >= 0:
            self.mm.close()
            os.close(self._diff)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _pread_full(fd: int, length: int, offset: int) -> bytes:
    chunks, done = [], 0
    while done < length:
        chunk = os.pread(fd, length - done, offset + done)
        if not chunk:
            chunks.append(bytes(length - done))
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


# -- create / delete / list / read ---------------------------------------------------------


def create(image: str, diff_limit: int | None = None) -> SnapshotInfo:
    """Freeze the map, write snapshot files, bump the change number (wrap: new generation)."""
    with CbtMap.open(image, writer=False) as m:
        g = m.geometry
        limit = g.block_count if diff_limit is None else -(-diff_limit // g.block_size)
        if limit < 0:
            raise CbtError(errno.EINVAL, "--diff-limit must not be negative")
        with locks.gate(m._fd):
            number = struct.unpack_from("<I", m.mm, layout.OFF_SNAP_NEXT)[0]
            deadline = time.monotonic_ns() + FREEZE_BUDGET_NS
            struct.pack_into("<Q", m.mm, layout.OFF_FREEZE_DEADLINE, deadline)
            m.lib.tcmu_cbt_set_freeze(m.c, 1)
            try:
                while m.lib.tcmu_cbt_inflight(m.c):
                    if time.monotonic_ns() > deadline - FREEZE_BUDGET_NS // 2:
                        raise CbtError(errno.ETIMEDOUT, DRAIN_FAILED)
                    time.sleep(0.0002)
                _sync_image(image)
                _write_files(image, number, m, limit)
                struct.pack_into("<I", m.mm, layout.OFF_SNAP_NEXT, number + 1)
                m.cow[:] = bytes(g.block_count)
                struct.pack_into("<I", m.mm, layout.OFF_COW, 1)
                step = generation.next_number(m.number)
                if step.new_generation:
                    m.new_generation()
                else:
                    struct.pack_into("<I", m.mm, layout.OFF_NUMBER, step.changes_number)
                m.mm.flush()
                if time.monotonic_ns() > deadline - FREEZE_GRACE_MARGIN_NS:
                    # writers may soon take the freeze for a dead taker's: do not trust it
                    _remove(image, number)
                    raise CbtError(errno.ETIMEDOUT, "taking the snapshot took too long")
            finally:
                m.lib.tcmu_cbt_set_freeze(m.c, 0)
    with Snapshot.open(image, number) as s:
        return s.info()


FREEZE_GRACE_MARGIN_NS = 1_000_000_000
DRAIN_FAILED = "writes in flight did not drain (a writer died mid-write? restart the servers)"


def _sync_image(image: str) -> None:
    """What unmodified blocks of the snapshot are read from must survive a power cut."""
    fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _write_files(image: str, number: int, m: CbtMap, limit: int) -> None:
    g = m.geometry
    meta, diff = meta_path(image, number), diff_path(image, number)
    head = bytearray(layout.HEADER_SIZE)
    _HEAD.pack_into(head, 0, MAGIC, VERSION, number, READY, m.number, g.block_size,
                    g.block_count, g.capacity, m.generation_id, limit, 0)  # fmt: skip
    rounded = layout.page_round(g.block_count)
    dfd = os.open(diff, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    tmp = meta + ".new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, layout.HEADER_SIZE + rounded + layout.page_round(4 * g.block_count))
        os.pwrite(fd, head, 0)
        os.pwrite(fd, m.map_bytes(), layout.HEADER_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, meta)
    sync_dir(meta)


def _remove(image: str, number: int) -> None:
    for path in (meta_path(image, number), diff_path(image, number)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    sync_dir(meta_path(image, number))


def delete(image: str, number: int) -> None:
    """Remove snapshot ``number``; with none left, writes stop asking for copies."""
    with CbtMap.open(image, writer=False) as m, locks.exclusive(m._fd, locks.COPY):
        if number not in numbers(image):
            raise CbtError(errno.ENOENT, f"{image} has no snapshot {number}")
        _remove(image, number)
        if not _live(image):
            struct.pack_into("<I", m.mm, layout.OFF_COW, 0)
            m.mm.flush(0, layout.HEADER_SIZE)


def _live(image: str) -> list[int]:
    live = []
    for n in numbers(image):
        try:
            with Snapshot.open(image, n) as s:
                if s.state == READY:
                    live.append(n)
        except CbtError:
            continue
    return live


def listing(image: str) -> list[SnapshotInfo]:
    out = []
    for n in numbers(image):
        try:
            with Snapshot.open(image, n) as s:
                out.append(s.info())
        except CbtError:
            continue
    return out


def read(image: str, number: int, write: Callable[[bytes], object], offset: int = 0,
         length: int | None = None) -> None:  # fmt: skip
    """Stream the point-in-time image (or ``length`` bytes of it from ``offset``) to
    ``write``; CbtError if the snapshot is (or became, while it was read) corrupt: then
    what was written must not be used."""
    with Snapshot.open(image, number) as s:
        if s.state != READY:
            raise CbtError(errno.EIO, f"snapshot {number} is corrupt: {s.reason}")
        if s.capacity != image_capacity(image):
            raise CbtError(errno.EINVAL, f"{image} changed size since snapshot {number}")
        end = s.capacity if length is None else offset + length
        if offset < 0 or end < offset or end > s.capacity:
            raise CbtError(errno.EINVAL, f"range {offset}+{end - offset} outside the image")
        fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        try:
            bs = s.block_size
            for block in range(offset // bs, -(-end // bs)):
                data = s.read_block(block, fd)
                lo = max(offset - block * bs, 0)
                write(data[lo : min(end - block * bs, len(data))])
        finally:
            os.close(fd)
        if s.state != READY:
            raise CbtError(errno.EIO, f"snapshot {number} became corrupt while read: {s.reason}")


# -- the writers' side ---------------------------------------------------------------------


def _open_live(cbt: CbtMap) -> Iterator[Snapshot]:
    for n in numbers(cbt.image):
        try:
            s = Snapshot.open(cbt.image, n)
        except CbtError:
            continue  # deleted meanwhile, or not ours to trust: no copy into it
        if s.state == READY:
            yield s
        else:
            s.close()


def copy_before_write(cbt: CbtMap, offset: int, length: int,
                      read_image: Callable[[int, int], bytes]) -> None:  # fmt: skip
    """Copy the old data of the range's blocks into every live snapshot that lacks it,
    durably, before the caller's write lands (see the module doc for the order)."""
    blocks = cbt.blocks(offset, length)
    cow = cbt.cow
    with cbt.copy_mutex, locks.exclusive(cbt._fd, locks.COPY):
        todo = [b for b in blocks if not cow[b]]
        if not todo:
            return
        snaps = list(_open_live(cbt))
        try:
            for s in snaps:
                _copy_into(s, todo, read_image)
        finally:
            for s in snaps:
                s.close()
        for b in todo:
            cow[b] = 1


def _copy_into(s: Snapshot, blocks: list[int], read_image: Callable[[int, int], bytes]) -> None:
    missing = [b for b in blocks if not s.slot_of(b)]
    if not missing:
        return
    slot = s.next_slot
    if slot + len(missing) > s.limit:
        s.mark_corrupt("difference storage full")
        return
    placed = []
    try:
        for b in missing:
            off = b * s.block_size
            data = read_image(off, min(s.block_size, s.capacity - off))
            os.pwrite(s._diff, data, slot * s.block_size)
            placed.append((b, slot))
            slot += 1
        os.fdatasync(s._diff)
    except OSError as err:  # the snapshot cannot be kept; the LU's write goes on
        s.mark_corrupt(f"difference storage: {err.strerror}")
        return
    for b, sl in placed:
        struct.pack_into("<I", s.mm, s.index_off + 4 * b, sl + 1)
    struct.pack_into("<Q", s.mm, OFF_NEXT_SLOT, slot)
    s.mm.flush()  # the index is durable before the new data may land
