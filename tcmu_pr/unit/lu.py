"""One LU as one process sees it: its store, the decoded PR state, and its local devices.

The rule this module keeps (docs/consistency.md): a command that lands a new ``pr_info`` blob
answers GOOD only once

1. this process has installed the new state: every local device's verdict word (what the
   native loop checks before each READ/WRITE) and unit-attention bit are republished, and
   every command a local device had admitted before that (in the C loop, or on the slow path)
   has been answered; and
2. every other participant (another gateway's daemon) has done the same and acknowledged,
   or has been cut off by the store (:meth:`Store.confirm_change`).

Otherwise it answers CHECK CONDITION, HARDWARE ERROR / LOGICAL UNIT COMMUNICATION FAILURE:
the change has landed (it cannot be undone) but is not proven in force everywhere.

A peer's change arrives through the store's change watch: :meth:`_peer_changed` re-reads,
republishes and drains exactly as for a local change, and only then lets the store
acknowledge.  There is no polling: nothing but an announcement makes this process re-read.

Lease (stores that need one, i.e. RBD): verdicts carry a deadline half an ack timeout ahead,
renewed while the store can vouch that no announcement was missed.  A process frozen past the
ack timeout (cut off meanwhile) finds its deadline passed when it resumes: the native loop then
hands every command to the slow path, which answers NOT READY until the state is current
again, so nothing is answered from the state it had.

One lock orders all installs: a re-read and its publication happen under it, so a device can
never be left with a verdict computed from an older state than another device's.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Protocol

from tcmu_pr import engine, scsi
from tcmu_pr.backends.base import Confirmation, Store, StoreError
from tcmu_pr.engine import conflict
from tcmu_pr.pr import codec
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import U32, PRState, UnitAttention
from tcmu_pr.ring.loop import EXPIRED, NO_LEASE, coarse_ms
from tcmu_pr.unit.apply import ApplyError, BlobCache, ContentionError, execute, update

log = logging.getLogger(__name__)

#: Stands for a device whose nexus is unknown: no registration or reservation can be its,
#: so the conflict table answers as for an unregistered non-holder (docs/daemon.md).
ANONYMOUS = Nexus("tcmu-pr.unknown-initiator", "0", "tcmu-pr.unknown-target-port", "0")

NOT_CONFIRMED = scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE


class Member(Protocol):
    """What the LU needs of a local device: its nexus, its verdict word, its drain."""

    #: A device's id, or (device id, handle) for one nexus of a device in nexus mode.
    device_id: Hashable
    nexus: Nexus | None

    def publish_verdict(self, word: int, lease_deadline_ms: int) -> None:
        """Store the verdict and the lease deadline where the device's fast path reads them."""
        ...

    def drain(self, timeout: float) -> bool:
        """Wait until every command the fast path was serving at the last publish is
        answered; False after ``timeout`` seconds."""
        ...


class PRInfoRefused(Exception):
    """SET_PR_INFO not applied; ``errno`` goes back to the kernel (EAGAIN: re-read, retry)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = code


class InFlight:
    """Slow-path data commands between their conflict check and their answer.

    A change must not be answered while a command admitted under the old state is still
    running (a WRITE SAME of a nexus that was just preempted, say), so :meth:`drain` waits
    for every command that entered before it was called.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._active: set[int] = set()

    @contextmanager
    def admit(self) -> Iterator[None]:
        with self._cond:
            ticket = self._next
            self._next += 1
            self._active.add(ticket)
        try:
            yield
        finally:
            with self._cond:
                self._active.discard(ticket)
                self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        with self._cond:
            before = set(self._active)
            return self._cond.wait_for(lambda: not before & self._active, timeout)


