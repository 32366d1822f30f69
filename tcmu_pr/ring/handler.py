"""One TCMU device's command loop: wait on the fd, run a ring batch, answer punted commands.

The ring loop (native or pure Python) serves READ/WRITE itself and hands everything else
here, in ring order.  Each punted command is answered synchronously, before the batch's
tail is published, because without OOOC the kernel's cmd_tail may not move past an
unanswered entry; and the loop ends a batch right after punting a command that can change
the PR state, so the next batch is checked against the verdict that command left behind.

Everything device-specific is injected:

- ``emulate(cdb, data_out) -> (status, sense, data_in)``: every non-PR command (INQUIRY,
  READ CAPACITY, ... and READ/WRITE when the fast path punted them).  The default answers
  TEST UNIT READY and rejects the rest with INVALID COMMAND OPERATION CODE.
- :class:`PRHooks`: PERSISTENT RESERVE IN/OUT and RESERVE/RELEASE(6/10) (the daemon runs
  them through its LU, tcmu_pr/unit/lu.py), the conflict check for other punted commands, the
  unit attention owed to this nexus, the verdict word for the fast path, whether the PR
  state can be vouched for right now, and the admission bracket a PR change waits on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from tcmu_pr import scsi
from tcmu_pr.ring.abi import VERDICT_READ, VERDICT_UA, VERDICT_WRITE
from tcmu_pr.ring.loop import RingError, RingLoop
from tcmu_pr.ring.rw import PR_OPCODES
from tcmu_pr.scsi import INTERNAL_TARGET_FAILURE

log = logging.getLogger(__name__)

#: (status, sense bytes or None, data-in or None)
Reply = tuple[int, bytes | None, bytes | None]
Emulate = Callable[[bytes, bytes], Reply]

#: Commands that carry no data-out: their iovecs are not gathered.
_DATA_IN_ONLY = frozenset(
    {scsi.TEST_UNIT_READY, scsi.REQUEST_SENSE, scsi.READ_6, scsi.INQUIRY, scsi.MODE_SENSE_6,
     scsi.READ_CAPACITY_10, scsi.READ_10, scsi.MODE_SENSE_10, scsi.PERSISTENT_RESERVE_IN,
     scsi.READ_16, scsi.SERVICE_ACTION_IN_16, scsi.REPORT_LUNS, scsi.MAINTENANCE_IN,
     scsi.READ_12, scsi.SYNCHRONIZE_CACHE_10, scsi.SYNCHRONIZE_CACHE_16}
)  # fmt: skip

#: SAM-5 §5.14: these report no unit attention (and do not clear it).
_UA_EXEMPT = frozenset({scsi.INQUIRY, scsi.REPORT_LUNS})


def default_emulate(cdb: bytes, data_out: bytes) -> Reply:
    """The minimal SCSI emulation: TEST UNIT READY is GOOD, anything else is unknown."""
    if cdb and cdb[0] == scsi.TEST_UNIT_READY:
        return scsi.GOOD, None, None
    return scsi.CHECK_CONDITION, scsi.INVALID_COMMAND_OPERATION_CODE.to_bytes(), None


def _no_pr(cdb: bytes, data_out: bytes) -> Reply:
    return scsi.CHECK_CONDITION, scsi.INVALID_COMMAND_OPERATION_CODE.to_bytes(), None


@dataclass(frozen=True, slots=True)
class PRHooks:
    """How the handler reaches the device's PR state (defaults: a LU without PR support)."""

    #: PR IN/OUT, RESERVE/RELEASE(6/10): the engine's answer, the state change stored.
    execute: Emulate = _no_pr
    #: The conflict check for a punted non-PR command (tcmu_pr.engine.conflict.allowed).
    allowed: Callable[[bytes], bool] = lambda cdb: True
    #: Take (remove from the shared state) the unit attention owed to this nexus, as sense.
    take_unit_attention: Callable[[], bytes | None] = lambda: None
    #: The verdict word for the fast path (tcmu_pr.engine.conflict.verdict on the current state).
    verdict: Callable[[], int] = lambda: VERDICT_READ | VERDICT_WRITE
    #: False while the PR state cannot be vouched for (a lease ran out, the gateway was cut
    #: off): everything but INQUIRY/REPORT LUNS is answered NOT READY, nothing from the state.
    current: Callable[[], bool] = lambda: True
    #: Brackets a punted non-PR command from its conflict check to its answer, so that a
    #: PR change can wait for the commands admitted under the old state.
    admit: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext


@dataclass(frozen=True, slots=True)
class NexusRoute:
    """How one nexus's punted commands are answered on a device that serves many (nexus
    mode: the handle comes from each ring entry)."""

    pr: PRHooks
    emulate: Emulate
    #: Publish this nexus's verdict again (after a PR command or a UA delivery).
    republish: Callable[[], None]


