"""The conflict table: SPC-4/SBC-3 rows, SCSI-2 reservations, and the ring loop's verdict word."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcmu_pr.engine.conflict import allowed, verdict
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import (
    PR_TYPES,
    UA_RESERVATIONS_RELEASED,
    PRState,
    Registration,
    Reservation,
    UnitAttention,
)
from tcmu_pr.ring.abi import VERDICT_READ, VERDICT_UA, VERDICT_WRITE

TPORT = "iqn.2003-01.org.linux-iscsi.gw:rbd"
HOLDER = Nexus.make("iqn.1994-05.com.redhat:h", TPORT, isid=0x23D000001)
REGISTRANT = Nexus.make("iqn.1994-05.com.redhat:r", TPORT, isid=0x23D000002)
OTHER = Nexus.make("iqn.1994-05.com.redhat:o", TPORT, isid=0x23D000003)
# The holder's initiator port on another target port: a different I_T nexus.
HOLDER_ELSEWHERE = Nexus.make(HOLDER.initiator, TPORT, isid=0x23D000001, tpgt=2)


def cdb(op: int, b1: int = 0, size: int = 16, **at: int) -> bytes:
    buf = bytearray(size)
    buf[0], buf[1] = op, b1
    for index, value in at.items():
        buf[int(index[1:])] = value
    return bytes(buf)


def var32(sa: int) -> bytes:
    buf = bytearray(32)
    buf[0], buf[7], buf[8:10] = 0x7F, 0x18, sa.to_bytes(2, "big")
    return bytes(buf)


READS = [cdb(0x08, size=6), cdb(0x28, size=10), cdb(0xA8, size=12), cdb(0x88), var32(0x9)]
WRITES = [cdb(0x0A, size=6), cdb(0x2A, size=10), cdb(0xAA, size=12), cdb(0x8A), var32(0xB)]

# SPC-4 "SPC commands that are allowed in the presence of various reservations" and SBC-3's
# block-command table, transcribed as text.  Columns: Write Exclusive (any nexus), Exclusive
# Access (any nexus), WE-RO/WE-AR from a registered / not registered nexus, EA-RO/EA-AR from a
# registered / not registered nexus.
SPC_ROWS: list[tuple[str, bytes, str]] = [
    ("ACCESS CONTROL IN", cdb(0x86), "A A A A A A"),
    ("ACCESS CONTROL OUT", cdb(0x87), "A A A A A A"),
    ("CHANGE ALIASES", cdb(0xA4, 0x0B), "C C A C A C"),
    ("EXTENDED COPY", cdb(0x83), "C C A C A C"),
    ("INQUIRY", cdb(0x12, size=6), "A A A A A A"),
    ("LOG SELECT", cdb(0x4C, size=10), "C C A C A C"),
    ("LOG SENSE", cdb(0x4D, size=10), "A A A A A A"),
    ("MANAGEMENT PROTOCOL IN", cdb(0xA3, 0x10), "A C A A A C"),
    ("MANAGEMENT PROTOCOL OUT", cdb(0xA4, 0x10), "C C A C A C"),
    ("MODE SELECT(6)", cdb(0x15, size=6), "C C A C A C"),
    ("MODE SELECT(10)", cdb(0x55, size=10), "C C A C A C"),
    ("MODE SENSE(6)", cdb(0x1A, size=6), "A C A A A C"),
    ("MODE SENSE(10)", cdb(0x5A, size=10), "A C A A A C"),
    ("PERSISTENT RESERVE IN", cdb(0x5E, 0x00, size=10), "A A A A A A"),
    ("READ ATTRIBUTE", cdb(0x8C), "A C A A A C"),
    ("READ BUFFER", cdb(0x3C, size=10), "A C A A A C"),
    ("READ MEDIA SERIAL NUMBER", cdb(0xAB, 0x01, size=12), "A A A A A A"),
    ("RECEIVE COPY RESULTS", cdb(0x84), "C C A C A C"),
    ("RECEIVE DIAGNOSTIC RESULTS", cdb(0x1C, size=6), "A C A A A C"),
    ("REPORT ALIASES", cdb(0xA3, 0x0B, size=12), "A A A A A A"),
    ("REPORT IDENTIFYING INFORMATION", cdb(0xA3, 0x05, size=12), "A A A A A A"),
    ("REPORT LUNS", cdb(0xA0, size=12), "A A A A A A"),
    ("REPORT PRIORITY", cdb(0xA3, 0x0E, size=12), "A A A A A A"),
    ("REPORT SUPPORTED OPERATION CODES", cdb(0xA3, 0x0C, size=12), "A C A A A C"),
    ("REPORT SUPPORTED TMFS", cdb(0xA3, 0x0D, size=12), "A C A A A C"),
    ("REPORT TARGET PORT GROUPS", cdb(0xA3, 0x0A, size=12), "A A A A A A"),
    ("REPORT TIMESTAMP", cdb(0xA3, 0x0F, size=12), "A A A A A A"),
    ("REQUEST SENSE", cdb(0x03, size=6), "A A A A A A"),
    ("SECURITY PROTOCOL IN", cdb(0xA2, size=12), "A C A A A C"),
    ("SECURITY PROTOCOL OUT", cdb(0xB5, size=12), "C C A C A C"),
    ("SET IDENTIFYING INFORMATION", cdb(0xA4, 0x06, size=12), "C C A C A C"),
    ("SET PRIORITY", cdb(0xA4, 0x0E, size=12), "C C A C A C"),
    ("SET TARGET PORT GROUPS", cdb(0xA4, 0x0A, size=12), "C C A C A C"),
    ("SET TIMESTAMP", cdb(0xA4, 0x0F, size=12), "C C A C A C"),
    ("TEST UNIT READY", cdb(0x00, size=6), "A A A A A A"),
    ("WRITE ATTRIBUTE", cdb(0x8D), "C C A C A C"),
    ("WRITE BUFFER", cdb(0x3B, size=10), "C C A C A C"),
    ("SEND DIAGNOSTIC", cdb(0x1D, size=6), "C C A C A C"),
    # SBC-3
    ("COMPARE AND WRITE", cdb(0x89), "C C A C A C"),
    ("FORMAT UNIT", cdb(0x04, size=6), "C C A C A C"),
    ("GET LBA STATUS", cdb(0x9E, 0x12), "A C A A A C"),
    ("ORWRITE(16)", cdb(0x8B), "C C A C A C"),
    ("PRE-FETCH(10)", cdb(0x34, size=10), "A C A A A C"),
    ("PRE-FETCH(16)", cdb(0x90), "A C A A A C"),
    ("PREVENT ALLOW MEDIUM REMOVAL (PREVENT=0)", cdb(0x1E, size=6), "A A A A A A"),
    ("PREVENT ALLOW MEDIUM REMOVAL (PREVENT<>0)", cdb(0x1E, size=6, b4=1), "C C A C A C"),
    *[(f"READ opcode {c[0]:#x}", c, "A C A A A C") for c in READS],
    ("READ CAPACITY(10)", cdb(0x25, size=10), "A A A A A A"),
    ("READ CAPACITY(16)", cdb(0x9E, 0x10), "A A A A A A"),
    ("READ LONG(16)", cdb(0x9E, 0x11), "A C A A A C"),
    ("REASSIGN BLOCKS", cdb(0x07, size=6), "C C A C A C"),
    ("SANITIZE", cdb(0x48, size=10), "C C A C A C"),
    ("START STOP UNIT (START=1, POWER CONDITION=0)", cdb(0x1B, size=6, b4=1), "A A A A A A"),
    ("START STOP UNIT (START=0)", cdb(0x1B, size=6), "C C A C A C"),
    ("START STOP UNIT (POWER CONDITION<>0)", cdb(0x1B, size=6, b4=0x31), "C C A C A C"),
    ("SYNCHRONIZE CACHE(10)", cdb(0x35, size=10), "C C A C A C"),
    ("SYNCHRONIZE CACHE(16)", cdb(0x91), "C C A C A C"),
    ("UNMAP", cdb(0x42, size=10), "C C A C A C"),
    ("VERIFY(10)", cdb(0x2F, size=10), "A C A A A C"),
    ("VERIFY(16)", cdb(0x8F), "A C A A A C"),
    ("VERIFY(32)", var32(0xA), "A C A A A C"),
    *[(f"WRITE opcode {c[0]:#x}", c, "C C A C A C") for c in WRITES],
    ("WRITE AND VERIFY(10)", cdb(0x2E, size=10), "C C A C A C"),
    ("WRITE LONG(16)", cdb(0x9F, 0x11), "C C A C A C"),
    ("WRITE SAME(10)", cdb(0x41, size=10), "C C A C A C"),
    ("WRITE SAME(16)", cdb(0x93), "C C A C A C"),
    ("WRITE SAME(32)", var32(0xD), "C C A C A C"),
    # SPC-4 §5.12.3: RESERVE/RELEASE under a PR: no-op for registrants of RO/AR types,
    # otherwise SPC-2 behaviour, i.e. conflict because registrations exist.
    ("RESERVE(6)", cdb(0x16, size=6), "C C A C A C"),
    ("RELEASE(10)", cdb(0x57, size=10), "C C A C A C"),
    # Not in any table: treated like a WRITE (module docstring).
    ("vendor opcode C0h", cdb(0xC0), "C C A C A C"),
    ("unknown MAINTENANCE IN service action", cdb(0xA3, 0x1F, size=12), "C C A C A C"),
    ("empty CDB", b"", "C C A C A C"),
]

# SPC-4 "PERSISTENT RESERVE OUT service actions that are allowed in the presence of various
# reservations": the same for every type; columns: registered / not registered nexus.
PR_OUT_ROWS = [
    ("CLEAR", 0x03, "A C"),
    ("PREEMPT", 0x04, "A C"),
    ("PREEMPT AND ABORT", 0x05, "A C"),
    ("REGISTER", 0x00, "A A"),
    ("REGISTER AND IGNORE EXISTING KEY", 0x06, "A A"),
    ("REGISTER AND MOVE", 0x07, "C C"),
    ("RELEASE", 0x02, "A C"),
    ("RESERVE", 0x01, "C C"),
    ("unknown service action (left to the engine)", 0x1A, "A A"),
]

ROLES = ("holder", "registrant", "other")


def reserved(pr_type: int) -> PRState:
    regs = (Registration(0x1, HOLDER), Registration(0x2, REGISTRANT))
    return PRState(registrations=regs, reservation=Reservation(0x1, HOLDER, pr_type))


def nexus_of(role: str) -> Nexus:
    return {"holder": HOLDER, "registrant": REGISTRANT, "other": OTHER}[role]


def expected_cell(cells: str, pr_type: int, role: str) -> bool:
    """Pick the table cell for a role; the holder (and any AR registrant) is never limited."""
    if role == "holder" or (role == "registrant" and pr_type in (7, 8)):
        return True
    we, ea, we_reg, we_not, ea_reg, ea_not = (c == "A" for c in cells.split())
    registered = role == "registrant"
    if pr_type == 1:
        return we
    if pr_type == 3:
        return ea
    if pr_type in (5, 7):
        return we_reg if registered else we_not
    return ea_reg if registered else ea_not


@pytest.mark.parametrize(("name", "command", "cells"), SPC_ROWS, ids=[r[0] for r in SPC_ROWS])
def test_spc_sbc_table(name: str, command: bytes, cells: str) -> None:
    for pr_type, role in itertools.product(sorted(PR_TYPES), ROLES):
        want = expected_cell(cells, pr_type, role)
        got = allowed(reserved(pr_type), nexus_of(role), command)
        assert got is want, f"{name} type {pr_type} {role}: {got}"
        # No reservation at all: nothing conflicts.
        assert allowed(PRState(registrations=reserved(pr_type).registrations), OTHER, command)


@pytest.mark.parametrize(("name", "sa", "cells"), PR_OUT_ROWS, ids=[r[0] for r in PR_OUT_ROWS])
def test_pr_out_table(name: str, sa: int, cells: str) -> None:
    reg_cell, not_cell = (c == "A" for c in cells.split())
    command = cdb(0x5F, sa, size=10)
    for pr_type in sorted(PR_TYPES):
        state = reserved(pr_type)
        assert allowed(state, HOLDER, command), name
        all_reg = pr_type in (7, 8)  # a registrant is a holder there
        assert allowed(state, REGISTRANT, command) is (True if all_reg else reg_cell), name
        assert allowed(state, OTHER, command) is not_cell, name


def test_holder_identity_is_the_i_t_nexus() -> None:
    state = reserved(3)  # Exclusive Access
    read = READS[1]
    assert allowed(state, HOLDER, read)
    # Same initiator port through another target port: not the holder, not registered.
    assert not allowed(state, HOLDER_ELSEWHERE, read)
    other_isid = Nexus.make(HOLDER.initiator, TPORT, isid=0x23D000009)
    assert not allowed(state, other_isid, read)
    # An ALL_TG_PT registration makes it a holder on every target port.
    wide = PRState(
        registrations=(Registration(0x1, HOLDER, all_tg_pt=True),),
        reservation=Reservation(0x1, HOLDER, 3),
    )
    assert allowed(wide, HOLDER_ELSEWHERE, read)


def test_unknown_reservation_type_is_treated_as_exclusive_access() -> None:
    for command in (*READS, *WRITES, cdb(0x1A, size=6)):
        assert not allowed(reserved(0x2), REGISTRANT, command)
        assert not allowed(reserved(0xF), OTHER, command)
        assert allowed(reserved(0xF), HOLDER, command)
    assert allowed(reserved(0xF), OTHER, cdb(0x12, size=6))


# SCSI-2 (RESERVE(6)/(10)) held by HOLDER: what another I_T nexus may still do.
SCSI2_ROWS = [
    ("INQUIRY", cdb(0x12, size=6), True),
    ("REQUEST SENSE", cdb(0x03, size=6), True),
    ("REPORT LUNS", cdb(0xA0, size=12), True),
    ("LOG SENSE", cdb(0x4D, size=10), True),
    ("READ CAPACITY(10)", cdb(0x25, size=10), True),
    ("READ CAPACITY(16)", cdb(0x9E, 0x10), True),
    ("RELEASE(6)", cdb(0x17, size=6), True),
    ("RELEASE(10)", cdb(0x57, size=10), True),
    ("PREVENT ALLOW (PREVENT=0)", cdb(0x1E, size=6), True),
    ("START STOP UNIT (START=1)", cdb(0x1B, size=6, b4=1), True),
    ("RESERVE(6)", cdb(0x16, size=6), False),
    ("RESERVE(10)", cdb(0x56, size=10), False),
    ("TEST UNIT READY", cdb(0x00, size=6), False),
    ("PERSISTENT RESERVE IN", cdb(0x5E, size=10), False),
    ("PERSISTENT RESERVE OUT REGISTER", cdb(0x5F, 0x00, size=10), False),
    ("MODE SENSE(6)", cdb(0x1A, size=6), False),
    ("REPORT TARGET PORT GROUPS", cdb(0xA3, 0x0A, size=12), False),
    ("GET LBA STATUS", cdb(0x9E, 0x12), False),
    ("SYNCHRONIZE CACHE(10)", cdb(0x35, size=10), False),
    *[(f"READ {c[0]:#x}", c, False) for c in READS],
    *[(f"WRITE {c[0]:#x}", c, False) for c in WRITES],
    ("empty CDB", b"", False),
]


@pytest.mark.parametrize(("name", "command", "others"), SCSI2_ROWS, ids=[r[0] for r in SCSI2_ROWS])
def test_scsi2_reservation(name: str, command: bytes, others: bool) -> None:
    state = PRState(scsi2_holder=HOLDER)
    assert allowed(state, HOLDER, command), name
    for nexus in (OTHER, HOLDER_ELSEWHERE, Nexus.make(HOLDER.initiator, TPORT, isid=7)):
        assert allowed(state, nexus, command) is others, (name, str(nexus))
    # A holder recorded without ISID stands for its initiator on that target port.
    any_isid = PRState(scsi2_holder=Nexus(HOLDER.initiator, "", TPORT, "1"))
    assert allowed(any_isid, Nexus.make(HOLDER.initiator, TPORT, isid=7), command)
    assert allowed(any_isid, OTHER, command) is others


def test_every_opcode_and_length_answers_a_bool() -> None:
    states = [PRState(), PRState(scsi2_holder=HOLDER)]
    states += [reserved(t) for t in (*sorted(PR_TYPES), 0, 2, 0xFF)]
    for op in range(256):
        for size in (1, 2, 5, 6, 10, 16, 32):
            for b1 in (0x00, 0x10, 0x1F, 0xFF):
                command = bytes([op, b1]) + bytes([0xFF]) * (size - 2) if size > 1 else bytes([op])
                for state, nexus in itertools.product(states, (HOLDER, REGISTRANT, OTHER)):
                    result = allowed(state, nexus, command)
                    assert type(result) is bool
                    if state.reservation is None and state.scsi2_holder is None:
                        assert result


# --- verdict ------------------------------------------------------------------------------


def reference_read_write(state: PRState, nexus: Nexus) -> tuple[bool, bool]:
    """READ/WRITE per SPC-4's reservation-type text (§6.16.4 table), written independently.

    Write Exclusive: only the holder writes, anyone reads.  Exclusive Access: only the holder
    reads or writes.  ...Registrants Only / ...All Registrants: registrants read and write;
    the write-exclusive variant lets everyone read.  A SCSI-2 reservation of another I_T
    nexus blocks both.
    """
    s2 = state.scsi2_holder
    if s2 is not None and not (s2.same_initiator_port(nexus) and s2.same_target_port(nexus)):
        return False, False
    res = state.reservation
    if res is None:
        return True, True
    registered = any(r.covers(nexus) for r in state.registrations)
    holder_reg = next((r for r in state.registrations if r.covers(res.nexus)), None)
    holder = registered and (
        res.type in (7, 8) or any(r.covers(nexus) and r is holder_reg for r in state.registrations)
    )
    if holder:
        return True, True
    if res.type == 1:
        return True, False
    if res.type in (5, 7):
        return True, registered
    if res.type in (6, 8):
        return registered, registered
    return False, False  # Exclusive Access, and any type SPC does not define


POOL = [
    HOLDER,
    REGISTRANT,
    OTHER,
    HOLDER_ELSEWHERE,
    Nexus(REGISTRANT.initiator, "", TPORT, "1"),
    Nexus.make("naa.6001405abcdef012", "naa.5001405000000001"),
]


@st.composite
def pr_states(draw: st.DrawFn) -> PRState:
    chosen = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=len(POOL)))
    regs = tuple(
        Registration(i + 1, n, all_tg_pt=draw(st.booleans())) for i, n in enumerate(chosen)
    )
    reservation = None
    if draw(st.booleans()):
        # Usually a registered holder; sometimes a dangling one, which must not crash.
        who = (
            draw(st.sampled_from(chosen))
            if chosen and draw(st.booleans())
            else draw(st.sampled_from(POOL))
        )
        pr_type = draw(st.sampled_from([*sorted(PR_TYPES), 0x0, 0x2, 0x9]))
        reservation = Reservation(0x1, who, pr_type)
    scsi2 = draw(st.none() | st.sampled_from(POOL))
    uas = tuple(
        UnitAttention(n, *UA_RESERVATIONS_RELEASED, all_tg_pt=draw(st.booleans()))
        for n in draw(st.lists(st.sampled_from(POOL), max_size=2))
    )
    return PRState(
        registrations=regs, reservation=reservation, scsi2_holder=scsi2, unit_attentions=uas
    )


def check_verdict(state: PRState, nexus: Nexus) -> None:
    word = verdict(state, nexus)
    assert word & ~(VERDICT_READ | VERDICT_WRITE | VERDICT_UA) == 0
    can_read, can_write = bool(word & VERDICT_READ), bool(word & VERDICT_WRITE)
    # Every READ and WRITE size behaves like READ(10)/WRITE(10).
    assert all(allowed(state, nexus, c) is can_read for c in READS)
    assert all(allowed(state, nexus, c) is can_write for c in WRITES)
    assert (can_read, can_write) == reference_read_write(state, nexus)
    assert bool(word & VERDICT_UA) == any(ua.addresses(nexus) for ua in state.unit_attentions)


@given(pr_states(), st.sampled_from(POOL))
def test_verdict_agrees_with_allowed_and_the_reference(state: PRState, nexus: Nexus) -> None:
    check_verdict(state, nexus)


def test_verdict_exhaustive_over_small_states() -> None:
    """Every state over three nexuses: each type, holder, registration subset, SCSI-2 holder."""
    trio = (HOLDER, REGISTRANT, OTHER)
    checked = 0
    for mask in range(8):
        regs = tuple(Registration(i + 1, n) for i, n in enumerate(trio) if mask >> i & 1)
        for res_type, who, scsi2 in itertools.product(
            (None, *sorted(PR_TYPES), 0x2), trio, (None, *trio)
        ):
            reservation = None if res_type is None else Reservation(1, who, res_type)
            state = PRState(registrations=regs, reservation=reservation, scsi2_holder=scsi2)
            for nexus in (*trio, HOLDER_ELSEWHERE):
                check_verdict(state, nexus)
                checked += 1
    assert checked == 8 * 8 * 3 * 4 * 4


def test_verdict_words() -> None:
    assert verdict(PRState(), OTHER) == VERDICT_READ | VERDICT_WRITE
    assert verdict(reserved(1), OTHER) == VERDICT_READ
    assert verdict(reserved(3), OTHER) == 0
    assert verdict(reserved(6), REGISTRANT) == VERDICT_READ | VERDICT_WRITE
    ua = PRState(unit_attentions=(UnitAttention(OTHER, *UA_RESERVATIONS_RELEASED),))
    assert verdict(ua, OTHER) == VERDICT_READ | VERDICT_WRITE | VERDICT_UA
    assert verdict(ua, REGISTRANT) == VERDICT_READ | VERDICT_WRITE
