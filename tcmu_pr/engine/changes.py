"""Small pure transformations of PRState that several service actions share.

Each returns a new PRState (frozen dataclasses, ``dataclasses.replace``); none does I/O.
They keep three invariants the rest of the engine relies on:

* no two registrations cover the same I_T nexus (see :func:`overlaps`);
* a reservation's ``nexus`` is covered by a registration and its ``key`` is that
  registration's key (:func:`settle_reservation`);
* pending unit attentions hold no duplicates and stay within the caps below.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import ALL_REGISTRANTS_TYPES, U32, PRState, Registration, UnitAttention

#: Pending UAs kept per addressee; a newer one pushes out that addressee's oldest.  SAM-5 lets
#: a device server drop UAs it cannot queue; the newest PR change is the one worth telling.
MAX_UAS_PER_NEXUS = 8
#: Pending UAs kept in all (addressees that never come back must not grow the blob forever).
MAX_UAS_TOTAL = 256


def same_initiator_port(a: Nexus, b: Nexus) -> bool:
    """Same initiator port, an absent ISID on either side matching any (symmetric)."""
    return a.initiator == b.initiator and (not a.isid or not b.isid or a.isid == b.isid)


def overlaps(a: Nexus, a_all_tg_pt: bool, b: Nexus, b_all_tg_pt: bool) -> bool:
    """Whether two registration records could both cover some I_T nexus.

    Same initiator name, ISIDs equal or either absent (an iSCSI TransportID of format 00b
    names every ISID), and the same target port unless either spans all ports.
    """
    if not same_initiator_port(a, b):
        return False
    return a_all_tg_pt or b_all_tg_pt or a.same_target_port(b)


def overlapping(state: PRState, nexus: Nexus, all_tg_pt: bool) -> list[Registration]:
    return [r for r in state.registrations if overlaps(r.nexus, r.all_tg_pt, nexus, all_tg_pt)]


def bump_generation(state: PRState) -> PRState:
    """PRGENERATION + 1, wrapping at 2**32 (SPC-4 §6.15.2)."""
    return replace(state, generation=(state.generation + 1) & U32)


def settle_reservation(state: PRState) -> PRState:
    """Re-derive the reservation from the registrations after they changed.

    A holder that lost its registration loses the reservation (SPC-4 §5.12.10), except for
    the all-registrants types, which stay while anyone is registered (§5.12.11.2.3): their
    recorded nexus then moves to a remaining registrant, so the record always names a
    registered nexus.  The key is re-read because a REGISTER may have changed it.
    """
    res = state.reservation
    if res is None:
        return state
    holder = state.registration_of(res.nexus)
    if holder is None:
        if res.type in ALL_REGISTRANTS_TYPES and state.registrations:
            first = state.registrations[0]
            return replace(state, reservation=replace(res, key=first.key, nexus=first.nexus))
        return replace(state, reservation=None)
    if holder.key != res.key:
        return replace(state, reservation=replace(res, key=holder.key))
    return state


def ua_for(reg: Registration, asc_ascq: tuple[int, int]) -> UnitAttention:
    """A UA for the initiator port of a registration (on every port if it spans them)."""
    return UnitAttention(reg.nexus, asc_ascq[0], asc_ascq[1], reg.all_tg_pt)


def others(regs: Iterable[Registration], nexus: Nexus) -> list[Registration]:
    """The registrations that are not the one of ``nexus`` (the command's own I_T nexus)."""
    return [r for r in regs if not r.covers(nexus)]


def queue_uas(
    state: PRState, uas: Iterable[UnitAttention]
) -> tuple[PRState, tuple[UnitAttention, ...]]:
    """Append UAs, skipping ones already pending; return the state and those really queued."""
    pending = list(state.unit_attentions)
    queued: list[UnitAttention] = []
    for ua in uas:
        if ua in pending:
            continue
        same = [p for p in pending if p.nexus == ua.nexus and p.all_tg_pt == ua.all_tg_pt]
        if len(same) >= MAX_UAS_PER_NEXUS:
            pending.remove(same[0])
        if len(pending) >= MAX_UAS_TOTAL:
            pending.pop(0)
        pending.append(ua)
        queued.append(ua)
    if not queued:
        return state, ()
    return replace(state, unit_attentions=tuple(pending)), tuple(queued)
