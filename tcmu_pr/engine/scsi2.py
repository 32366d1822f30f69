"""RESERVE(6)/(10) and RELEASE(6)/(10): SPC-2 reservations with CRH=1 (SPC-4 §5.12.3).

Without registrations they behave as SPC-2 §5.5.1/§7.21/§7.22 say: one I_T nexus may hold
the LU, the holder may reserve again, another nexus conflicts, and RELEASE from a
non-holder is GOOD without effect.  Once any I_T nexus is registered, SPC-4 §5.12.3
(exceptions to SPC-2 RESERVE and RELEASE) applies: both commands are a GOOD no-op from a
persistent reservation holder, or from a registrant while a registrants-only or
all-registrants reservation exists; every other case is RESERVATION CONFLICT (SPC-2 §5.5.1:
registrations make all RESERVE and RELEASE commands conflict).  LIO does the same.
"""

from __future__ import annotations

from dataclasses import replace

from tcmu_pr import scsi
from tcmu_pr.engine.cdb import decode_scsi2
from tcmu_pr.engine.changes import queue_uas
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import ALL_REGISTRANTS_TYPES, REGISTRANTS_ONLY_TYPES, PRState, UnitAttention
from tcmu_pr.scsi import CheckCondition, Outcome


def is_scsi2_holder(state: PRState, nexus: Nexus) -> bool:
    """Whether ``nexus`` holds the SCSI-2 reservation (the test conflict.py uses too)."""
    holder = state.scsi2_holder
    return (
        holder is not None and holder.same_initiator_port(nexus) and holder.same_target_port(nexus)
    )


def _crh_exception(state: PRState, nexus: Nexus) -> bool | None:
    """SPC-4 §5.12.3 with registrations present: True = GOOD no-op, False = conflict.

    None when nobody is registered and plain SPC-2 rules apply.
    """
    if not state.registrations:
        return None
    if state.registration_of(nexus) is None:
        return False
    res = state.reservation
    if res is None:
        return False
    return state.is_holder(nexus) or res.type in REGISTRANTS_ONLY_TYPES | ALL_REGISTRANTS_TYPES


def reserve(state: PRState, nexus: Nexus) -> Outcome:
    """RESERVE(6)/(10) of the whole LU by ``nexus``."""
    crh = _crh_exception(state, nexus)
    if crh is not None:
        return Outcome.good(state) if crh else Outcome.conflict(state)
    if state.scsi2_holder is None:
        return Outcome.good(replace(state, scsi2_holder=nexus))
    return Outcome.good(state) if is_scsi2_holder(state, nexus) else Outcome.conflict(state)


def release(state: PRState, nexus: Nexus) -> Outcome:
    """RELEASE(6)/(10): the holder releases; anybody else gets GOOD and nothing changes."""
    crh = _crh_exception(state, nexus)
    if crh is not None:
        return Outcome.good(state) if crh else Outcome.conflict(state)
    if is_scsi2_holder(state, nexus):
        return Outcome.good(replace(state, scsi2_holder=None))
    return Outcome.good(state)


def execute(state: PRState, nexus: Nexus, cdb: bytes) -> Outcome:
    try:
        decode_scsi2(cdb)
    except CheckCondition as exc:
        return Outcome.refused(state, exc)
    if cdb[0] in (scsi.RESERVE_6, scsi.RESERVE_10):
        return reserve(state, nexus)
    return release(state, nexus)


#: I_T NEXUS LOSS OCCURRED (SPC-4 §6.x, additional sense 29h/07h).
NEXUS_LOSS_OCCURRED = (0x29, 0x07)


def nexus_lost(state: PRState, nexus: Nexus) -> PRState:
    """``nexus`` lost its session and logged in again (the kernel flags the first command of
    the new session): SPC-4 releases the SCSI-2 reservation an I_T nexus loss ends, and the
    nexus is told so with a unit attention.  Persistent reservations survive a nexus loss
    (they belong to the registration, not the session); nothing else changes.  Returns the
    same object when the nexus held no SCSI-2 reservation.
    """
    if not is_scsi2_holder(state, nexus):
        return state
    released = replace(state, scsi2_holder=None)
    return queue_uas(released, [UnitAttention(nexus, *NEXUS_LOSS_OCCURRED)])[0]