class RingHandler:
    """Serves one device ring; ``wait_fd`` is the uio fd (the simulator's notify fd)."""

    def __init__(
        self,
        ring: RingLoop,
        wait_fd: int,
        *,
        emulate: Emulate = default_emulate,
        pr: PRHooks | None = None,
        event_size: int = 4,
        route: Callable[[int, int], NexusRoute] | None = None,
    ) -> None:
        """``route``: nexus mode; each punted entry's handle (0: none) and kflags pick its
        nexus's hooks and emulator (it must not raise: an unknown nexus gets hooks that
        refuse PR)."""
        self.ring = ring
        self.wait_fd = wait_fd
        #: uio's read() takes exactly 4 bytes (an s32 event count); an eventfd wants 8.
        self.event_size = event_size
        self.emulate = emulate
        self.pr = pr or PRHooks()
        self.route = route
        self.refresh_verdict()

    def refresh_verdict(self) -> None:
        """Re-read the verdict; call it whenever the PR state may have changed elsewhere."""
        self.ring.verdict = self.pr.verdict()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the kernel signals new commands (or ``timeout`` s); True if signalled."""
        poller = select.poll()
        poller.register(self.wait_fd, select.POLLIN)
        if not poller.poll(None if timeout is None else int(timeout * 1000)):
            return False
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self.wait_fd, self.event_size)
        return True

    def serve(self) -> int:
        """Run batches until the ring is drained; returns the number of punted commands."""
        punted = 0
        while True:
            entries = self.ring.process()
            if not entries:
                return punted
            for entry in entries:
                self._answer(entry)
            punted += len(entries)
            self.ring.commit()

    def run(self, should_stop: Callable[[], bool], poll_interval: float = 1.0) -> None:
        """The device thread: serve until ``should_stop()`` (checked every poll_interval).

        With a ring that has its own serve loop (``NativeRing.run``: wait, batches and kicks
        in C) Python only answers the punted commands; otherwise it waits and runs each
        batch itself."""
        native = getattr(self.ring, "run", None)
        if native is None:
            self.serve()  # whatever was queued before we started
            while not should_stop():
                if self.wait(poll_interval):
                    self.serve()
            return
        timeout_ms = max(1, int(poll_interval * 1000))
        while not should_stop():
            entries = native(self.wait_fd, self.event_size, timeout_ms)
            if entries:
                for entry in entries:
                    self._answer(entry)
                self.ring.commit()

    # -- punted commands ---------------------------------------------------------------

    def _answer(self, entry: int) -> None:
        try:
            cdb = self.ring.cdb(entry)
            data_out = b"" if cdb[0] in _DATA_IN_ONLY else self.ring.data_out(entry)
        except RingError as exc:
            log.warning("ring entry at %#x unusable: %s", entry, exc)
            self.ring.complete(entry, scsi.CHECK_CONDITION, INTERNAL_TARGET_FAILURE.to_bytes(),
                               None)  # fmt: skip
            return
        try:
            if self.route is None:
                status, sense, data = self._dispatch(cdb, data_out)
            else:
                route = self.route(self.ring.nexus(entry), self.ring.kflags(entry))
                status, sense, data = self._dispatch_nexus(route, cdb, data_out)
        except Exception:  # a bug in a hook must not leave the entry (and the ring) stuck
            log.exception("answering CDB %s failed", cdb.hex())
            status, sense, data = scsi.CHECK_CONDITION, INTERNAL_TARGET_FAILURE.to_bytes(), None
        self.ring.complete(entry, status, sense, data)

    def _dispatch(self, cdb: bytes, data_out: bytes) -> Reply:
        op = cdb[0]
        if op not in _UA_EXEMPT and not self.pr.current():
            return scsi.CHECK_CONDITION, scsi.LOGICAL_UNIT_BECOMING_READY.to_bytes(), None
        if self.ring.verdict & VERDICT_UA and op not in _UA_EXEMPT:
            sense = self.pr.take_unit_attention()
            self.refresh_verdict()
            if sense is not None:
                return scsi.CHECK_CONDITION, sense, None
        if op in PR_OPCODES:
            reply = self.pr.execute(cdb, data_out)
            self.refresh_verdict()
            return reply
        with self.pr.admit():
            if not self.pr.allowed(cdb):
                return scsi.RESERVATION_CONFLICT, None, None
            return self.emulate(cdb, data_out)

    def _dispatch_nexus(self, route: NexusRoute, cdb: bytes, data_out: bytes) -> Reply:
        """As :meth:`_dispatch`, for the entry's own nexus: its UA bit, its PR identity."""
        pr, op = route.pr, cdb[0]
        if op not in _UA_EXEMPT and not pr.current():
            return scsi.CHECK_CONDITION, scsi.LOGICAL_UNIT_BECOMING_READY.to_bytes(), None
        if pr.verdict() & VERDICT_UA and op not in _UA_EXEMPT:
            sense = pr.take_unit_attention()
            route.republish()
            if sense is not None:
                return scsi.CHECK_CONDITION, sense, None
        if op in PR_OPCODES:
            reply = pr.execute(cdb, data_out)
            route.republish()
            return reply
        with pr.admit():
            if not pr.allowed(cdb):
                return scsi.RESERVATION_CONFLICT, None, None
            return route.emulate(cdb, data_out)
