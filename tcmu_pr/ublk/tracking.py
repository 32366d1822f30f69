"""Change-block tracking for a ublk device on a tracked file image (docs/cbt.md, docs/ublk.md).

The queue loops mark their writes themselves (native/ublk.c, before the write is issued).
A write they cannot start alone — a snapshot is being taken, or one of its blocks still
needs its old data copied for a live snapshot — comes here as a record on a pipe: this
thread waits out the freeze and copies through the same code as the Python write path
(``snapshot.copy_before_write``: the old data durable before the new lands), then hands the
tag back still entered in the map; the loop writes and leaves.  There is no other way for
such a write to go: if this side cannot take it, the loop fails it rather than write unsaved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import Any

from tcmu_pr.cbt import snapshot
from tcmu_pr.cbt.mapfile import CbtMap
from tcmu_pr.ublk.native import UblkError

log = logging.getLogger("tcmu_pr.ublk")

#: struct ublk_cbt_punt: q_id, tag, pad, off, len
PUNT = struct.Struct("<HHIQQ")
_F_SETPIPE_SZ = 1031
_PIPE_MAX = 1 << 20


class Tracking:
    """The device's side of one open map: a ``struct cbt_map`` per queue (attached to the
    shared mapping) and the thread that serves punted writes."""

    def __init__(self, mod: Any, cbt: CbtMap, read_image: Callable[[int, int], bytes],
                 nr_queues: int, depth: int) -> None:  # fmt: skip
        self._ffi, self._lib = mod.ffi, mod.lib
        if self._ffi.sizeof("struct ublk_cbt_punt") != PUNT.size:
            raise UblkError("struct ublk_cbt_punt does not match tracking.PUNT")
        self.cbt = cbt
        self._read = read_image
        # the mapping CbtMap holds (and keeps alive); each queue validates it for itself
        base = self._ffi.cast("void *", int(cbt.ffi.cast("uintptr_t", cbt._buf)))
        self.maps: list[Any] = []
        for q_id in range(nr_queues):
            m = self._ffi.new("struct cbt_map *")
            if self._lib.tcmu_cbt_attach(m, base, len(cbt.mm)):
                raise UblkError(f"change-block map of {cbt.image}: queue {q_id} refuses it")
            self.maps.append(m)
        self._r, self._w = os.pipe2(os.O_CLOEXEC)
        # room for every tag's record: a full pipe would stall a queue behind a freeze
        with contextlib.suppress(OSError):  # past pipe-max-size: the default still serves
            fcntl.fcntl(self._w, _F_SETPIPE_SZ, min(_PIPE_MAX, nr_queues * depth * PUNT.size))
        self._queues: list[Any] = []
        self._thread: threading.Thread | None = None
        self.punts = 0

    def attach(self, queues: list[Any]) -> None:
        """Give the queues (not yet running) the map and the pipe; start serving it."""
        for q, m in zip(queues, self.maps, strict=True):
            q.cbt, q.cbt_fd = m, self._w
        self._queues = queues
        self._thread = threading.Thread(target=self._serve, name="ublk cbt", daemon=True)
        self._thread.start()

    def take(self, offset: int, length: int) -> int:
        """One punted write: 0 once it is entered in the map and its copy-on-write is done
        (the caller writes, then leaves), or -errno (nothing entered)."""
        try:
            need_copy = self.cbt.begin_write(offset, length)
        except Exception:
            log.exception("change-block map: write at %d+%d", offset, length)
            return -errno.EIO
        try:
            if need_copy:
                snapshot.copy_before_write(self.cbt, offset, length, self._read)
        except Exception:
            # copy_before_write marks a snapshot corrupt for what it can foresee; anything
            # else must not let the write land over uncopied data
            log.exception("copy-on-write at %d+%d", offset, length)
            self.cbt.end_write()
            return -errno.EIO
        return 0

    def _serve(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._r, 256 * PUNT.size)
            except InterruptedError:
                continue
            if not chunk:  # the write end is closed: the queues are gone
                return
            pending += chunk
            whole = len(pending) - len(pending) % PUNT.size
            for q_id, tag, _pad, off, length in PUNT.iter_unpack(pending[:whole]):
                if q_id >= len(self._queues):
                    log.error("punt record for queue %d of %d", q_id, len(self._queues))
                    continue
                self.punts += 1
                res = self.take(off, length)
                rc = self._lib.ublk_cbt_resume(self._queues[q_id], tag, res)
                if rc < 0:
                    log.error("queue %d tag %d: cannot hand the write back", q_id, tag)
                    if res == 0:
                        self.cbt.end_write()
            pending = pending[whole:]

    def close(self) -> None:
        """After the queue loops have ended (they write to the pipe)."""
        if self._w >= 0:
            os.close(self._w)
            self._w = -1
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._r >= 0:
            os.close(self._r)
            self._r = -1

