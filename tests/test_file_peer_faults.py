"""File store, real processes: a gateway that died costs nothing; one frozen past the ack
timeout is killed before the change answers GOOD, so it serves nothing after SIGCONT."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from peer_faults import (
    FENCER,
    KEY_F,
    KEY_V,
    WE_RO,
    Changer,
    Gateway,
    frozen_gateway_is_cut_off,
    nothing_stale_after_thaw,
    victim_writes_under_a_reservation,
)

from tcmu_pr import scsi
from tcmu_pr.backends.file_peers import peers_dir
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.engine.pr_cdb import PREEMPT_AND_ABORT, REGISTER_AND_IGNORE_EXISTING_KEY

pytestmark = pytest.mark.slow


@pytest.fixture
def spec(tmp_path: Path) -> StoreSpec:
    image = tmp_path / "lu.img"
    image.write_bytes(bytes(1 << 20))
    return StoreSpec.file(image)


def test_a_dead_gateway_does_not_hold_up_a_change(spec: StoreSpec, tmp_path: Path) -> None:
    gateway = Gateway(spec, tmp_path)
    changer = Changer(spec, ack_timeout=5)
    try:
        victim_writes_under_a_reservation(changer, gateway)
        assert changer.lu.last_confirmation.acked == 1  # type: ignore[union-attr]
        gateway.proc.kill()
        gateway.proc.wait()
        assert len(list(peers_dir(spec.path).glob("p.*"))) == 1  # its socket is still there
        out = changer.run(FENCER, REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=KEY_F + 1)
        assert out.status == scsi.GOOD
        confirmation = changer.lu.last_confirmation
        # ECONNREFUSED: nobody left to wait for (no timeout spent), the stale socket removed.
        assert confirmation is not None and (confirmation.told, confirmation.fenced) == (0, ())
        assert not list(peers_dir(spec.path).glob("p.*"))
    finally:
        gateway.close()
        changer.close()


def test_a_frozen_gateway_is_killed_before_good(spec: StoreSpec, tmp_path: Path) -> None:
    gateway = Gateway(spec, tmp_path)
    changer = Changer(spec, ack_timeout=1)
    try:
        figures = frozen_gateway_is_cut_off(changer, gateway)
        # The frozen daemon was killed (and had exited) before the change answered GOOD.
        assert gateway.proc.wait(10) == -signal.SIGKILL
        nothing_stale_after_thaw(changer, gateway.answers(), figures["at_fence"],  # type: ignore[arg-type]
                                 figures["landed"])  # type: ignore[arg-type]  # fmt: skip
        print(f"\nfile store: frozen gateway cut off (killed) and PREEMPT AND ABORT answered in "
              f"{figures['fence_seconds']:.2f} s (ack timeout 1 s)")  # fmt: skip
    finally:
        gateway.close()
        changer.close()


def test_with_fencing_off_a_frozen_gateway_makes_the_change_check_condition(
    spec: StoreSpec, tmp_path: Path
) -> None:
    gateway = Gateway(spec, tmp_path)
    changer = Changer(spec, ack_timeout=1, fence=False)
    try:
        victim_writes_under_a_reservation(changer, gateway)
        gateway.freeze()
        out = changer.run(FENCER, PREEMPT_AND_ABORT, key=KEY_F, sa_key=KEY_V, pr_type=WE_RO)
        assert (out.status, out.sense) == (
            scsi.CHECK_CONDITION, scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE.to_bytes())  # fmt: skip
        assert gateway.proc.poll() is None  # left alone
        gateway.thaw()
        # Once thawed it answers the queued announcement: the victim is refused there too
        # (after, at most, the one write it had admitted before it was frozen).
        after = gateway.wait_for(lambda a: a.status == scsi.RESERVATION_CONFLICT, 30)
        assert [a.status for a in after[1:]].count(scsi.GOOD) == 0
    finally:
        gateway.close()
        changer.close()
