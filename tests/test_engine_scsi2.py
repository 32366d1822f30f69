"""RESERVE/RELEASE(6)/(10) (SPC-2 §5.5.1, §7.21, §7.22) with CRH=1 (SPC-4 §5.12.3),
the conflict-only answer for other CDBs, and unit attention delivery."""

from __future__ import annotations

import pytest
from engine_cases import A1, A2, B1, C1, CONFLICT, GOOD, INV_CDB, Expect, check, run, state
from pr_cdbs import basic_list, prout

from tcmu_pr import engine
from tcmu_pr.engine.cdb import RELEASE
from tcmu_pr.pr.state import UnitAttention

RESERVE_6 = bytes([0x16, 0, 0, 0, 0, 0])
RELEASE_6 = bytes([0x17, 0, 0, 0, 0, 0])
RESERVE_10 = bytes([0x56]) + bytes(9)
RELEASE_10 = bytes([0x57]) + bytes(9)
READ_10 = bytes([0x28]) + bytes(9)
WRITE_10 = bytes([0x2A]) + bytes(9)
INQUIRY = bytes([0x12, 0, 0, 0, 36, 0])

RESERVES = pytest.mark.parametrize("reserve", [RESERVE_6, RESERVE_10], ids=["6", "10"])
RELEASES = pytest.mark.parametrize("release", [RELEASE_6, RELEASE_10], ids=["6", "10"])


def case(id_, before, nexus, cdb, want):
    return pytest.param(before, nexus, cdb, want, id=id_)


@RESERVES
def test_reserve_takes_the_lu(reserve):
    out = run(state(), A1, reserve)
    assert out.status == 0 and out.state.scsi2_holder == A1 and out.state.generation == 7


@RESERVES
@pytest.mark.parametrize(
    "before,nexus,want",
    [
        pytest.param(state(scsi2=A1), A1, Expect(GOOD), id="SPC-2 7.21 holder re-reserves"),
        pytest.param(state(scsi2=A1), B1, Expect(CONFLICT), id="SPC-2 7.21 another nexus"),
        pytest.param(state(scsi2=A1), A2, Expect(CONFLICT), id="SPC-2 7.21 same initiator, port 2"),
        pytest.param(state({A1: 1}), B1, Expect(CONFLICT), id="5.12.3 unregistered, registrations"),
        pytest.param(state({A1: 1}), A1, Expect(CONFLICT), id="5.12.3 registered, no PR"),
        pytest.param(
            state({A1: 1, B1: 2}, (A1, 1)), B1, Expect(CONFLICT), id="5.12.3 registrant under WE"
        ),
        pytest.param(
            state({A1: 1}, (A1, 3)),
            A1,
            Expect(GOOD, res=(A1, 3)),
            id="5.12.3 PR holder: GOOD, nothing changes",
        ),
        pytest.param(
            state({A1: 1, B1: 2}, (A1, 5)),
            B1,
            Expect(GOOD, res=(A1, 5)),
            id="5.12.3 registrant under RO: GOOD no-op",
        ),
        pytest.param(
            state({A1: 1, B1: 2}, (A1, 8)),
            B1,
            Expect(GOOD, res=(A1, 8)),
            id="5.12.3 registrant under AR: GOOD no-op",
        ),
    ],
)
def test_reserve_rules(reserve, before, nexus, want):
    out = run(before, nexus, reserve)
    check(before, out, want)
    if want.answer == GOOD:
        assert out.state is before


@RELEASES
@pytest.mark.parametrize(
    "before,nexus,want,holder_after",
    [
        pytest.param(state(scsi2=A1), A1, Expect(GOOD), None, id="SPC-2 7.22 holder releases"),
        pytest.param(state(scsi2=A1), B1, Expect(GOOD), A1, id="SPC-2 7.22 non-holder: GOOD"),
        pytest.param(state(), B1, Expect(GOOD), None, id="SPC-2 7.22 nothing reserved"),
        pytest.param(state({A1: 1}), B1, Expect(CONFLICT), None, id="5.12.3 registrations"),
        pytest.param(
            state({A1: 1}, (A1, 6)),
            A1,
            Expect(GOOD, res=(A1, 6)),
            None,
            id="5.12.3 PR holder: PR not released",
        ),
    ],
)
def test_release_rules(release, before, nexus, want, holder_after):
    out = run(before, nexus, release)
    check(before, out, want)
    assert out.state.scsi2_holder == holder_after
    if holder_after == before.scsi2_holder:
        assert out.state is before


