"""What every backing store offers: a PR slot, the LU's data, and the change watch.

A :class:`Store` is one process's connection to one named store (``file:`` or ``rbd:``).  It
hands out the ``pr_info`` slot and the data backend (both opened on first use, so a store used
only for data creates no PR files, and one used only for PR state opens no image), and it
makes this process a *participant* of the LU: someone who is told when another participant
changed the PR state, and who tells them in turn.

The consistency rule every store keeps (docs/consistency.md): a change answers GOOD only once
every other live participant has applied it (:meth:`Store.confirm_change`).  A participant that
does not confirm within the store's ack timeout is cut off first — RBD: its RADOS client is
blocklisted; file: its process is killed — and when it cannot be cut off the caller answers
CHECK CONDITION.  Only the mechanism differs between stores; the LU above does not know which
store it runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from tcmu_pr.backends.store_spec import StoreSpec

#: Seconds a change waits for the other participants before cutting them off.
DEFAULT_ACK_TIMEOUT = 5.0


class StoreError(OSError):
    """The store could not be read or written (not a lost race: that is a False CAS)."""


class PRSlot(Protocol):
    """One LU's ``pr_info`` blob, shared by every gateway that exports the LU.

    The token of the compare-and-swap is the exact bytes last read: a v1 peer (SUSE's
    target_core_rbd) guards its writes the same way, so both kinds of writer interlock.
    """

    def read(self) -> bytes:
        """The stored blob, trailing NUL included; ``b""`` when never written."""
        ...

    def compare_and_swap(self, expected: bytes, new: bytes) -> bool:
        """Store ``new`` if the slot still holds ``expected``; False if another writer won.

        Returns only once ``new`` is durable.  Raises StoreError on I/O failure.
        """
        ...


class DataBackend(Protocol):
    """Block data of one LU, for the commands the native fast path hands to Python.

    The native ring loop does READ/WRITE itself through its own C ops table; this is the
    slower, complete interface the SCSI emulation uses (WRITE SAME, UNMAP, COMPARE AND WRITE,
    ORWRITE, SYNCHRONIZE CACHE, GET LBA STATUS).  Offsets and lengths are in bytes and
    already range-checked.
    """

    #: Whether :meth:`or_write` is atomic; the emulator offers ORWRITE only when it is.
    can_or_write: bool

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

    @property
    def discard_granularity(self) -> int:
        """Bytes, aligned to offset 0, of the unit a discard deallocates only whole: a discard
        covering whole units shows them unallocated in :meth:`allocated`; partial units are
        zeroed and may stay allocated.  The Block Limits VPD page announces it."""
        ...

    @property
    def allocation_scan_limit(self) -> int | None:
        """Bytes one :meth:`allocated` query should cover at most, where its cost grows with
        the bytes rather than the extents (RBD lists objects); None for no limit."""
        ...

    def allocated(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """(offset, length) of the allocated parts of the range, increasing, disjoint and
        clipped to it; every byte not covered is deallocated and reads as zeros.

        It may call allocated what holds only zeros, never unallocated what holds data: GET
        LBA STATUS reports deallocated blocks from it.  Lazy, so a caller that has seen
        enough stops the walk.
        """
        ...

    def compare_and_write(self, offset: int, expected: bytes, data: bytes) -> int | None:
        """Atomically write ``data`` if the range holds ``expected``.

        Returns None on success, else the byte offset (within the range) of the first
        mismatch, nothing written.
        """
        ...

    def or_write(self, offset: int, data: bytes) -> None:
        """Atomically replace the range with (its bytes OR ``data``), against other
        ``compare_and_write``/``or_write`` callers.  OSError(EOPNOTSUPP) where
        ``can_or_write`` is False."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How a process takes part in a store; the daemon's [store] section, the CLI's flags."""

    #: Seconds a change waits for every other participant's acknowledgement.
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    #: Cut off a participant that did not acknowledge (else the change answers CHECK
    #: CONDITION and the participant keeps running).
    fence: bool = True
    #: RBD: ceph.conf path (None: $CEPH_CONF, then librados' search) and client id
    #: (None: $CEPH_ID, then "admin").
    ceph_conf: str | None = None
    ceph_id: str | None = None


@dataclass(frozen=True, slots=True)
class Confirmation:
    """How the other participants took one change (:meth:`Store.confirm_change`)."""

    told: int = 0  # participants (other than us) the change was announced to
    acked: int = 0  # ... that acknowledged in time
    fenced: tuple[str, ...] = ()  # silent ones, cut off before the answer
    failed: tuple[str, ...] = ()  # silent ones that could not be cut off

    @property
    def ok(self) -> bool:
        """Every participant either applied the change or can no longer serve."""
        return not self.failed


#: Called (on a store thread) when another participant changed the PR state.  It returns
#: True once this process applies the new state everywhere; the acknowledgement is sent only
#: then.  False withholds it (the changer then cuts us off: that is the point).
ChangeHandler = Callable[[], bool]
#: Called (on a store thread) when this process was cut off or lost its watch: everything it
#: cached about the PR state is now suspect.  The argument says why, for the log.
LossHandler = Callable[[str], None]


class Store(Protocol):
    """One process's connection to one store; see the module docstring."""

    spec: StoreSpec
    options: StoreOptions

    def slot(self) -> PRSlot:
        """The LU's ``pr_info`` slot (opened on first call; the same object afterwards)."""
        ...

    def data(self) -> DataBackend:
        """The LU's data (opened on first call; the same object afterwards)."""
        ...

    def join(self, on_change: ChangeHandler, on_loss: LossHandler) -> None:
        """Become a participant: hear other participants' changes until :meth:`close`.

        The caller must read the PR state *after* this returns: a change that lands after
        the join is announced to us, one that landed before is in what we read.
        """
        ...

    def confirm_change(self) -> Confirmation:
        """Tell every other participant that the PR state changed; wait for their acks
        (bounded by ``options.ack_timeout``) and cut off the silent ones (if
        ``options.fence``).  Never raises: a failure is in the result."""
        ...

    def still_current(self) -> bool:
        """Whether this process can vouch that it missed no change announcement since its
        last check without any I/O (RBD: the watch was confirmed recently and no announcement
        is being handled; file: always, a frozen file participant is killed, not trusted)."""
        ...

    @property
    def lease(self) -> float | None:
        """Seconds a verdict may be used without asking :meth:`still_current` again; None
        when the store needs no lease (file)."""
        ...

    def close(self) -> None:
        """Leave (stop hearing changes), close the slot and the data."""
        ...
