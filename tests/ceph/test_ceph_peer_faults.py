"""RBD store, real processes: a gateway that died is blocklisted once its watch times out; one
frozen past the ack timeout is blocklisted before the change answers GOOD, and after SIGCONT
it writes nothing and answers nothing from the state it had, then reconnects and serves the
new state."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from peer_faults import (
    FENCER,
    KEY_F,
    UA_REGISTRATIONS_PREEMPTED,
    Changer,
    Gateway,
    frozen_gateway_is_cut_off,
    nothing_stale_after_thaw,
    victim_writes_under_a_reservation,
)

from tcmu_pr import scsi
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.engine.pr_cdb import REGISTER_AND_IGNORE_EXISTING_KEY

pytestmark = [pytest.mark.ceph, pytest.mark.slow]


@pytest.fixture
def spec(rbd_image: str, rbd_io_native: object) -> StoreSpec:
    return StoreSpec("rbd", pool="rbd", image=rbd_image)


@pytest.fixture(autouse=True)
def _clear_blocklist(ceph_conf: str):  # type: ignore[no-untyped-def]
    yield
    subprocess.run(["ceph", "--conf", ceph_conf, "osd", "blocklist", "clear"],
                   capture_output=True, timeout=20)  # fmt: skip


def test_a_dead_gateway_is_blocklisted_once_and_then_forgotten(
    spec: StoreSpec, ceph_conf: str, tmp_path: Path
) -> None:
    gateway = Gateway(spec, tmp_path, ceph_conf=ceph_conf)
    changer = Changer(spec, ceph_conf=ceph_conf, ack_timeout=1)
    try:
        victim_writes_under_a_reservation(changer, gateway)
        gateway.proc.kill()
        gateway.proc.wait()
        # Its watch outlives it (osd_client_watch_timeout): the next change finds it silent
        # and blocklists its address (nothing to lose), then answers GOOD.
        out = changer.run(FENCER, REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=KEY_F + 1)
        assert out.status == scsi.GOOD
        first = changer.lu.last_confirmation
        assert first is not None and first.ok and len(first.fenced) == 1
        # Blocklisting dropped the watch: later changes wait for nobody.
        out = changer.run(FENCER, REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=KEY_F + 2)
        assert out.status == scsi.GOOD
        assert changer.lu.last_confirmation.told == 0  # type: ignore[union-attr]
    finally:
        gateway.close()
        changer.close()


def test_a_frozen_gateway_is_blocklisted_and_serves_nothing_stale_after_sigcont(
    spec: StoreSpec, ceph_conf: str, tmp_path: Path
) -> None:
    gateway = Gateway(spec, tmp_path, ceph_conf=ceph_conf)
    changer = Changer(spec, ceph_conf=ceph_conf, ack_timeout=1)
    try:
        figures = frozen_gateway_is_cut_off(changer, gateway)
        # Thawed: it must notice it was cut off, reconnect with a new client, re-read, and
        # only then answer from the state: the preempted nexus gets its unit attention.
        after = gateway.wait_for(lambda a: a.sense == UA_REGISTRATIONS_PREEMPTED, 90)
        after += gateway.wait_for(lambda a: a.status == scsi.RESERVATION_CONFLICT, 30)
        nothing_stale_after_thaw(changer, after, figures["at_fence"],  # type: ignore[arg-type]
                                 figures["landed"])  # type: ignore[arg-type]  # fmt: skip
        kinds = sorted({(a.status, a.sense) for a in after})
        print(f"\nRBD: frozen gateway blocklisted and PREEMPT AND ABORT answered in "
              f"{figures['fence_seconds']:.2f} s (ack timeout 1 s); answers after SIGCONT: "
              f"{kinds}")  # fmt: skip
        assert "reconnected" in gateway.log_tail(200)
    finally:
        gateway.close()
        changer.close()
