"""One LU as this daemon sees it: its PR slot, the last state read, and its local devices.

Every device of a LU that this daemon serves runs its PR commands through the LU's one slot
and reads its verdict from the LU's one cached state.  After each PR change, and whenever
the stored blob changes under us (another gateway; a file sidecar's stat, or the RBD
watch/notify cache), :meth:`LogicalUnit.refresh` re-reads the blob and republishes the
verdict word of every member device, under one lock, so no device can keep a verdict older
than the state it was computed from.

Fail closed: while the blob cannot be read or decoded the state is unknown, every device's
verdict is 0 (READ/WRITE answer RESERVATION CONFLICT in the fast path) and punted commands
conflict too, until a re-read succeeds.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

from tcmu_pr import codec, conflict
from tcmu_pr.backends.base import PRSlot
from tcmu_pr.nexus import Nexus
from tcmu_pr.state import PRState

log = logging.getLogger(__name__)

#: Stands for a device whose nexus is unknown: no registration or reservation can be its,
#: so the conflict table answers as for an unregistered non-holder (docs/daemon.md).
ANONYMOUS = Nexus("tcmu-pr.unknown-initiator", "0", "tcmu-pr.unknown-target-port", "0")

Stamp = tuple[int, int, int, int] | None


class Member(Protocol):
    """What the LU needs of a device: its nexus and a place to publish the verdict."""

    device_id: int
    nexus: Nexus | None

    def publish_verdict(self, word: int) -> None: ...

    def wait_batch(self, timeout: float) -> bool: ...


class LogicalUnit:
    """A LU's shared PR state as cached by this daemon; one per PR store spec."""

    def __init__(self, spec: str, slot: PRSlot) -> None:
        self.spec = spec
        self.slot = slot
        self.members: dict[int, Member] = {}
        self._lock = threading.RLock()
        self._state: PRState | None = None
        self._stamp: Stamp = None
        self._cache = None  # RbdPRCache when the slot is an RBD header xattr
        self._stat_path: str | None = None
        path = getattr(slot, "path", None)  # FileSlot: the sidecar beside the image
        if path is not None:
            self._stat_path = os.fspath(path)
        elif type(slot).__name__ == "RbdPRSlot":
            from tcmu_pr.backends.rbd import RbdPRCache

            self._cache = RbdPRCache(slot)  # type: ignore[arg-type]
            self._cache.add_listener(lambda _snap: self.refresh())
        self.refresh()

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> PRState | None:
        """The last state read; None while the store cannot be read or decoded."""
        return self._state

    @property
    def is_rbd(self) -> bool:
        return self._cache is not None

    def stamp(self) -> Stamp:
        """Cheap change detector of a file slot: the sidecar's inode, size, mtime, ctime."""
        if self._stat_path is None:
            return None
        try:
            st = os.stat(self._stat_path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def changed(self) -> bool:
        """Whether the watcher should refresh: the stamp moved, or the state is unknown."""
        with self._lock:
            return self._state is None or (
                self._stat_path is not None and self.stamp() != self._stamp
            )

    def refresh(self) -> PRState | None:
        """Re-read the stored state and republish every member's verdict."""
        with self._lock:
            self._stamp = self.stamp()
            self._state = self._read()
            for member in self.members.values():
                member.publish_verdict(self._verdict(member.nexus))
            return self._state

    def _read(self) -> PRState | None:
        try:
            if self._cache is not None:
                return self._cache.ensure_fresh()
            blob = self.slot.read()
            return codec.decode(blob) if blob else PRState()
        except (OSError, ValueError) as err:
            if self._state is not None:  # log the transition, not every poll
                log.error("PR state of %s unreadable, refusing I/O until it is: %s", self.spec, err)
            return None

    # -- members -------------------------------------------------------------------------

    def add(self, member: Member) -> None:
        with self._lock:
            self.members[member.device_id] = member
            member.publish_verdict(self._verdict(member.nexus))

    def remove(self, device_id: int) -> bool:
        """Forget a member; True when the LU has none left (the caller closes it)."""
        with self._lock:
            self.members.pop(device_id, None)
            return not self.members

    def others(self, device_id: int) -> list[Member]:
        with self._lock:
            return [m for d, m in self.members.items() if d != device_id]

    def republish(self, member: Member) -> None:
        """Write ``member``'s current verdict again (under the lock: never a stale one)."""
        with self._lock:
            member.publish_verdict(self._verdict(member.nexus))

    # -- questions the ring handler asks -----------------------------------------------------

    def _verdict(self, nexus: Nexus | None) -> int:
        state = self._state
        if state is None:
            return 0
        return conflict.verdict(state, nexus or ANONYMOUS)

    def allowed(self, nexus: Nexus | None, cdb: bytes) -> bool:
        state = self._state
        return state is not None and conflict.allowed(state, nexus or ANONYMOUS, cdb)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        self.slot.close()
