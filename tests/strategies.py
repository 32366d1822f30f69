"""Hypothesis strategies for nexuses, registrations and whole PR states.

Alphabets are small on purpose: few initiators, target ports and ISIDs, so generated
states often share an initiator across target ports, reuse keys and put a reservation on
a registered nexus -- the cases where PR logic goes wrong.  Names look like what LIO
prints for iSCSI (iqn./eui.), SAS and tcm_loop (naa.) and FC (colon WWPN) ports; some
nexuses have an empty ISID (a TransportID without one) and a few are padded to the
longest nexus a v1 peer accepts.

Every state :func:`pr_states` draws passes ``tcmu_pr.pr.validate.check_state``; with
``v1=True`` it also fits a version 1 blob.
"""

from __future__ import annotations

from hypothesis import strategies as st

from tcmu_pr.pr.nexus import NEXUS_MAX_LEN, Nexus
from tcmu_pr.pr.state import (
    ALL_REGISTRANTS_TYPES,
    PR_TYPES,
    UA_REGISTRATIONS_PREEMPTED,
    UA_RESERVATIONS_PREEMPTED,
    UA_RESERVATIONS_RELEASED,
    PRState,
    Registration,
    Reservation,
    UnitAttention,
)

ISCSI_INITIATORS = (
    "iqn.1994-05.com.redhat:client1",
    "iqn.1994-05.com.redhat:client2",
    "iqn.1993-08.org.debian:01:5e8f2a7c9b1d",
    "eui.02004567A425678D",
)
SAS_INITIATORS = ("naa.5001405a1b2c3d4e", "naa.50014059f8e7d6c5")
FC_INITIATORS = ("21:00:00:24:ff:31:4c:8a", "21:00:00:24:ff:31:4c:8b")
INITIATORS = ISCSI_INITIATORS + SAS_INITIATORS + FC_INITIATORS

ISCSI_TARGETS = ("iqn.2003-01.org.linux-iscsi.gw1:rbd", "iqn.2003-01.org.linux-iscsi.gw2:rbd")
SAS_TARGETS = ("naa.5001405123456789",)
FC_TARGETS = ("50:01:43:80:12:34:56:78",)

#: ISIDs as LIO prints them (%llx): the usual open-iscsi one, small ones, and 0 for FC/SAS.
ISIDS = ("23d000001", "23d000002", "1", "0")

SPECIAL_KEYS = (0, 1, 0xABC123, 0x1122334455667788, 2**63, 2**64 - 1)


def _pool(empty_isid: bool, long: bool) -> tuple[Nexus, ...]:
    """Every nexus the small alphabets allow, so drawing one is a single choice."""
    pool = []
    for initiators, targets, isids in (
        (ISCSI_INITIATORS, ISCSI_TARGETS, ISIDS[:3]),
        (SAS_INITIATORS, SAS_TARGETS, ("0",)),
        (FC_INITIATORS, FC_TARGETS, ("0",)),
    ):
        for initiator in initiators:
            for isid in (*isids, "") if empty_isid else isids:
                pool.extend(
                    Nexus(initiator, isid, target, tpgt)
                    for target in targets
                    for tpgt in ("1", "2", "3", "a")
                )
    if long:
        pool.extend(_long_nexus(pad, isid) for pad in (0, 1, 7) for isid in ("1", "23d000002"))
    return tuple(pool)


def _long_nexus(short_by: int, isid: str) -> Nexus:
    """A nexus ``short_by`` characters under the 483 a v1 peer accepts (LIO's buffers
    allow initiator names far longer than the 223 bytes iSCSI promises)."""
    target = ISCSI_TARGETS[0]
    prefix = "iqn.2024-01.org.example:"
    fixed = len(f"{prefix},i,0x{isid},{target},t,0x1")
    return Nexus(prefix + "h" * (NEXUS_MAX_LEN - fixed - short_by), isid, target, "1")


# Strategy objects are built once: building them inside every draw costs more than the draw.
_KEYS = st.one_of(st.sampled_from(SPECIAL_KEYS), st.integers(0, 2**64 - 1))
_NEXUSES = {
    (empty, long): st.sampled_from(_pool(empty, long))
    for empty in (False, True)
    for long in (False, True)
}


def keys() -> st.SearchStrategy[int]:
    """Reservation keys: mostly a few recurring values (so keys collide), incl. 0 and 2**64-1."""
    return _KEYS


