"""The pure SPC-4 persistent-reservation engine: (state, nexus, CDB, data) -> Outcome.

No I/O and no clock: the same inputs always give the same answer, which is what lets
:mod:`tcmu_pr.unit.apply` re-run a command on a re-read state after losing a compare-and-swap.
The dispatcher below routes by opcode; PERSISTENT RESERVE OUT then routes by service action
(:mod:`.pr_out`), PERSISTENT RESERVE IN by report (:mod:`.pr_in`), RESERVE/RELEASE go to
:mod:`.scsi2`.  Any other CDB is only checked against the reservations (conflict.py).

``Outcome.state is state`` whenever nothing changed, so callers skip the store write.
Unit attentions that a change owes other nexuses are queued in the new state and listed in
``Outcome.unit_attentions``; the engine never delivers one (see :func:`take_unit_attention`).
"""

from __future__ import annotations

from dataclasses import replace

from tcmu_pr import scsi
from tcmu_pr.engine import conflict, pr_in, pr_out, scsi2
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import PRState, UnitAttention
from tcmu_pr.scsi import Outcome

__all__ = ["execute", "take_unit_attention"]

_SCSI2 = frozenset({scsi.RESERVE_6, scsi.RESERVE_10, scsi.RELEASE_6, scsi.RELEASE_10})


def execute(
    state: PRState, nexus: Nexus, cdb: bytes, data: bytes = b"", *, rtpi: int | None = None
) -> Outcome:
    """Run one command from ``nexus`` against ``state``; never raises for any bytes.

    ``data`` is the data-out buffer (the PR OUT parameter list); ``rtpi`` the relative
    target port identifier of the port the command came through, recorded on the
    registrations it creates (None: unknown, READ FULL STATUS then reports the TPG tag).
    """
    if not cdb:
        return Outcome.check(state, scsi.INVALID_COMMAND_OPERATION_CODE)
    op = cdb[0]
    if op == scsi.PERSISTENT_RESERVE_OUT:
        return pr_out.execute(state, nexus, cdb, data, rtpi)
    if op == scsi.PERSISTENT_RESERVE_IN:
        return pr_in.execute(state, nexus, cdb)
    if op in _SCSI2:
        return scsi2.execute(state, nexus, cdb)
    return Outcome.good(state) if conflict.allowed(state, nexus, cdb) else Outcome.conflict(state)


def take_unit_attention(state: PRState, nexus: Nexus) -> tuple[PRState, UnitAttention | None]:
    """Remove and return the oldest unit attention pending for ``nexus`` (SAM-5 order).

    Returns ``(state, None)``, the same object, when none is pending.
    """
    for i, ua in enumerate(state.unit_attentions):
        if ua.addresses(nexus):
            rest = state.unit_attentions[:i] + state.unit_attentions[i + 1 :]
            return replace(state, unit_attentions=rest), ua
    return state, None