class LogicalUnit:
    """A LU's shared PR state as this process holds it; one per PR store per process.

    ``serve=False`` is a one-off changer (the CLI): it announces its changes and waits for the
    participants like anyone, but does not join, so nobody waits for it.  ``on_loss`` is
    called (on a store thread) when the store cut this process off: its owner reconnects and
    calls :meth:`rebind`; until then every command is refused.
    """

    def __init__(
        self,
        store: Store,
        *,
        serve: bool = True,
        on_loss: Callable[[LogicalUnit, str], None] | None = None,
    ) -> None:
        self.store = store
        self.spec = store.spec
        self.slot = store.slot()
        self.cache = BlobCache()
        self.members: dict[Hashable, Member] = {}
        self.inflight = InFlight()
        self._lock = threading.RLock()
        self._state: PRState | None = None
        self._words: dict[Hashable, int] = {}
        self._lost: str | None = None
        self._deadline = NO_LEASE
        self._on_loss = on_loss
        self._serve = serve
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        #: How the other participants took this process's last change (logs, tests).
        self.last_confirmation: Confirmation | None = None
        if serve:
            store.join(self._peer_changed, self._lost_contact)
        self.refresh(extend=True)
        if serve and store.lease:
            self._renewer = threading.Thread(target=self._renew, name=f"lease {self.spec}",
                                             daemon=True)  # fmt: skip
            self._renewer.start()

    def __repr__(self) -> str:
        return f"LogicalUnit({self.spec})"

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> PRState | None:
        """The last state read; None while the store cannot be read or decoded."""
        return self._state

    @property
    def drain_timeout(self) -> float:
        """How long a change waits for admitted commands (half the ack timeout, so that a
        peer's drain ends before its changer gives up on it)."""
        return self.store.options.ack_timeout / 2

    def refresh(self, *, extend: bool = False) -> list[Member]:
        """Re-read the stored state and republish every member's verdict.

        ``extend``: the read answers an announcement (or a join), so the state is current
        now and the lease may start again.  Returns the members whose verdict changed.
        """
        with self._lock:
            self._state = self._read()
            if extend and self.store.lease and self._lost is None:
                self._deadline = coarse_ms() + int(self.store.lease * 1000)
            return self._publish()

    def _read(self) -> PRState | None:
        try:
            return self.cache.decode(self.slot.read())
        except (OSError, ValueError) as err:
            if self._state is not None:  # log the transition, not every re-read
                log.error("PR state of %s unreadable, refusing I/O until it is: %s", self.spec,
                          err)  # fmt: skip
            return None

    def _publish(self) -> list[Member]:
        """Under the lock: every member's verdict and deadline; those whose verdict moved."""
        moved = []
        deadline = EXPIRED if self._lost is not None else self._deadline
        for device_id, member in self.members.items():
            word = self._verdict(member.nexus)
            if self._words.get(device_id) != word:
                moved.append(member)
            self._words[device_id] = word
            member.publish_verdict(word, deadline)
        return moved

    def _verdict(self, nexus: Nexus | None) -> int:
        state = self._state
        if state is None:
            return 0
        return conflict.verdict(state, nexus or ANONYMOUS)

    # -- members -------------------------------------------------------------------------

    def add(self, member: Member) -> None:
        with self._lock:
            self.members[member.device_id] = member
            self._words.pop(member.device_id, None)
            self._publish()

    def remove(self, device_id: Hashable) -> bool:
        """Forget a member; True when the LU has none left (the caller closes it)."""
        with self._lock:
            self.members.pop(device_id, None)
            self._words.pop(device_id, None)
            return not self.members

    def republish(self, member: Member) -> None:
        """Write ``member``'s current verdict again (under the lock: never a stale one)."""
        with self._lock:
            deadline = EXPIRED if self._lost is not None else self._deadline
            member.publish_verdict(self._verdict(member.nexus), deadline)

    def _drain(self, members: list[Member]) -> bool:
        """Wait for what ``members`` (and the slow path) admitted before the last publish."""
        deadline = time.monotonic() + self.drain_timeout
        ok = True
        for member in members:
            if not member.drain(max(0.0, deadline - time.monotonic())):
                log.warning("%r: device %s still busy after %.1f s", self, member.device_id,
                            self.drain_timeout)  # fmt: skip
                ok = False
        if not self.inflight.drain(max(0.0, deadline - time.monotonic())):
            log.warning("%r: a slow-path command still runs after %.1f s", self,
                        self.drain_timeout)  # fmt: skip
            ok = False
        return ok

    # -- what a device asks --------------------------------------------------------------------

    def current(self) -> bool:
        """Whether the cached state may answer a command now (the slow path asks first)."""
        if self._lost is not None:
            return False
        if not self.store.lease or coarse_ms() < self._deadline:
            return True
        if self.store.still_current():
            self._extend()
            return True
        return False

    def allowed(self, nexus: Nexus | None, cdb: bytes) -> bool:
        state = self._state
        return state is not None and conflict.allowed(state, nexus or ANONYMOUS, cdb)

    def execute(
        self, nexus: Nexus, cdb: bytes, data: bytes = b"", *, rtpi: int | None = None
    ) -> scsi.Outcome:
        """Run a PR command (PR IN/OUT, RESERVE/RELEASE) under the rule above."""
        applied = execute(self.slot, nexus, cdb, data, rtpi=rtpi, cache=self.cache)
        if not applied.changed:
            return applied.outcome
        return self._confirm(applied.outcome, f"CDB {cdb[:2].hex()} from {nexus}")

    def _confirm(self, outcome: scsi.Outcome, what: str) -> scsi.Outcome:
        drained = self._drain(self.refresh())
        confirmation = self.last_confirmation = self.store.confirm_change()
        if confirmation.fenced:
            log.warning("%r: %s: cut off before answering: %s", self, what,
                        ", ".join(confirmation.fenced))  # fmt: skip
        if drained and confirmation.ok:
            return outcome
        log.error("%r: %s landed but is not confirmed everywhere (%s): CHECK CONDITION",
                  self, what, ", ".join(confirmation.failed) or "local devices busy")  # fmt: skip
        if outcome.status != scsi.GOOD:
            return outcome
        return scsi.Outcome.check(outcome.state, NOT_CONFIRMED)

    def nexus_lost(self, nexus: Nexus) -> bool:
        """A new session of ``nexus`` began (I_T nexus loss): release its SCSI-2
        reservation, with a unit attention for it, under the confirmation rule (every
        gateway enforces the release before the command that revealed it is answered).
        True when something changed; raises ApplyError/StoreError when the store failed."""
        landed = update(self.slot, lambda state: engine.scsi2.nexus_lost(state, nexus),
                        cache=self.cache)  # fmt: skip
        if not landed.wrote:
            return False
        self._confirm(scsi.Outcome(landed.state), f"I_T nexus loss of {nexus}")
        return True

    def take_unit_attention(self, nexus: Nexus) -> UnitAttention | None:
        """Deliver (remove from the shared state) the oldest UA owed to ``nexus``.

        Not announced to the other participants: a UA belongs to one I_T nexus, which only
        this process serves, so no other verdict changes.  Raises ApplyError/StoreError when
        the store cannot be updated (the UA then stays queued).
        """
        taken: list[UnitAttention | None] = [None]

        def take(state: PRState) -> PRState:
            new, taken[0] = engine.take_unit_attention(state, nexus)
            return new

        try:
            landed = update(self.slot, take, cache=self.cache)
        finally:
            self.refresh()
        return taken[0] if landed.wrote else None

    # -- the kernel's PR-info service (TCMU PR netlink series) ------------------------------

    def get_pr_info(self) -> bytes:
        """The stored blob, exactly; PRInfoRefused(EIO) when it cannot be read."""
        try:
            return self.slot.read()
        except StoreError as err:
            raise PRInfoRefused(errno.EIO, f"cannot read the PR store: {err}") from err

    def set_pr_info(self, blob: bytes) -> None:
        """Store the kernel's new blob if its seq is the stored one plus one.

        PRInfoRefused(EAGAIN) when it is stale or another writer won (the kernel re-reads
        and re-applies), (EINVAL) for a malformed blob, (EIO) when the store failed or the
        change could not be confirmed everywhere.
        """
        try:
            wanted, version = codec.decode_versioned(blob)
            codec.encode(wanted, version=version)
        except ValueError as err:
            raise PRInfoRefused(errno.EINVAL, f"invalid blob, nothing written: {err}") from err

        class Stale(Exception):
            pass

        def replace(stored: PRState) -> PRState:
            if wanted.seq != (stored.seq + 1) & U32:
                raise Stale(f"seq 0x{wanted.seq:08x} is stale (stored 0x{stored.seq:08x})")
            if version == 1 and not codec.fits_v1(stored):
                log.warning("%r: a version 1 SET_PR_INFO replaces state only v2 can hold", self)
            return wanted

        try:
            landed = update(self.slot, replace, cache=self.cache, version=version, max_attempts=1)
        except Stale as err:
            raise PRInfoRefused(errno.EAGAIN, f"{err}: re-read") from None
        except ContentionError as err:
            raise PRInfoRefused(errno.EAGAIN, "another writer won: re-read") from err
        except (ApplyError, StoreError) as err:
            raise PRInfoRefused(errno.EIO, f"the PR store failed: {err}") from err
        outcome = self._confirm(scsi.Outcome(landed.state), "SET_PR_INFO")
        if outcome.status != scsi.GOOD:
            raise PRInfoRefused(errno.EIO, "stored, but not confirmed by every gateway")

    # -- the store's side -------------------------------------------------------------------

    def _peer_changed(self) -> bool:
        """Another participant changed the state: install it, drain, then let it be acked."""
        return self._drain(self.refresh(extend=True))

    def _lost_contact(self, why: str) -> None:
        with self._lock:
            self._lost = why
            self._publish()
        log.error("%r: %s: refusing every command until reconnected", self, why)
        if self._on_loss is not None:
            self._on_loss(self, why)

    def rebind(self, store: Store) -> None:
        """Continue on a new connection to the same store (after being cut off)."""
        with self._lock:
            self.store, self.slot, self.cache = store, store.slot(), BlobCache()
            self._lost = None
        if self._serve:
            store.join(self._peer_changed, self._lost_contact)
        self.refresh(extend=True)
        log.info("%r: reconnected; serving the state re-read", self)

    def _extend(self) -> None:
        with self._lock:
            if self._lost is None and self.store.lease:
                self._deadline = coarse_ms() + int(self.store.lease * 1000)
                self._publish()

    def _renew(self) -> None:
        lease = self.store.lease or 1.0
        while not self._stop.wait(lease / 4):
            try:
                if self._lost is None and self.store.still_current():
                    self._extend()
            except Exception:
                log.exception("%r: lease renewal failed", self)

    def close(self) -> None:
        """Stop renewing; the store (shared with the data path) is its owner's to close."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=10)
