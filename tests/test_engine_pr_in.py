"""PERSISTENT RESERVE IN (SPC-4 §6.15): byte layouts from the standard's tables."""

from __future__ import annotations

import pytest
from engine_cases import A1, A2, B1, B2, C1, CONFLICT, INV_CDB, Expect, check, run, state
from pr_cdbs import basic_list, iscsi_tid, prin_cdb, prout

from tcmu_pr import scsi
from tcmu_pr.engine.cdb import (
    READ_FULL_STATUS,
    READ_KEYS,
    READ_RESERVATION,
    REGISTER,
    REPORT_CAPABILITIES,
)
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import PRState, Registration, Reservation


def u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def good_data(before: PRState, nexus: Nexus, cdb: bytes) -> bytes:
    out = run(before, nexus, cdb)
    assert (out.status, out.sense) == (scsi.GOOD, None)
    assert out.state is before, "PR IN never changes the state"
    assert out.data is not None
    return out.data


def test_read_keys_6_15_2():
    """§6.15.2: PRGENERATION, ADDITIONAL LENGTH = 8 * registrations, then the keys."""
    before = state({A1: 0xABC123, B1: 2, C1: 0xABC123}, (B1, 5), generation=0x12345678)
    data = good_data(before, C1, prin_cdb(READ_KEYS))
    assert data == u32(0x12345678) + u32(24) + u64(0xABC123) + u64(2) + u64(0xABC123)


def test_read_keys_empty():
    assert good_data(state(generation=3), A1, prin_cdb(READ_KEYS)) == u32(3) + u32(0)


@pytest.mark.parametrize("type_", [1, 3, 5, 6])
def test_read_reservation_6_15_3(type_):
    """§6.15.3: key of the holder, scope LU_SCOPE (0), type; 16 bytes of descriptor."""
    before = state({A1: 1, B1: 0xFEED}, (B1, type_), generation=9)
    data = good_data(before, A1, prin_cdb(READ_RESERVATION))
    assert data == u32(9) + u32(16) + u64(0xFEED) + bytes(4) + bytes([0, type_]) + bytes(2)


@pytest.mark.parametrize("type_", [7, 8])
def test_read_reservation_all_registrants_reports_key_zero(type_):
    """§5.12.10 / §6.15.3: an all-registrants reservation reports RESERVATION KEY 0."""
    before = state({A1: 1, B1: 2}, (B1, type_), generation=9)
    data = good_data(before, A1, prin_cdb(READ_RESERVATION))
    assert data == u32(9) + u32(16) + u64(0) + bytes(5) + bytes([type_]) + bytes(2)


def test_read_reservation_none():
    assert good_data(state({A1: 1}), A1, prin_cdb(READ_RESERVATION)) == u32(7) + u32(0)


@pytest.mark.parametrize("aptpl", [False, True])
def test_report_capabilities_6_15_4(aptpl):
    """§6.15.4: LENGTH 8; CRH, SIP_C, ATP_C, PTPL_C; TMV, ALLOW COMMANDS 011b, PTPL_A;
    type mask WR_EX_AR|EX_AC_RO|WR_EX_RO|EX_AC|WR_EX and EX_AC_AR; RLR_C 0."""
    before = PRState(aptpl=aptpl)
    data = good_data(before, A1, prin_cdb(REPORT_CAPABILITIES))
    assert data == bytes([0x00, 0x08, 0x1D, 0xB0 | aptpl, 0xEA, 0x01, 0x00, 0x00])


def test_report_capabilities_follows_last_register_aptpl():
    """§6.16.3: PTPL_A reflects the APTPL bit of the last REGISTER."""
    s = run(PRState(), A1, *prout(REGISTER, basic_list(0, 1, aptpl=True))).state
    assert good_data(s, A1, prin_cdb(REPORT_CAPABILITIES))[3] & 1


