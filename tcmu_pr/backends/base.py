"""The interface every backing store implements for its PR-info slot."""

from __future__ import annotations

from typing import Protocol


class StoreError(OSError):
    """The store could not be read or written (not a lost race: that is a False CAS)."""


class PRSlot(Protocol):
    """One LU's ``pr_info`` blob, shared by every gateway that exports the LU.

    The token of the compare-and-swap is the exact bytes last read: a v1 peer (SUSE's
    target_core_rbd) guards its writes the same way, so both kinds of writer interlock.

    A slot shared by gateways on other hosts may also define ``confirm(cdb, outcome) ->
    Outcome``: the answer to give for a change this thread just stored, once the other
    gateways have (or have not) acknowledged it.  ``apply`` calls it after every change.
    """

    def read(self) -> bytes:
        """The stored blob, trailing NUL included; ``b""`` when never written."""
        ...

    def compare_and_swap(self, expected: bytes, new: bytes) -> bool:
        """Store ``new`` if the slot still holds ``expected``; False if another writer won.

        Returns only once ``new`` is durable.  Raises StoreError on I/O failure.
        """
        ...

    def close(self) -> None: ...


class DataBackend(Protocol):
    """Block data of one LU, for the commands the native fast path hands to Python.

    The native ring loop does READ/WRITE itself through its own C ops table; this is the
    slower, complete interface the SCSI emulation uses (WRITE SAME, UNMAP, COMPARE AND WRITE,
    SYNCHRONIZE CACHE).  Offsets and lengths are in bytes and already range-checked.
    """

    @property
    def size(self) -> int:
        """Capacity in bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def discard(self, offset: int, length: int) -> None:
        """Deallocate; later reads return zeros."""
        ...

    def compare_and_write(self, offset: int, expected: bytes, data: bytes) -> int | None:
        """Atomically write ``data`` if the range holds ``expected``.

        Returns None on success, else the byte offset (within the range) of the first
        mismatch, nothing written.
        """
        ...

    def close(self) -> None: ...
