"""The apply loop on a real file store: seq bump, lost races re-applied, failures answered."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tcmu_pr import engine, scsi
from tcmu_pr.backends.file import FileSlot, sidecar_path
from tcmu_pr.engine.pr_cdb import (
    APTPL,
    PREEMPT,
    READ_KEYS,
    REGISTER,
    RESERVE,
    pr_in,
    pr_out,
    write10,
)
from tcmu_pr.pr import codec
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import MAX_REGISTRATIONS, PRState, Registration, Reservation
from tcmu_pr.unit.apply import (
    ApplyStats,
    ContentionError,
    CorruptBlobError,
    EncodeError,
    apply,
    apply_update,
    no_backoff,
)

N1 = Nexus.make("iqn.1994-05.com.redhat:node1", "iqn.2003-01.org.linux-iscsi.gw:a", isid=1)
N2 = Nexus.make("iqn.1994-05.com.redhat:node2", "iqn.2003-01.org.linux-iscsi.gw:b", isid=2)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    img = tmp_path / "lu.img"
    img.write_bytes(b"")
    return img


@pytest.fixture
def slot(image: Path):
    with FileSlot(image) as s:
        yield s


def bump(state: PRState) -> PRState:
    """A real change: one more generation."""
    return dataclasses.replace(state, generation=state.generation + 1)


def register(nexus: Nexus, key: int):
    def fn(state: PRState) -> PRState:
        regs = tuple(r for r in state.registrations if r.nexus != nexus)
        return dataclasses.replace(
            state,
            generation=state.generation + 1,
            registrations=(*regs, Registration(key, nexus)),
            aptpl=True,  # v1 implies APTPL while registrations exist
        )

    return fn


class RivalSlot(FileSlot):
    """A file slot another gateway writes to (through its own slot) just before each CAS."""

    def __init__(self, image: Path, rival_writes: int, rival_fn=bump) -> None:
        super().__init__(image)
        self.rival = FileSlot(image)
        self.rival_writes = rival_writes
        self.rival_fn = rival_fn

    def compare_and_swap(self, expected: bytes, new: bytes) -> bool:
        if self.rival_writes:
            self.rival_writes -= 1
            apply_update(self.rival, self.rival_fn, backoff=no_backoff)
        return super().compare_and_swap(expected, new)

    def close(self) -> None:
        self.rival.close()
        super().close()


def test_first_update_of_an_empty_store(slot: FileSlot) -> None:
    stats = ApplyStats()
    stored = apply_update(slot, register(N1, 0xA1), stats=stats)
    assert stored.seq == 1 and stored.generation == 1
    assert codec.decode(slot.read()) == stored
    assert slot.read().endswith(b"\0")
    assert (stats.calls, stats.attempts, stats.writes, stats.conflicts) == (1, 1, 1, 0)


def test_no_change_writes_nothing(slot: FileSlot, image: Path) -> None:
    stats = ApplyStats()
    assert apply_update(slot, lambda s: None, stats=stats) == PRState()
    assert apply_update(slot, lambda s: s, stats=stats) == PRState()
    assert not sidecar_path(image).exists()
    assert stats.writes == 0


def test_seq_is_bumped_by_the_loop_and_wraps(slot: FileSlot) -> None:
    assert slot.compare_and_swap(b"", codec.encode(PRState(seq=0xFFFFFFFF, generation=7)))
    # fn's own seq is ignored: the loop owns it
    stored = apply_update(slot, lambda s: dataclasses.replace(bump(s), seq=1234))
    assert (stored.seq, stored.generation) == (0, 8)
    assert codec.decode(slot.read()).seq == 0


def test_lost_race_is_re_applied_on_the_winners_state(image: Path) -> None:
    stats = ApplyStats()
    seen: list[int] = []

    def fn(state: PRState) -> PRState:
        seen.append(state.generation)
        return register(N1, 0xA1)(state)

    with RivalSlot(image, rival_writes=2) as slot:
        stored = apply_update(slot, fn, stats=stats, backoff=no_backoff)
    assert seen == [0, 1, 2]  # recomputed on each winner's state, nothing overwritten
    assert stored.generation == 3 and stored.seq == 3
    assert (stats.attempts, stats.conflicts, stats.writes) == (3, 2, 1)
    with FileSlot(image) as check:
        assert codec.decode(check.read()) == stored


def test_contention_gives_up_without_writing(image: Path) -> None:
    stats = ApplyStats()
    delays: list[int] = []

    def backoff(lost: int) -> float:
        delays.append(lost)
        return 0.0

    with RivalSlot(image, rival_writes=10**6) as slot:
        with pytest.raises(ContentionError) as info:
            apply_update(slot, register(N1, 0xA1), max_attempts=5, stats=stats, backoff=backoff)
        assert info.value.sense == scsi.PR_UPDATE_CONTENTION
        final = codec.decode(slot.read())
    assert final.registrations == ()  # our change never landed
    assert final.generation == 5  # the rival's five did
    assert (stats.attempts, stats.conflicts, stats.writes, stats.gave_up) == (5, 5, 0, 1)
    assert delays == [1, 2, 3, 4]


def test_corrupt_blob_is_refused_and_left_alone(slot: FileSlot) -> None:
    garbage = b"0x00000001\nnot a seq\n\0"
    assert slot.compare_and_swap(b"", garbage)
    with pytest.raises(CorruptBlobError, match="line 2") as info:
        apply_update(slot, bump)
    assert info.value.sense == scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE
    assert slot.read() == garbage


def test_too_many_registrations_is_insufficient_resources(slot: FileSlot) -> None:
    regs = tuple(
        Registration(i + 1, Nexus.make(f"iqn.2026-01.test:i{i}", "iqn.2003-01.gw:t", isid=i + 1))
        for i in range(MAX_REGISTRATIONS + 1)
    )
    with pytest.raises(EncodeError) as info:
        apply_update(slot, lambda s: dataclasses.replace(s, registrations=regs, aptpl=True))
    assert info.value.too_large
    assert info.value.sense == scsi.INSUFFICIENT_REGISTRATION_RESOURCES
    assert slot.read() == b""


def test_invalid_state_is_a_bug_not_a_size_limit(slot: FileSlot) -> None:
    bad = Reservation(0xA1, N1, type=0x2)  # type 2 is obsolete: no valid state holds it
    with pytest.raises(EncodeError) as info:
        apply_update(slot, lambda s: dataclasses.replace(s, reservation=bad))
    assert not info.value.too_large
    assert info.value.sense == scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE
    assert slot.read() == b""


def test_max_attempts_must_be_positive(slot: FileSlot) -> None:
    with pytest.raises(ValueError):
        apply_update(slot, bump, max_attempts=0)


# -- apply(): the engine through the loop ---------------------------------------------------


def test_apply_returns_the_engines_answer_with_the_stored_state(slot: FileSlot) -> None:
    stats = ApplyStats()
    out = apply(slot, N1, *pr_out(REGISTER, sa_key=0xA1), stats=stats)
    assert (out.status, out.sense, out.data) == (scsi.GOOD, None, None)
    assert out.state == codec.decode(slot.read())
    assert out.state.seq == 1 and out.state.registration_of(N1).key == 0xA1
    assert stats.writes == 1


def test_apply_without_change_does_not_write(slot: FileSlot, image: Path) -> None:
    apply(slot, N1, *pr_out(REGISTER, sa_key=0xA1, flags=APTPL))
    before = slot.read()
    mtime = os.stat(sidecar_path(image)).st_mtime_ns
    out = apply(slot, N2, pr_in(READ_KEYS))
    assert out.status == scsi.GOOD and out.data is not None
    assert out.state == codec.decode(before)
    assert apply(slot, N2, write10()).status == scsi.GOOD  # no reservation: anyone writes
    assert slot.read() == before and os.stat(sidecar_path(image)).st_mtime_ns == mtime


def test_apply_lost_race_changes_the_answer_instead_of_overwriting(image: Path) -> None:
    """The SUSE bug: a RESERVE that lost the race must be re-judged, not answered GOOD."""
    with FileSlot(image) as setup:
        assert apply(setup, N1, *pr_out(REGISTER, sa_key=0xA1)).status == scsi.GOOD
        assert apply(setup, N2, *pr_out(REGISTER, sa_key=0xB2)).status == scsi.GOOD

    def n2_reserves(state: PRState) -> PRState:
        return engine.execute(state, N2, *pr_out(RESERVE, key=0xB2, pr_type=5)).state

    stats = ApplyStats()
    with RivalSlot(image, rival_writes=1, rival_fn=n2_reserves) as slot:
        out = apply(slot, N1, *pr_out(RESERVE, key=0xA1, pr_type=5), stats=stats)
        assert out.status == scsi.RESERVATION_CONFLICT
        assert stats.conflicts == 1
        stored = codec.decode(slot.read())
    assert stored.reservation == Reservation(0xB2, N2, 5)


def test_apply_contention_is_check_condition_never_good(image: Path) -> None:
    with RivalSlot(image, rival_writes=10**6) as slot:
        out = apply(slot, N1, *pr_out(REGISTER, sa_key=0xA1), max_attempts=3, backoff=no_backoff)
        assert out.status == scsi.CHECK_CONDITION
        assert out.sense == scsi.PR_UPDATE_CONTENTION.to_bytes()
        assert codec.decode(slot.read()).registrations == ()


def test_apply_on_a_corrupt_blob_changes_nothing(slot: FileSlot, caplog) -> None:
    garbage = b"0x00000001\n0x00000001\nNo SPC-2 Reservation holder\n\0"
    assert slot.compare_and_swap(b"", garbage)
    out = apply(slot, N1, *pr_out(REGISTER, sa_key=0xA1))
    assert out.status == scsi.CHECK_CONDITION
    assert out.sense == scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE.to_bytes()
    assert slot.read() == garbage
    assert "does not decode" in caplog.text


def test_apply_store_failure_is_lu_communication_failure(image: Path) -> None:
    sidecar_path(image).mkdir()  # unreadable as a blob
    with FileSlot(image) as slot:
        out = apply(slot, N1, *pr_out(REGISTER, sa_key=0xA1))
    assert out.status == scsi.CHECK_CONDITION
    assert out.sense == scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE.to_bytes()


def test_unit_attention_is_taken_through_apply_update(slot: FileSlot) -> None:
    apply(slot, N1, *pr_out(REGISTER, sa_key=0xA1))
    apply(slot, N2, *pr_out(REGISTER, sa_key=0xB2))
    assert apply(slot, N2, *pr_out(PREEMPT, key=0xB2, sa_key=0xA1, pr_type=5)).status == 0
    taken = []

    def take(state: PRState) -> PRState:
        new, ua = engine.take_unit_attention(state, N1)
        taken[:] = [ua]
        return new

    stored = apply_update(slot, take)
    assert (taken[0].asc, taken[0].ascq) == (0x2A, 0x05)  # REGISTRATIONS PREEMPTED
    assert stored.unit_attentions == () and codec.decode(slot.read()) == stored
    assert apply_update(slot, take) == stored and taken == [None]  # nothing left: no write
