"""PERSISTENT RESERVE OUT, one table per service action; case ids cite SPC-4 (r37) clauses."""

from __future__ import annotations

import pytest
from engine_cases import (
    A1,
    A2,
    B1,
    B2,
    C1,
    C2,
    CONFLICT,
    GOOD,
    INV_CDB,
    INV_PL,
    INV_RELEASE,
    NO_RESOURCES,
    PLL,
    REG_PREEMPTED,
    RES_PREEMPTED,
    RES_RELEASED,
    Expect,
    check,
    run,
    state,
)
from pr_cdbs import basic_list, iscsi_tid, move_list, prout, prout_cdb

from tcmu_pr.engine.cdb import (
    CLEAR,
    PREEMPT,
    PREEMPT_AND_ABORT,
    REGISTER,
    REGISTER_AND_IGNORE_EXISTING_KEY,
    REGISTER_AND_MOVE,
    RELEASE,
    REPLACE_LOST_RESERVATION,
    RESERVE,
)
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import MAX_REGISTRATIONS, PRState, Registration

TYPES = [1, 3, 5, 6, 7, 8]
AR = {7, 8}
RO_AR = {5, 6, 7, 8}


def tid(n: Nexus, *, isid: bool = True) -> bytes:
    return iscsi_tid(n.initiator, n.isid_value if isid else None)


def case(id_, before, nexus, cmd, want, **kw):
    return pytest.param(before, nexus, cmd, want, kw, id=id_)


def _run_table(before, nexus, cmd, want, kw):
    cdb, data = cmd
    check(before, run(before, nexus, cdb, data, **kw), want)


