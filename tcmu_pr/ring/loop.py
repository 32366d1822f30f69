"""What the device handler needs from a ring loop, native or pure Python.

Both implementations (:class:`tcmu_pr.ring.native.NativeRing` and
:class:`tcmu_pr.ring.pyloop.PyRing`) serve READ/WRITE themselves and punt everything else;
the handler completes punted entries through the same five calls, so it does not care which
one runs.  Error codes are the C ones (native/ring.h) so both report alike.
"""

from __future__ import annotations

from typing import Protocol

ERR_MAILBOX = -1001  # mailbox fields out of bounds
ERR_HEAD = -1002  # cmd_head misaligned or beyond the ring
ERR_ENTRY = -1003  # entry header: len 0, past cmd_head or the ring end, unknown op
ERR_PENDING = -1004  # punted commands still wait for complete()
ERR_NOT_CMD = -1005  # complete/cdb/data_out on an offset that is no pending CMD
ERR_IOV = -1006  # iovec outside the data area

_NAMES = {
    ERR_MAILBOX: "bad mailbox",
    ERR_HEAD: "cmd_head out of bounds",
    ERR_ENTRY: "corrupt ring entry header",
    ERR_PENDING: "punted commands not completed",
    ERR_NOT_CMD: "no such pending command",
    ERR_IOV: "iovec outside the data area",
}

#: Punted entries one process() call hands out at most (RING_MAX_PUNTS in ring.h).
MAX_PUNTS = 64

#: Bits of the verdict word, as in tcmu_pr.conflict.
VERDICT_READ = 1
VERDICT_WRITE = 2
VERDICT_UA = 4


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

    def process(self) -> list[int]: ...

    def cdb(self, entry_off: int) -> bytes: ...

    def data_out(self, entry_off: int) -> bytes: ...

    def complete(
        self, entry_off: int, status: int, sense: bytes | None, data: bytes | None
    ) -> int: ...

    def commit(self) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...
