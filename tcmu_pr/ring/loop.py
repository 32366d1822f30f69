"""What the device handler needs from a ring loop, native or pure Python.

Both implementations (:class:`tcmu_pr.ring.native.NativeRing` and
:class:`tcmu_pr.ring.pyloop.PyRing`) serve READ/WRITE themselves and punt everything else;
the handler completes punted entries through the same five calls, so it does not care which
one runs.  Error codes are the C ones (tcmu_pr/ring/abi.py) so both report alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from tcmu_pr.ring.abi import (
    ERR_ENTRY,
    ERR_HEAD,
    ERR_IOV,
    ERR_MAILBOX,
    ERR_NOT_CMD,
    ERR_PENDING,
)

_NAMES = {
    ERR_MAILBOX: "bad mailbox",
    ERR_HEAD: "cmd_head out of bounds",
    ERR_ENTRY: "corrupt ring entry header",
    ERR_PENDING: "punted commands not completed",
    ERR_NOT_CMD: "no such pending command",
    ERR_IOV: "iovec outside the data area",
}

#: Lease deadline meaning "no lease"; any other value is a time of :func:`coarse_ms`, past
#: which the loop serves nothing itself and punts every command.
NO_LEASE = 0
#: A deadline already past.
EXPIRED = 1
_CLOCK = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)  # Linux's number


def coarse_ms() -> int:
    """CLOCK_MONOTONIC_COARSE in ms: the clock native/ring.c compares lease deadlines with."""
    return time.clock_gettime_ns(_CLOCK) // 1_000_000


def wait_batch_over(busy: Callable[[], int], seen: int, timeout: float) -> bool:
    """Both loops' drain: ``seen`` is the busy counter read when a verdict was published;
    odd means a batch that may have read the old verdict was running, and it is over once
    the counter moves.  Sleeps in short steps: a batch of 4 KiB commands lasts
    microseconds, and this only runs when a PR change landed.  False after ``timeout`` s."""
    if not seen & 1:
        return True
    deadline = time.monotonic() + timeout
    while busy() == seen:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    return True


class RingError(RuntimeError):
    """The ring cannot be served any more (or an API misuse); ``code`` is a RING_ERR_*."""

    def __init__(self, code: int, what: str = "") -> None:
        name = _NAMES.get(code, f"error {code}")
        super().__init__(f"{what}: {name}" if what else name)
        self.code = code


class RingLoop(Protocol):
    """One device's command ring.

    ``process`` serves what it can and returns the mapping offsets of punted CMD entries,
    in ring order; cmd_tail does not move until each is ``complete``d and ``commit`` is
    called.  An empty list means the ring was drained, published and the kernel kicked.
    """

    verdict: int

    def publish(self, verdict: int, lease_ms: int = NO_LEASE) -> None:
        """New verdict and lease deadline for the fast path."""
        ...

    def drain(self, timeout: float) -> bool:
        """Wait until the batch that ran at the last publish is over; False on timeout."""
        ...

    def nexus_mode(self, on: bool) -> None:
        """Nexus mode: data commands are checked against their handle's slot (published
        with :meth:`publish_nexus`) instead of the device's verdict; commands without a
        handle, or of a handle without a published slot, are punted."""
        ...

    def publish_nexus(self, handle: int, verdict: int, lease_ms: int = NO_LEASE) -> None:
        """New verdict for one handle's slot (ignored outside 1..NEXUS_SLOTS-1) and the
        lease; :meth:`drain` waits for a batch that may have read the old one."""
        ...

    def nexus(self, entry_off: int) -> int:
        """A punted entry's nexus handle as read when it was scanned; 0: none."""
        ...

    def kflags(self, entry_off: int) -> int:
        """A punted entry's hdr.kflags as read when it was scanned."""
        ...

    def process(self) -> list[int]: ...

    def cdb(self, entry_off: int) -> bytes: ...

    def data_out(self, entry_off: int) -> bytes: ...

    def complete(
        self, entry_off: int, status: int, sense: bytes | None, data: bytes | None
    ) -> int: ...

    def commit(self) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...