def nexuses(*, empty_isid: bool = True, long: bool = True) -> st.SearchStrategy[Nexus]:
    """Realistic I_T nexuses; ``empty_isid``/``long`` allow the two edge forms."""
    return _NEXUSES[(empty_isid, long)]


_REGISTRATIONS = {
    True: st.builds(Registration, _KEYS, nexuses(empty_isid=False)),
    False: st.builds(
        Registration,
        _KEYS,
        nexuses(),
        st.one_of(st.none(), st.integers(1, 4), st.integers(0, 0xFFFF)),
        st.booleans(),
    ),
}
_UA_CODES = st.sampled_from(
    (UA_RESERVATIONS_PREEMPTED, UA_RESERVATIONS_RELEASED, UA_REGISTRATIONS_PREEMPTED)
)
_UNIT_ATTENTIONS = st.builds(
    lambda nexus, code, all_tg_pt: UnitAttention(nexus, *code, all_tg_pt),
    nexuses(),
    st.one_of(_UA_CODES, st.tuples(st.integers(0, 255), st.integers(0, 255))),
    st.booleans(),
)


def registrations(*, v1: bool = False) -> st.SearchStrategy[Registration]:
    """One registration; with ``v1`` only what a version 1 blob can hold."""
    return _REGISTRATIONS[v1]


def unit_attentions() -> st.SearchStrategy[UnitAttention]:
    """A pending unit attention: mostly the three PR ones (ASC 0x2A), sometimes any code."""
    return _UNIT_ATTENTIONS


def _distinct(regs: list[Registration]) -> tuple[Registration, ...]:
    """Drop every registration that would share an I_T nexus with an earlier one."""
    kept: list[Registration] = []
    for reg in regs:
        if not any(k.covers(reg.nexus) or reg.covers(k.nexus) for k in kept):
            kept.append(reg)
    return tuple(kept)


@st.composite
def _holder_nexus(draw: st.DrawFn, reg: Registration) -> Nexus:
    """A nexus ``reg`` covers: its own, or another port of its initiator if ALL_TG_PT."""
    n = reg.nexus
    if reg.all_tg_pt and draw(st.booleans()):
        other = draw(nexuses(empty_isid=False, long=False))
        return Nexus(n.initiator, n.isid or other.isid, other.target, other.tpgt)
    if not n.isid:
        return Nexus(n.initiator, draw(st.sampled_from(ISIDS)), n.target, n.tpgt)
    return n


@st.composite
def reservations(
    draw: st.DrawFn, regs: tuple[Registration, ...], *, v1: bool = False
) -> Reservation | None:
    """A reservation consistent with ``regs`` (held through one of them), or None."""
    if not regs or draw(st.integers(0, 3)) == 0:
        return None
    pr_type = draw(st.sampled_from(sorted(PR_TYPES)))
    holder = draw(st.sampled_from(regs))
    if pr_type in ALL_REGISTRANTS_TYPES and draw(st.integers(0, 4)) == 0:
        # The reserving nexus may have unregistered since; the reservation stays.
        nexus = draw(nexuses(empty_isid=not v1))
    else:
        nexus = holder.nexus if v1 else draw(_holder_nexus(holder))
    key = holder.key if draw(st.integers(0, 5)) else draw(keys())
    return Reservation(key, nexus, pr_type)


@st.composite
def pr_states(draw: st.DrawFn, *, v1: bool = False, max_registrations: int = 8) -> PRState:
    """A valid PR state; with ``v1`` one that a version 1 blob holds exactly."""
    max_regs = min(max_registrations, 14) if v1 else max_registrations
    regs = _distinct(draw(st.lists(registrations(v1=v1), max_size=max_regs)))
    return PRState(
        seq=draw(st.one_of(st.sampled_from((0, 1, 2**32 - 1)), st.integers(0, 2**32 - 1))),
        generation=draw(st.integers(0, 2**32 - 1)),
        scsi2_holder=draw(st.one_of(st.none(), nexuses(empty_isid=not v1))),
        reservation=draw(reservations(regs, v1=v1)),
        registrations=regs,
        aptpl=bool(regs) if v1 else draw(st.booleans()),
        unit_attentions=() if v1 else tuple(draw(st.lists(unit_attentions(), max_size=3))),
    )
