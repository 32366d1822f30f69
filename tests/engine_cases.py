"""Shared fixtures for the engine's table-driven tests: nexuses, state builders, checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from pr_cdbs import sense_code

from tcmu_pr import engine, scsi
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import PRState, Registration, Reservation
from tcmu_pr.scsi import Outcome

TARGET = "iqn.2003-01.org.linux-iscsi.gw:rbd"
A1 = Nexus.make("iqn.1994-05.com.redhat:a", TARGET, isid=0x23D000001, tpgt=1)
A2 = Nexus.make("iqn.1994-05.com.redhat:a", TARGET, isid=0x23D000001, tpgt=2)
B1 = Nexus.make("iqn.1994-05.com.redhat:b", TARGET, isid=0x23D000002, tpgt=1)
B2 = Nexus.make("iqn.1994-05.com.redhat:b", TARGET, isid=0x23D000002, tpgt=2)
C1 = Nexus.make("iqn.1994-05.com.redhat:c", TARGET, isid=0x23D000003, tpgt=1)
C2 = Nexus.make("iqn.1994-05.com.redhat:c", TARGET, isid=0x23D000003, tpgt=2)

GOOD = "GOOD"
CONFLICT = "CONFLICT"
INV_CDB = scsi.INVALID_FIELD_IN_CDB
INV_PL = scsi.INVALID_FIELD_IN_PARAMETER_LIST
PLL = scsi.PARAMETER_LIST_LENGTH_ERROR
INV_RELEASE = scsi.INVALID_RELEASE_OF_PERSISTENT_RESERVATION
NO_RESOURCES = scsi.INSUFFICIENT_REGISTRATION_RESOURCES

RES_PREEMPTED, RES_RELEASED, REG_PREEMPTED = 0x03, 0x04, 0x05


def state(
    regs: dict[Nexus, int] | None = None,
    res: tuple[Nexus, int] | None = None,
    *,
    all_tg_pt: tuple[Nexus, ...] = (),
    generation: int = 7,
    scsi2: Nexus | None = None,
) -> PRState:
    """A state with ``regs`` (nexus -> key) and ``res`` (holder nexus, type)."""
    regs = regs or {}
    registrations = tuple(Registration(k, n, None, n in all_tg_pt) for n, k in regs.items())
    reservation = None if res is None else Reservation(regs[res[0]], res[0], res[1])
    return PRState(
        generation=generation,
        registrations=registrations,
        reservation=reservation,
        scsi2_holder=scsi2,
    )


@dataclass
class Expect:
    """What a case expects; ``None`` fields are not checked."""

    answer: object = GOOD  # GOOD, CONFLICT or a scsi.Sense
    regs: dict[Nexus, int] | None = None  # registration nexus -> key, after
    res: tuple[Nexus, int] | str | None = "skip"  # (holder nexus, type), None, or "skip"
    gen: int | None = None  # generation delta
    uas: list[tuple[Nexus, int]] = field(default_factory=list)  # newly queued (nexus, ASCQ)


def check(before: PRState, out: Outcome, want: Expect) -> None:
    if want.answer == GOOD:
        assert (out.status, out.sense) == (scsi.GOOD, None)
    elif want.answer == CONFLICT:
        assert (out.status, out.sense) == (scsi.RESERVATION_CONFLICT, None)
    else:
        assert out.status == scsi.CHECK_CONDITION
        sense = want.answer
        assert sense_code(out.sense) == (sense.key, sense.asc, sense.ascq)
    if want.answer != GOOD:
        assert out.state is before, "a refused command must not change anything"
        assert not out.unit_attentions
    after = out.state
    if want.regs is not None:
        assert {r.nexus: r.key for r in after.registrations} == want.regs
    if want.res != "skip":
        if want.res is None:
            assert after.reservation is None
        else:
            holder, type_ = want.res
            assert after.reservation is not None and after.reservation.type == type_
            assert after.is_holder(holder)  # for all-registrants types: any registrant
            assert after.reservation.key == after.holder_registration().key
    if want.gen is not None:
        assert (after.generation - before.generation) & 0xFFFFFFFF == want.gen
    got = sorted((str(u.nexus), u.ascq) for u in out.unit_attentions)
    assert got == sorted((str(n), q) for n, q in want.uas)
    assert all(u in after.unit_attentions for u in out.unit_attentions)


def run(before: PRState, nexus: Nexus, cdb: bytes, data: bytes = b"", **kw) -> Outcome:
    return engine.execute(before, nexus, cdb, data, **kw)