def test_read_full_status_6_15_5():
    """§6.15.5: one descriptor per registration: key, ALL_TG_PT, R_HOLDER, scope/type,
    RELATIVE TARGET PORT IDENTIFIER, ADDITIONAL DESCRIPTOR LENGTH, TransportID."""
    before = PRState(
        generation=5,
        registrations=(Registration(1, A1, rtpi=3), Registration(2, B2, all_tg_pt=True)),
        reservation=Reservation(2, B2, 5),
    )
    data = good_data(before, C1, prin_cdb(READ_FULL_STATUS))
    tid_a = iscsi_tid(A1.initiator, A1.isid_value)
    tid_b = iscsi_tid(B2.initiator, B2.isid_value)
    desc_a = u64(1) + bytes(4) + bytes([0x00, 0x00]) + bytes(4) + (3).to_bytes(2, "big")
    desc_a += u32(len(tid_a)) + tid_a
    desc_b = u64(2) + bytes(4) + bytes([0x03, 0x05]) + bytes(4) + (2).to_bytes(2, "big")
    desc_b += u32(len(tid_b)) + tid_b
    assert data == u32(5) + u32(len(desc_a) + len(desc_b)) + desc_a + desc_b


def test_read_full_status_all_registrants_marks_everyone_holder():
    before = state({A1: 1, B1: 2}, (A1, 8))
    data = good_data(before, A1, prin_cdb(READ_FULL_STATUS))
    first = 8
    second = first + 24 + int.from_bytes(data[first + 20 : first + 24], "big")
    assert data[first + 12] & 1 and data[second + 12] & 1
    assert data[first + 13] == data[second + 13] == 8


@pytest.mark.parametrize("sa", [READ_KEYS, READ_RESERVATION, REPORT_CAPABILITIES, READ_FULL_STATUS])
@pytest.mark.parametrize("alloc", [0, 1, 4, 8, 12, 30])
def test_allocation_length_truncates_but_lengths_stay_whole(sa, alloc):
    """§4.2.5.6: the data is cut to ALLOCATION LENGTH; length fields describe the full list."""
    before = state({A1: 1, B1: 2}, (A1, 5))
    full = good_data(before, A1, prin_cdb(sa))
    assert good_data(before, A1, prin_cdb(sa, alloc)) == full[:alloc]


@pytest.mark.parametrize("sa", [4, 5, 0x1F])
def test_invalid_service_action(sa):
    before = state({A1: 1})
    check(before, run(before, A1, prin_cdb(sa)), Expect(INV_CDB))


def test_short_cdb():
    before = state()
    check(before, run(before, A1, prin_cdb(READ_KEYS)[:8]), Expect(INV_CDB))


def test_scsi2_reservation_blocks_other_nexuses_only():
    """SPC-2 §5.5.1: PR IN conflicts under another nexus's RESERVE; the holder may read."""
    before = state(scsi2=A1)
    check(before, run(before, A2, prin_cdb(READ_KEYS)), Expect(CONFLICT))
    assert good_data(before, A1, prin_cdb(READ_KEYS)) == u32(7) + u32(0)


def test_full_status_of_an_inexpressible_nexus_is_a_target_failure():
    """A nexus no TransportID can carry (name > 223 bytes) fails the report, not the daemon."""
    long_name = Nexus.make("iqn.x:" + "n" * 300, "iqn.t", isid=1)
    before = PRState(registrations=(Registration(1, long_name),))
    out = run(before, A1, prin_cdb(READ_FULL_STATUS))
    assert out.status == scsi.CHECK_CONDITION and out.sense[2] == 0x4 and out.sense[12] == 0x44
    assert out.state is before


@pytest.mark.parametrize(
    "cdb,through_we,through_ea",
    [
        (bytes([0x00]) + bytes(5), True, True),  # TEST UNIT READY
        (bytes([0x1A, 0, 0x3F, 0, 0xFF, 0]), True, False),  # MODE SENSE(6)
        (bytes([0x3C]) + bytes(9), True, False),  # READ BUFFER
        (bytes([0xA3, 0x0C]) + bytes(10), True, False),  # REPORT SUPPORTED OPERATION CODES
        (bytes([0x37]) + bytes(9), True, False),  # READ DEFECT DATA(10)
        (bytes([0x84, 0x03]) + bytes(14), False, False),  # RECEIVE COPY RESULTS
    ],
)
def test_allow_commands_011b_is_what_the_conflict_check_does(cdb, through_we, through_ea):
    """§6.15.4 table "ALLOW COMMANDS field", code 011b, checked against a stranger's view."""
    assert good_data(PRState(), A1, prin_cdb(REPORT_CAPABILITIES))[3] & 0x70 == 0x30
    for type_, allowed in ((1, through_we), (3, through_ea)):
        before = state({B1: 2}, (B1, type_))
        out = run(before, C1, cdb)
        assert out.status == (0 if allowed else 0x18), (type_, cdb.hex())
