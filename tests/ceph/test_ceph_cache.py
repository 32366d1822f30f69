"""Two gateways (two RADOS connections, two caches) on one image: watch/notify freshness."""

from __future__ import annotations

import logging
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tcmu_pr import conflict, scsi
from tcmu_pr.apply import apply
from tcmu_pr.backends.base import StoreError
from tcmu_pr.backends.rados_cas import Cluster
from tcmu_pr.backends.rbd import (
    ACK_PAYLOAD,
    FENCE_NOT_CONFIRMED,
    RbdPRCache,
    RbdPRSlot,
)
from tcmu_pr.nexus import Nexus
from tcmu_pr.pr_cdb import PREEMPT, REGISTER, REGISTER_AND_IGNORE_EXISTING_KEY, RESERVE, pr_out
from tcmu_pr.state import UA_REGISTRATIONS_PREEMPTED, WRITE_EXCLUSIVE_REGISTRANTS_ONLY

pytestmark = pytest.mark.ceph

GW_A = "iqn.2003-01.org.linux-iscsi.gw-a:rbd"
GW_B = "iqn.2003-01.org.linux-iscsi.gw-b:rbd"
# The victim is served by gateway B, the fencing node by gateway A.
VICTIM = Nexus.make("iqn.2026-01.org.example:victim", GW_B, isid=0x1, tpgt=1)
FENCER = Nexus.make("iqn.2026-01.org.example:fencer", GW_A, isid=0x2, tpgt=1)
WE_RO = WRITE_EXCLUSIVE_REGISTRANTS_ONLY


class Gateway:
    """One gateway's view of the LU: its own connection, slot and cache."""

    def __init__(self, conf: str, image: str, *, notify_timeout: float = 5.0) -> None:
        self.slot = RbdPRSlot.open("rbd", image, conf=conf, notify_timeout=notify_timeout)
        self.cache = RbdPRCache(self.slot)

    def run(self, nexus: Nexus, action: int, **kw: int) -> scsi.Outcome:
        cdb, params = pr_out(action, **kw)
        return apply(self.slot, nexus, cdb, params)

    def close(self) -> None:
        self.cache.close()
        self.slot.close()


@pytest.fixture
def gateways(ceph_conf: str, rbd_image: str) -> Iterator[tuple[Gateway, Gateway]]:
    a = Gateway(ceph_conf, rbd_image)
    b = Gateway(ceph_conf, rbd_image)
    yield a, b
    a.close()
    b.close()


def _fence_setup(a: Gateway, b: Gateway) -> None:
    """Victim (via B) registers and reserves WE-RO; the fencer (via A) registers."""
    assert b.run(VICTIM, REGISTER, sa_key=0xB).status == scsi.GOOD
    assert b.run(VICTIM, RESERVE, key=0xB, pr_type=WE_RO).status == scsi.GOOD
    assert a.run(FENCER, REGISTER, sa_key=0xA).status == scsi.GOOD


def test_preempt_is_in_the_other_cache_before_it_returns(gateways: tuple[Gateway, Gateway]) -> None:
    a, b = gateways
    assert a.slot.oid == b.slot.oid and a.slot.ioctx.cluster.gid != b.slot.ioctx.cluster.gid
    _fence_setup(a, b)
    before = b.cache.snapshot()
    assert before.valid and before.state.is_holder(VICTIM)
    assert b.cache.verdict(VICTIM) & conflict.VERDICT_WRITE

    outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
    returned = time.monotonic()
    assert outcome.status == scsi.GOOD, outcome
    # No waiting here: B must already be fresh when A's PREEMPT returns.
    snap = b.cache.snapshot()
    assert snap.valid and snap.version > before.version
    assert b.cache.refreshed_at <= returned
    assert snap.state.registration_of(VICTIM) is None
    assert snap.state.is_holder(FENCER)
    assert not b.cache.verdict(VICTIM) & conflict.VERDICT_WRITE
    # The UA owed to the victim travelled in the shared state to the gateway serving it.
    owed = b.cache.unit_attentions_for(VICTIM)
    assert [(ua.asc, ua.ascq) for ua in owed] == [UA_REGISTRATIONS_PREEMPTED]
    assert b.cache.verdict(VICTIM) & conflict.VERDICT_UA
    ua = b.cache.take_unit_attention(VICTIM)
    assert ua is not None and (ua.asc, ua.ascq) == UA_REGISTRATIONS_PREEMPTED
    assert not a.cache.ensure_fresh().unit_attentions  # delivered once, seen by A as well
    assert b.cache.take_unit_attention(VICTIM) is None