@pytest.mark.parametrize(
    "cdb",
    [
        pytest.param(bytes([0x16, 0x01, 0, 0, 0, 0]), id="RESERVE(6) extent"),
        pytest.param(bytes([0x16, 0x10, 0, 0, 0, 0]), id="RESERVE(6) 3rdPty"),
        pytest.param(bytes([0x56, 0x10]) + bytes(8), id="RESERVE(10) 3RDPTY"),
        pytest.param(bytes([0x56, 0x02]) + bytes(8), id="RESERVE(10) LONGID"),
        pytest.param(bytes([0x57, 0x12]) + bytes(8), id="RELEASE(10) 3RDPTY+LONGID"),
        pytest.param(bytes([0x56, 0, 0]), id="RESERVE(10) truncated"),
    ],
)
def test_third_party_and_extents_refused(cdb):
    before = state()
    check(before, run(before, A1, cdb), Expect(INV_CDB))


def test_scsi2_then_pr_out_then_release():
    """SPC-2 §5.5.1: while reserved, PR OUT conflicts; after RELEASE it works again."""
    held = run(state(), A1, RESERVE_6).state
    assert run(held, B1, *prout(RELEASE, basic_list(0), 1)).status == 0x18
    free = run(held, A1, RELEASE_10).state
    assert free.scsi2_holder is None
    assert run(free, B1, *prout(0, basic_list(0, 5))).status == 0


OTHER_CDB_CASES = [
    case("SPC-2 5.5.1 READ from another nexus", state(scsi2=A1), B1, READ_10, CONFLICT),
    case("SPC-2 5.5.1 READ from the holder", state(scsi2=A1), A1, READ_10, GOOD),
    case("SPC-2 5.5.1 INQUIRY from another nexus", state(scsi2=A1), B1, INQUIRY, GOOD),
    case("5.12 WRITE under WE from a registrant", state({A1: 1, B1: 2}, (A1, 1)), B1,
         WRITE_10, CONFLICT),
    case("5.12 READ under WE from a stranger", state({A1: 1}, (A1, 1)), C1, READ_10, GOOD),
    case("5.12 WRITE under WE-RO from a registrant", state({A1: 1, B1: 2}, (A1, 5)), B1,
         WRITE_10, GOOD),
    case("5.12 READ under EA from a stranger", state({A1: 1}, (A1, 3)), C1, READ_10, CONFLICT),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cdb,want", OTHER_CDB_CASES)
def test_other_cdbs_answer_the_conflict_check_only(before, nexus, cdb, want):
    out = run(before, nexus, cdb)
    check(before, out, Expect(want))
    assert out.state is before and out.data is None


def test_empty_cdb():
    out = run(state(), A1, b"")
    assert out.status == 2 and out.sense[12] == 0x20


def test_take_unit_attention_oldest_first_and_only_for_its_nexus():
    """SAM-5: UAs are delivered oldest first, each once, to the nexus they address."""
    before = state({A1: 1, B1: 2, C1: 3}, (A1, 5))
    released = run(before, A1, *prout(RELEASE, basic_list(1), 5)).state
    cleared = run(released, C1, *prout(3, basic_list(3))).state
    s, ua = engine.take_unit_attention(cleared, B1)
    assert ua == UnitAttention(B1, 0x2A, 0x04)
    s, ua = engine.take_unit_attention(s, B1)
    assert ua == UnitAttention(B1, 0x2A, 0x03)
    same, none = engine.take_unit_attention(s, B1)
    assert none is None and same is s
    s, ua = engine.take_unit_attention(s, A1)
    assert ua == UnitAttention(A1, 0x2A, 0x03)
    assert engine.take_unit_attention(s, A2) == (s, None)


def test_all_tg_pt_unit_attention_reaches_any_port():
    before = state({A1: 1, B1: 2}, (B1, 5), all_tg_pt=(A1,))
    s = run(before, B1, *prout(RELEASE, basic_list(2), 5)).state
    s, ua = engine.take_unit_attention(s, A2)
    assert ua is not None and ua.all_tg_pt and ua.ascq == 0x04


def test_nexus_loss_releases_the_holders_scsi2_reservation_with_ua_29_07():
    after = engine.scsi2.nexus_lost(state(scsi2=A1), A1)
    assert after.scsi2_holder is None
    assert after.unit_attentions == (UnitAttention(A1, 0x29, 0x07),)


def test_nexus_loss_of_another_nexus_changes_nothing():
    before = state(scsi2=A1)
    assert engine.scsi2.nexus_lost(before, A2) is before  # another ISID: another nexus
    assert engine.scsi2.nexus_lost(before, B1) is before
    plain = state()
    assert engine.scsi2.nexus_lost(plain, A1) is plain