# --- REGISTER (§5.12.7, table "Register behaviors for a REGISTER service action") ---------
REGISTER_CASES = [
    case("5.12.7 unregistered key0 sa!=0 registers", state(), A1,
         prout(REGISTER, basic_list(0, 0xA)), Expect(regs={A1: 0xA}, gen=1)),
    case("5.12.7 unregistered key!=0 conflicts", state(), A1,
         prout(REGISTER, basic_list(5, 0xA)), Expect(CONFLICT)),
    case("5.12.7 unregistered key0 sa0 does nothing", state({B1: 1}), A1,
         prout(REGISTER, basic_list(0, 0)), Expect(regs={B1: 1}, gen=0)),
    case("5.12.7 registered wrong key conflicts", state({A1: 1}), A1,
         prout(REGISTER, basic_list(2, 3)), Expect(CONFLICT)),
    case("5.12.7 registered changes key, reservation follows", state({A1: 1}, (A1, 5)), A1,
         prout(REGISTER, basic_list(1, 9)), Expect(regs={A1: 9}, res=(A1, 5), gen=1)),
    case("5.12.7 re-register same key is no error", state({A1: 1}), A1,
         prout(REGISTER, basic_list(1, 1)), Expect(regs={A1: 1}, gen=1)),
    case("5.12.7 registration leaves others alone", state({A1: 1, B1: 1}), A1,
         prout(REGISTER, basic_list(1, 2)), Expect(regs={A1: 2, B1: 1}, gen=1)),
    case("5.12.11.2.3 unregister WE holder releases, no UA", state({A1: 1, B1: 2}, (A1, 1)),
         A1, prout(REGISTER, basic_list(1, 0)), Expect(regs={B1: 2}, res=None, gen=1)),
    case("5.12.11.2.3 unregister RO holder releases, UA RESERVATIONS RELEASED",
         state({A1: 1, B1: 2, C1: 3}, (A1, 5)), A1, prout(REGISTER, basic_list(1, 0)),
         Expect(regs={B1: 2, C1: 3}, res=None, gen=1,
                uas=[(B1, RES_RELEASED), (C1, RES_RELEASED)])),
    case("5.12.11.2.3 unregister AR registrant keeps reservation", state({A1: 1, B1: 2}, (A1, 7)),
         A1, prout(REGISTER, basic_list(1, 0)), Expect(regs={B1: 2}, res=(B1, 7), gen=1)),
    case("5.12.11.2.3 unregister last AR registrant releases", state({A1: 1}, (A1, 8)), A1,
         prout(REGISTER, basic_list(1, 0)), Expect(regs={}, res=None, gen=1)),
    case("5.12.11.2.3 unregister non-holder keeps reservation", state({A1: 1, B1: 2}, (B1, 5)),
         A1, prout(REGISTER, basic_list(1, 0)), Expect(regs={B1: 2}, res=(B1, 5), gen=1)),
    case("5.12.7 registered SPEC_I_PT is INVALID FIELD IN PARAMETER LIST", state({A1: 1}), A1,
         prout(REGISTER, basic_list(1, 2, spec_i_pt=True, tids=tid(B1))), Expect(INV_PL)),
    case("5.12.7 SPEC_I_PT registers sender and TransportIDs", state(), A1,
         prout(REGISTER, basic_list(0, 4, spec_i_pt=True, tids=tid(B1) + tid(C1))),
         Expect(regs={A1: 4, B1: 4, C1: 4}, gen=1)),
    case("5.12.7 SPEC_I_PT naming the sender adds nothing", state(), A1,
         prout(REGISTER, basic_list(0, 4, spec_i_pt=True, tids=tid(A1) + tid(B1) + tid(B1))),
         Expect(regs={A1: 4, B1: 4}, gen=1)),
    case("5.12.7 SPEC_I_PT with a registered port registers nobody", state({C1: 3}), A1,
         prout(REGISTER, basic_list(0, 4, spec_i_pt=True, tids=tid(B1) + tid(C1))),
         Expect(INV_PL)),
    case("6.16.3 SPEC_I_PT bad TransportID registers nobody", state(), A1,
         prout(REGISTER, basic_list(0, 4, spec_i_pt=True, tids=tid(B1) + bytes([9]) + bytes(23))),
         Expect(INV_PL)),
    case("6.16.3 SPEC_I_PT with zero SA key does nothing", state(), A1,
         prout(REGISTER, basic_list(0, 0, spec_i_pt=True, tids=tid(B1))), Expect(regs={}, gen=0)),
    case("6.16.3 ALL_TG_PT registers on every target port", state(), A1,
         prout(REGISTER, basic_list(0, 6, all_tg_pt=True)), Expect(regs={A1: 6}, gen=1)),
    case("6.16.3 ALL_TG_PT over a registered port conflicts", state({A2: 1}), A1,
         prout(REGISTER, basic_list(0, 6, all_tg_pt=True)), Expect(CONFLICT)),
    case("6.16.3 SPEC_I_PT=0 list of 28 bytes", state(), A1,
         (prout_cdb(REGISTER, plen=28), basic_list(0, 1) + bytes(4)), Expect(PLL)),
    case("6.16.3 list shorter than 24", state(), A1,
         (prout_cdb(REGISTER, plen=20), basic_list(0, 1)[:20]), Expect(PLL)),
    case("6.16.3 less data than PARAMETER LIST LENGTH", state(), A1,
         (prout_cdb(REGISTER, plen=24), basic_list(0, 1)[:16]), Expect(PLL)),
    case("6.16.3 TRANSPORTID PARAMETER DATA LENGTH not adding up", state(), A1,
         (prout_cdb(REGISTER, plen=28 + 24 + 4),
          basic_list(0, 1, spec_i_pt=True, tids=tid(B1)) + bytes(4)), Expect(PLL)),
    case("6.16.3 SPEC_I_PT with 27 bytes", state(), A1,
         (prout_cdb(REGISTER, plen=27), basic_list(0, 1, spec_i_pt=True, tids=b"")[:27]),
         Expect(PLL)),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", REGISTER_CASES)
def test_register(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


def test_register_records_rtpi_aptpl_and_all_tg_pt():
    """§6.16.3: APTPL of the last REGISTER; ALL_TG_PT makes one registration for all ports."""
    out = run(state(), A1, *prout(REGISTER, basic_list(0, 6, all_tg_pt=True, aptpl=True)), rtpi=3)
    reg = out.state.registrations[0]
    assert reg == Registration(6, A1, 3, True) and out.state.aptpl
    assert out.state.registration_of(A2) is reg
    out = run(out.state, A2, *prout(REGISTER, basic_list(6, 0)))  # unregister from port 2
    assert out.state.registrations == () and not out.state.aptpl


def test_register_resources_exhausted():
    """§5.12.7: INSUFFICIENT REGISTRATION RESOURCES past MAX_REGISTRATIONS, nothing added."""
    regs = tuple(
        Registration(1, Nexus.make(f"iqn.x:{i}", "iqn.t", isid=1)) for i in range(MAX_REGISTRATIONS)
    )
    full = PRState(registrations=regs)
    check(full, run(full, A1, *prout(REGISTER, basic_list(0, 1))), Expect(NO_RESOURCES))
    one_left = PRState(registrations=regs[1:])
    spec = prout(REGISTER, basic_list(0, 1, spec_i_pt=True, tids=tid(B1)))
    check(one_left, run(one_left, A1, *spec), Expect(NO_RESOURCES))


def test_register_generation_wraps():
    """§6.15.2: PRGENERATION is a 32-bit wrapping counter."""
    before = state(generation=0xFFFFFFFF)
    assert run(before, A1, *prout(REGISTER, basic_list(0, 1))).state.generation == 0


# --- REGISTER AND IGNORE EXISTING KEY (§5.12.7, its "Register behaviors" table) -----------
RIEK_CASES = [
    case("5.12.7 unregistered registers whatever the key", state(), A1,
         prout(REGISTER_AND_IGNORE_EXISTING_KEY, basic_list(0x55, 0xA)),
         Expect(regs={A1: 0xA}, gen=1)),
    case("5.12.7 registered wrong key still replaces", state({A1: 1}), A1,
         prout(REGISTER_AND_IGNORE_EXISTING_KEY, basic_list(0x55, 0xA)),
         Expect(regs={A1: 0xA}, gen=1)),
    case("5.12.7 unregistered sa0 does nothing", state(), A1,
         prout(REGISTER_AND_IGNORE_EXISTING_KEY, basic_list(0x55, 0)), Expect(regs={}, gen=0)),
    case("5.12.11.2.3 registered sa0 unregisters RO holder",
         state({A1: 1, B1: 2}, (A1, 6)), A1,
         prout(REGISTER_AND_IGNORE_EXISTING_KEY, basic_list(9, 0)),
         Expect(regs={B1: 2}, res=None, gen=1, uas=[(B1, RES_RELEASED)])),
    case("6.16.3 SPEC_I_PT is invalid for REGISTER AND IGNORE", state(), A1,
         prout(REGISTER_AND_IGNORE_EXISTING_KEY, basic_list(0, 1, spec_i_pt=True, tids=tid(B1))),
         Expect(INV_PL)),
    case("6.16.3 ALL_TG_PT folds the port-2 registration", state({A2: 1, B1: 2}, (A2, 3)), A1,
         prout(REGISTER_AND_IGNORE_EXISTING_KEY, basic_list(0, 7, all_tg_pt=True)),
         Expect(regs={B1: 2, A1: 7}, res=(A2, 3), gen=1)),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", RIEK_CASES)
def test_register_and_ignore(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


# --- RESERVE (§5.12.9) ------------------------------------------------------------------
def reserve_cases(t: int) -> list:
    other = 3 if t != 3 else 1
    return [
        case(f"5.12.9 type{t} registered creates", state({A1: 1}), A1,
             prout(RESERVE, basic_list(1), t), Expect(res=(A1, t), gen=0)),
        case(f"5.12.9 type{t} holder repeats: no change", state({A1: 1}, (A1, t)), A1,
             prout(RESERVE, basic_list(1), t), Expect(res=(A1, t), gen=0)),
        case(f"5.12.9 type{t} holder changes type: conflict", state({A1: 1}, (A1, t)), A1,
             prout(RESERVE, basic_list(1), other), Expect(CONFLICT)),
        case(f"5.12.9 type{t} other registrant", state({A1: 1, B1: 2}, (A1, t)), B1,
             prout(RESERVE, basic_list(2), t),
             Expect(GOOD, res=(A1, t)) if t in AR else Expect(CONFLICT)),
        case(f"5.12.7 type{t} unregistered: conflict", state({A1: 1}), B1,
             prout(RESERVE, basic_list(0), t), Expect(CONFLICT)),
        case(f"6.16.3 type{t} wrong key: conflict", state({A1: 1}), A1,
             prout(RESERVE, basic_list(2), t), Expect(CONFLICT)),
        case(f"6.16.2 type{t} ELEMENT scope", state({A1: 1}), A1,
             prout(RESERVE, basic_list(1), t, scope=2), Expect(INV_CDB)),
    ]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", [c for t in TYPES for c in reserve_cases(t)])
def test_reserve(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


@pytest.mark.parametrize("bad_type", [0, 2, 4, 9, 0xF])
def test_reserve_unknown_type(bad_type):
    """§6.16.2 (table of types): obsolete/reserved TYPE values are INVALID FIELD IN CDB."""
    before = state({A1: 1})
    check(before, run(before, A1, *prout(RESERVE, basic_list(1), bad_type)), Expect(INV_CDB))


# --- RELEASE (§5.12.11.2.2) ---------------------------------------------------------------
def release_cases(t: int) -> list:
    three = {A1: 1, B1: 2, C1: 3}
    uas = [(B1, RES_RELEASED), (C1, RES_RELEASED)] if t in RO_AR else []
    return [
        case(f"5.12.11.2.2 type{t} holder releases", state(three, (A1, t)), A1,
             prout(RELEASE, basic_list(1), t), Expect(res=None, regs=three, gen=0, uas=uas)),
        case(f"5.12.11.2.2 type{t} wrong type", state(three, (A1, t)), A1,
             prout(RELEASE, basic_list(1), 1 if t != 1 else 3), Expect(INV_RELEASE)),
        case(f"5.12.11.2.2 type{t} non-holder: GOOD, nothing released", state(three, (A1, t)),
             B1, prout(RELEASE, basic_list(2), t),
             Expect(res=None, gen=0, uas=[(A1, RES_RELEASED), (C1, RES_RELEASED)])
             if t in AR else Expect(res=(A1, t), gen=0)),
        case(f"5.12.11.2.2 type{t} unregistered: conflict", state({A1: 1}, (A1, t)), B1,
             prout(RELEASE, basic_list(0), t), Expect(CONFLICT)),
        case(f"5.12.11.2.2 type{t} wrong key: conflict", state({A1: 1}, (A1, t)), A1,
             prout(RELEASE, basic_list(9), t), Expect(CONFLICT)),
    ]  # fmt: skip


RELEASE_CASES = [c for t in TYPES for c in release_cases(t)] + [
    case("5.12.11.2.2 no reservation: GOOD", state({A1: 1}), A1,
         prout(RELEASE, basic_list(1), 5), Expect(res=None, gen=0)),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", RELEASE_CASES)
def test_release(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


def test_release_keeps_identity_when_nothing_to_release():
    before = state({A1: 1, B1: 2}, (A1, 5))
    assert run(before, B1, *prout(RELEASE, basic_list(2), 5)).state is before


# --- CLEAR (§5.12.11.2.7) -----------------------------------------------------------------
CLEAR_CASES = [
    case("5.12.11.2.7 clears and tells the others", state({A1: 1, B1: 2, C1: 3}, (B1, 1)), A1,
         prout(CLEAR, basic_list(1)),
         Expect(regs={}, res=None, gen=1, uas=[(B1, RES_PREEMPTED), (C1, RES_PREEMPTED)])),
    case("5.12.11.2.7 alone: no UA", state({A1: 1}), A1, prout(CLEAR, basic_list(1)),
         Expect(regs={}, res=None, gen=1)),
    case("5.12.11.2.7 unregistered: conflict", state({A1: 1}), B1, prout(CLEAR, basic_list(0)),
         Expect(CONFLICT)),
    case("5.12.11.2.7 wrong key: conflict", state({A1: 1}), A1, prout(CLEAR, basic_list(2)),
         Expect(CONFLICT)),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", CLEAR_CASES)
def test_clear(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


# --- PREEMPT / PREEMPT AND ABORT (§5.12.11.2.4 - §5.12.11.2.6) ----------------------------
def preempt_cases(sa: int) -> list:
    name = "PREEMPT" if sa == PREEMPT else "PREEMPT AND ABORT"
    three = {A1: 1, B1: 2, C1: 3}
    return [
        case(f"5.12.11.2.4.3 {name} holder key, type change", state(three, (B1, 1)), A1,
             prout(sa, basic_list(1, 2), 5),
             Expect(regs={A1: 1, C1: 3}, res=(A1, 5), gen=1,
                    uas=[(B1, REG_PREEMPTED), (C1, RES_RELEASED)])),
        case(f"5.12.11.2.4.3 {name} holder key, same type", state(three, (B1, 5)), A1,
             prout(sa, basic_list(1, 2), 5),
             Expect(regs={A1: 1, C1: 3}, res=(A1, 5), gen=1, uas=[(B1, REG_PREEMPTED)])),
        case(f"5.12.11.2.4.3 {name} removes every holder-key registration",
             state({A1: 1, B1: 2, C1: 2}, (B1, 3)), A1, prout(sa, basic_list(1, 2), 3),
             Expect(regs={A1: 1}, res=(A1, 3), gen=1,
                    uas=[(B1, REG_PREEMPTED), (C1, REG_PREEMPTED)])),
        case(f"5.12.11.2.4.3 {name} self-preempt keeps registration", state(three, (A1, 1)), A1,
             prout(sa, basic_list(1, 1), 3),
             Expect(regs=three, res=(A1, 3), gen=1, uas=[(B1, RES_RELEASED), (C1, RES_RELEASED)])),
        case(f"5.12.11.2.5 {name} non-holder key removes registrations only",
             state(three, (B1, 5)), A1, prout(sa, basic_list(1, 3), 1),
             Expect(regs={A1: 1, B1: 2}, res=(B1, 5), gen=1, uas=[(C1, REG_PREEMPTED)])),
        case(f"5.12.11.2.5 {name} without reservation removes registrations",
             state(three), A1, prout(sa, basic_list(1, 2), 1),
             Expect(regs={A1: 1, C1: 3}, res=None, gen=1, uas=[(B1, REG_PREEMPTED)])),
        case(f"5.12.11.2.5 {name} own key: own registration removed, no own UA",
             state({A1: 2, B1: 2, C1: 3}, (C1, 5)), A1, prout(sa, basic_list(2, 2), 5),
             Expect(regs={C1: 3}, res=(C1, 5), gen=1, uas=[(B1, REG_PREEMPTED)])),
        case(f"5.12.11.2.5 {name} key nobody has: conflict", state(three, (B1, 5)), A1,
             prout(sa, basic_list(1, 9), 5), Expect(CONFLICT)),
        case(f"5.12.11.2.4.1 {name} SA key 0, not all-registrants", state(three, (B1, 5)), A1,
             prout(sa, basic_list(1, 0), 5), Expect(INV_PL)),
        case(f"5.12.11.2.4.1 {name} SA key 0, no reservation", state(three), A1,
             prout(sa, basic_list(1, 0), 5), Expect(INV_PL)),
        case(f"5.12.11.2.4.3 {name} SA key 0 under all-registrants", state(three, (B1, 7)), A1,
             prout(sa, basic_list(1, 0), 5),
             Expect(regs={A1: 1}, res=(A1, 5), gen=1,
                    uas=[(B1, REG_PREEMPTED), (C1, REG_PREEMPTED)])),
        case(f"5.12.11.2.5 {name} non-zero key under all-registrants", state(three, (B1, 8)), A1,
             prout(sa, basic_list(1, 3), 5),
             Expect(regs={A1: 1, B1: 2}, res=(A1, 8), gen=1, uas=[(C1, REG_PREEMPTED)])),
        case(f"5.12.7 {name} unregistered: conflict", state({B1: 2}, (B1, 5)), A1,
             prout(sa, basic_list(0, 2), 5), Expect(CONFLICT)),
        case(f"6.16.3 {name} wrong key: conflict", state(three, (B1, 5)), A1,
             prout(sa, basic_list(7, 2), 5), Expect(CONFLICT)),
        case(f"6.16.2 {name} bad type", state(three, (B1, 5)), A1,
             prout(sa, basic_list(1, 2), 2), Expect(INV_CDB)),
        case(f"6.16.3 {name} SPEC_I_PT", state(three, (B1, 5)), A1,
             prout(sa, basic_list(1, 2, spec_i_pt=True, tids=b""), 5), Expect(INV_PL)),
    ]  # fmt: skip


PREEMPT_CASES = [c for sa in (PREEMPT, PREEMPT_AND_ABORT) for c in preempt_cases(sa)]


@pytest.mark.parametrize("before,nexus,cmd,want,kw", PREEMPT_CASES)
def test_preempt(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


# --- REGISTER AND MOVE (§5.12.8, §6.16.4) -------------------------------------------------
def mv(key, sa_key, rtpi, tid_bytes, **kw):
    return prout(REGISTER_AND_MOVE, move_list(key, sa_key, rtpi, tid_bytes, **kw))


MOVE_CASES = [
    case("5.12.8 holder moves to a new I_T nexus", state({A1: 1}, (A1, 5)), A1,
         mv(1, 4, 1, tid(B1)), Expect(regs={A1: 1, B1: 4}, res=(B1, 5), gen=1)),
    case("5.12.8 UNREG unregisters the sender", state({A1: 1}, (A1, 1)), A1,
         mv(1, 4, 1, tid(B1), unreg=True), Expect(regs={B1: 4}, res=(B1, 1), gen=1)),
    case("5.12.8 already-registered destination gets the new key", state({A1: 1, B1: 2}, (A1, 3)),
         A1, mv(1, 4, 1, tid(B1)), Expect(regs={A1: 1, B1: 4}, res=(B1, 3), gen=1)),
    case("5.12.8 destination on another known port", state({A1: 1, B2: 2}, (A1, 3)), A1,
         mv(1, 4, 2, tid(C1)), Expect(regs={A1: 1, B2: 2, C2: 4}, res=(C2, 3), gen=1)),
    case("6.16.4 unknown RELATIVE TARGET PORT IDENTIFIER", state({A1: 1}, (A1, 5)), A1,
         mv(1, 4, 9, tid(B1)), Expect(INV_PL)),
    case("5.12.8 TransportID of the sender's own port", state({A1: 1}, (A1, 5)), A1,
         mv(1, 4, 2, tid(A1)), Expect(INV_PL)),
    case("5.12.8 TransportID of the sender's initiator, no ISID", state({A1: 1}, (A1, 5)), A1,
         mv(1, 4, 1, tid(A1, isid=False)), Expect(INV_PL)),
    case("5.12.8 SA key 0", state({A1: 1}, (A1, 5)), A1, mv(1, 0, 1, tid(B1)), Expect(INV_PL)),
    case("5.12.8 no reservation", state({A1: 1}), A1, mv(1, 4, 1, tid(B1)), Expect(INV_CDB)),
    case("5.12.8 registered non-holder", state({A1: 1, B1: 2}, (B1, 5)), A1,
         mv(1, 4, 1, tid(C1)), Expect(CONFLICT)),
    case("5.12.8 unregistered sender", state({B1: 2}, (B1, 5)), A1, mv(0, 4, 1, tid(C1)),
         Expect(CONFLICT)),
    case("5.12.8 wrong key", state({A1: 1}, (A1, 5)), A1, mv(2, 4, 1, tid(C1)), Expect(CONFLICT)),
    case("5.12.8 all-registrants reservation", state({A1: 1}, (A1, 7)), A1, mv(1, 4, 1, tid(B1)),
         Expect(CONFLICT)),
    case("6.16.4 TRANSPORTID LENGTH beyond the list", state({A1: 1}, (A1, 5)), A1,
         (prout_cdb(REGISTER_AND_MOVE, plen=44), move_list(1, 4, 1, tid(B1))[:44]), Expect(PLL)),
    case("6.16.4 two TransportIDs", state({A1: 1}, (A1, 5)), A1, mv(1, 4, 1, tid(B1) + tid(C1)),
         Expect(INV_PL)),
    case("6.16.4 malformed TransportID", state({A1: 1}, (A1, 5)), A1,
         mv(1, 4, 1, bytes([0x45, 0, 0, 20]) + b"no-nul-terminator-xx"), Expect(INV_PL)),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", MOVE_CASES)
def test_register_and_move(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


def test_move_refuses_all_tg_pt_bit_and_records_rtpi():
    """§6.16.4: the MOVE list has no ALL_TG_PT; a bit there (byte 17 bit 2) is refused."""
    before = state({A1: 1}, (A1, 5))
    cdb, data = mv(1, 4, 1, tid(B1), aptpl=True)
    bad = data[:17] + bytes([data[17] | 0x04]) + data[18:]
    check(before, run(before, A1, cdb, bad), Expect(INV_PL))
    out = run(before, A1, cdb, data)
    assert out.state.registration_of(B1) == Registration(4, B1, 1) and out.state.aptpl


def test_move_within_own_isidless_registration():
    """§5.12.8: the destination may not be the sender's own registration (here one without
    ISID, made through a SPEC_I_PT TransportID of format 00b, which covers every ISID)."""
    any_isid = Nexus(A1.initiator, "", A1.target, A1.tpgt)
    before = PRState(registrations=(Registration(1, any_isid),))
    before = run(before, A1, *prout(RESERVE, basic_list(1), 5)).state
    other_isid = iscsi_tid(A1.initiator, 0x99)
    check(before, run(before, A1, *mv(1, 4, 1, other_isid)), Expect(INV_PL))


# --- REPLACE LOST RESERVATION (§5.12.11.3) and the rest -----------------------------------
MISC_CASES = [
    case("5.12.11.3 nothing lost: INVALID RELEASE OF PERSISTENT RESERVATION", state(), A1,
         prout(REPLACE_LOST_RESERVATION, basic_list(0, 5), 5), Expect(INV_RELEASE)),
    case("5.12.11.3 bad scope checked first", state(), A1,
         prout(REPLACE_LOST_RESERVATION, basic_list(0, 5), 5, scope=1), Expect(INV_CDB)),
    case("6.16.2 reserved service action", state(), A1,
         (prout_cdb(0x09), basic_list()), Expect(INV_CDB)),
    case("6.16.1 CDB shorter than 10 bytes", state(), A1,
         (prout_cdb(REGISTER)[:9], basic_list(0, 1)), Expect(INV_CDB)),
    case("SPC-2 5.5.1 SCSI-2 reservation: PR OUT conflicts for others",
         state(scsi2=B1), A1, prout(REGISTER, basic_list(0, 1)), Expect(CONFLICT)),
    case("SPC-2 5.5.1 SCSI-2 reservation: PR OUT conflicts for the holder too",
         state(scsi2=A1), A1, prout(REGISTER, basic_list(0, 1)), Expect(CONFLICT)),
]  # fmt: skip


@pytest.mark.parametrize("before,nexus,cmd,want,kw", MISC_CASES)
def test_misc(before, nexus, cmd, want, kw):
    _run_table(before, nexus, cmd, want, kw)


def test_ua_queue_dedupes_and_caps():
    """Identical pending UAs are not queued twice; the per-nexus queue is bounded."""
    from tcmu_pr.engine import changes

    before = state({A1: 1, B1: 2}, (A1, 5))
    once = run(before, A1, *prout(RELEASE, basic_list(1), 5)).state
    again = run(run(once, A1, *prout(RESERVE, basic_list(1), 5)).state, A1,
                *prout(RELEASE, basic_list(1), 5))  # fmt: skip
    assert again.unit_attentions == () and again.state.unit_attentions == once.unit_attentions
    s = PRState()
    uas = [changes.ua_for(Registration(1, B1), (0x2A, q)) for q in range(20)]
    s, queued = changes.queue_uas(s, uas)
    assert len(queued) == 20 and len(s.unit_attentions) == changes.MAX_UAS_PER_NEXUS
    assert [u.ascq for u in s.unit_attentions] == list(range(20 - changes.MAX_UAS_PER_NEXUS, 20))


def test_preempt_and_abort_names_the_nexuses_to_abort():
    """§5.12.11.2.6: the preempted nexuses (to abort) are the REGISTRATIONS PREEMPTED UAs."""
    before = state({A1: 1, B1: 2, B2: 2, C1: 3}, (B1, 5))
    out = run(before, A1, *prout(PREEMPT_AND_ABORT, basic_list(1, 2), 5))
    aborted = {u.nexus for u in out.unit_attentions if u.ascq == REG_PREEMPTED}
    assert aborted == {B1, B2}
    assert A2 not in {u.nexus for u in out.unit_attentions}


def test_service_action_codes_are_spc4s():
    """The engine's names (the one definition the tests build CDBs with) against SPC-4's
    PERSISTENT RESERVE OUT / IN service action tables."""
    assert (REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_AND_ABORT) == (0, 1, 2, 3, 4, 5)
    assert (REGISTER_AND_IGNORE_EXISTING_KEY, REGISTER_AND_MOVE, REPLACE_LOST_RESERVATION) == (
        6, 7, 8)