def test_invalidation_latency(gateways: tuple[Gateway, Gateway]) -> None:
    """notify sent by A -> B's cache re-read and valid; printed for the report."""
    a, b = gateways
    latencies = []
    for key in range(1, 41):
        out = a.run(FENCER, REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=key)
        assert out.status == scsi.GOOD
        assert a.slot.last_notify is not None and a.slot.last_notify.complete
        assert len(a.slot.last_notify.acks) == 2  # both gateways' watches acked
        assert b.cache.snapshot().state.registration_of(FENCER).key == key  # type: ignore[union-attr]
        latencies.append(b.cache.refreshed_at - a.slot.last_notify_sent)
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1e3
    print(
        f"\ninvalidation latency (notify -> other cache fresh): p50 {p50:.2f} ms, "
        f"p99 {p99:.2f} ms, max {latencies[-1] * 1e3:.2f} ms over {len(latencies)} updates"
    )
    assert latencies[0] > 0 and latencies[-1] < 5.0


def test_unacked_watcher_fails_a_fence_but_not_a_register(
    ceph_conf: str, rbd_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = Gateway(ceph_conf, rbd_image, notify_timeout=1)
    b = Gateway(ceph_conf, rbd_image)
    assert b.run(VICTIM, REGISTER, sa_key=0xB).status == scsi.GOOD
    assert b.run(VICTIM, RESERVE, key=0xB, pr_type=WE_RO).status == scsi.GOOD
    # A third "gateway" that receives notifies but never acks (hung, or partitioned).
    mute = Cluster(ceph_conf)
    mute_io = mute.open_ioctx("rbd")
    mute_io.watch(a.slot.oid, lambda *_: None, lambda *_: None)
    try:
        # A non-fencing change that misses an ack still completes GOOD (logged).
        caplog.set_level(logging.WARNING, logger="tcmu_pr.backends.rbd")
        out = a.run(FENCER, REGISTER, sa_key=0xA)
        assert out.status == scsi.GOOD
        assert f"client.{mute.gid}" in caplog.text

        caplog.clear()
        t0 = time.monotonic()
        out = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
        waited = time.monotonic() - t0
        assert out.status == scsi.CHECK_CONDITION
        assert out.sense == FENCE_NOT_CONFIRMED.to_bytes()
        assert f"client.{mute.gid}" in caplog.text
        assert 0.9 < waited < 3.0
        # It landed (cannot be undone) and the gateways that did ack are fresh.
        assert b.cache.snapshot().state.registration_of(VICTIM) is None
    finally:
        mute_io.close()
        mute.shutdown()
        a.close()
        b.close()


def test_blocklisted_gateway_fences_itself(ceph_conf: str, rbd_image: str) -> None:
    """A gateway whose watch breaks refuses fast-path I/O and cannot confirm freshness."""
    a = Gateway(ceph_conf, rbd_image)
    b = Gateway(ceph_conf, rbd_image)
    try:
        assert b.run(VICTIM, REGISTER, sa_key=0xB).status == scsi.GOOD
        assert a.cache.ensure_fresh().registration_of(VICTIM) is not None
        assert a.cache.verdict(VICTIM) & conflict.VERDICT_WRITE
        addr = a.slot.ioctx.cluster.addrs
        subprocess.run(
            ["ceph", "--conf", ceph_conf, "osd", "blocklist", "add", addr],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip
        deadline = time.monotonic() + 15
        while a.cache.valid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not a.cache.valid
        assert a.cache.verdict(VICTIM) == conflict.VERDICT_UA  # no READ/WRITE in the fast path
        with pytest.raises(StoreError):
            a.cache.ensure_fresh()
        # The healthy gateway is unaffected.
        assert b.cache.ensure_fresh().registration_of(VICTIM) is not None
    finally:
        a.close()
        b.close()
        subprocess.run(
            ["ceph", "--conf", ceph_conf, "osd", "blocklist", "clear"],
            capture_output=True, timeout=20,
        )  # fmt: skip


def test_librbd_data_clients_ack_the_pr_notify(
    gateways: tuple[Gateway, Gateway], ceph_conf: str, rbd_image: str, rbd_io_native: Any
) -> None:
    """A data-path client (librbd watches the same header object) must not stall fences."""
    from tcmu_pr.backends.rbd_data import RbdImage

    a, b = gateways
    with RbdImage("rbd", rbd_image, conf=ceph_conf) as data:
        data.write(0, b"\x01" * 512)
        _fence_setup(a, b)
        t0 = time.monotonic()
        outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
        assert outcome.status == scsi.GOOD
        assert time.monotonic() - t0 < 0.5
        result = a.slot.last_notify
        assert result is not None and result.complete
        payloads = sorted(p for _, _, p in result.acks)
        assert payloads.count(ACK_PAYLOAD) == 2 and len(payloads) == 3  # 2 caches + librbd
        assert data.read(0, 512) == b"\x01" * 512  # and the data path still works


def test_cache_close_leaves_no_watch(ceph_conf: str, rbd_image: str, rados_ioctx: Any) -> None:
    import rbd

    gw = Gateway(ceph_conf, rbd_image)
    with rbd.Image(rados_ioctx, rbd_image, read_only=True) as image:
        before = len(list(image.watchers_list()))
    gw.close()
    with rbd.Image(rados_ioctx, rbd_image, read_only=True) as image:
        after = len(list(image.watchers_list()))
    assert before - after == 1
