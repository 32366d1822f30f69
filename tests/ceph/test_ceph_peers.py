"""Gateways of one RBD image on a real cluster: a change is in force everywhere before GOOD.

Each gateway here is what one daemon holds: an RbdStore (one RADOS client) and a serving
LogicalUnit on it.  Gateways in other processes, frozen or killed, are in
test_ceph_peer_faults.py.
"""

from __future__ import annotations

import errno
import logging
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import rbd_store

from tcmu_pr import scsi
from tcmu_pr.backends.base import StoreError
from tcmu_pr.backends.rados_cas import Cluster
from tcmu_pr.backends.rbd_peers import PEER_PREFIX
from tcmu_pr.engine import conflict
from tcmu_pr.engine.pr_cdb import (
    PREEMPT,
    REGISTER,
    REGISTER_AND_IGNORE_EXISTING_KEY,
    RESERVE,
    pr_out,
)
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import UA_REGISTRATIONS_PREEMPTED, WRITE_EXCLUSIVE_REGISTRANTS_ONLY
from tcmu_pr.ring import abi
from tcmu_pr.unit.lu import LogicalUnit

pytestmark = pytest.mark.ceph

GW_A = "iqn.2003-01.org.linux-iscsi.gw-a:rbd"
GW_B = "iqn.2003-01.org.linux-iscsi.gw-b:rbd"
# The victim is served by gateway B, the fencing node by gateway A.
VICTIM = Nexus.make("iqn.2026-01.org.example:victim", GW_B, isid=0x1, tpgt=1)
FENCER = Nexus.make("iqn.2026-01.org.example:fencer", GW_A, isid=0x2, tpgt=1)
WE_RO = WRITE_EXCLUSIVE_REGISTRANTS_ONLY
NOT_CONFIRMED = scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE.to_bytes()


class Gateway:
    """One gateway's view of the LU: its own RADOS client and serving LU."""

    def __init__(self, conf: str, image: str, **options: Any) -> None:
        self.store = rbd_store(conf, image, **options)
        self.lost: list[str] = []
        self.lu = LogicalUnit(self.store, on_loss=lambda _lu, why: self.lost.append(why))

    def run(self, nexus: Nexus, action: int, **kw: int) -> scsi.Outcome:
        cdb, params = pr_out(action, **kw)
        return self.lu.execute(nexus, cdb, params)

    def close(self) -> None:
        self.lu.close()
        self.store.close()


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


def test_every_change_is_in_the_other_gateway_before_it_returns(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    assert a.store.cluster.gid != b.store.cluster.gid
    assert b.run(VICTIM, REGISTER, sa_key=0xB).status == scsi.GOOD
    assert a.lu.state.registration_of(VICTIM) is not None  # not a fencing command: same rule
    assert b.run(VICTIM, RESERVE, key=0xB, pr_type=WE_RO).status == scsi.GOOD
    assert a.lu.state.is_holder(VICTIM)
    assert a.run(FENCER, REGISTER, sa_key=0xA).status == scsi.GOOD
    assert conflict.verdict(b.lu.state, VICTIM) & abi.VERDICT_WRITE

    outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
    assert outcome.status == scsi.GOOD, outcome
    # No waiting: B applied it before A's PREEMPT returned.
    state = b.lu.state
    assert state.registration_of(VICTIM) is None and state.is_holder(FENCER)
    word = conflict.verdict(state, VICTIM)
    assert not word & abi.VERDICT_WRITE and word & abi.VERDICT_UA
    # The UA owed to the victim travelled in the shared state to the gateway serving it.
    ua = b.lu.take_unit_attention(VICTIM)
    assert ua is not None and (ua.asc, ua.ascq) == UA_REGISTRATIONS_PREEMPTED
    assert b.lu.take_unit_attention(VICTIM) is None  # delivered once


def test_confirmation_latency(gateways: tuple[Gateway, Gateway]) -> None:
    """A change through A, confirmed by B: PR OUT latency printed for the report."""
    a, b = gateways
    latencies = []
    for key in range(1, 201):
        t0 = time.perf_counter()
        out = a.run(FENCER, REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=key)
        latencies.append(time.perf_counter() - t0)
        assert out.status == scsi.GOOD
        assert b.lu.state.registration_of(FENCER).key == key  # type: ignore[union-attr]
    latencies.sort()
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1e3
    print(f"\nRBD PR OUT confirmed by one other gateway: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
          f"max {latencies[-1] * 1e3:.2f} ms over {len(latencies)} changes")  # fmt: skip
    assert b.store.peers.handled >= len(latencies)


def _mute_watcher(conf: str, gw: Gateway, *, listed: bool) -> tuple[Cluster, Any]:
    """A "gateway" that hears announcements and never acks (hung, or partitioned)."""
    mute = Cluster(conf)
    io = mute.open_ioctx("rbd")
    if listed:
        io.setxattr(gw.store.peers.oid, f"{PEER_PREFIX}{mute.gid}", mute.addrs.encode())
    io.watch(gw.store.peers.oid, lambda *_: None, lambda *_: None)
    return mute, io


def test_a_silent_gateway_is_blocklisted_before_good(
    ceph_conf: str, rbd_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = Gateway(ceph_conf, rbd_image, ack_timeout=1)
    b = Gateway(ceph_conf, rbd_image)
    mute, io = _mute_watcher(ceph_conf, a, listed=True)
    try:
        _fence_setup(a, b)  # each of these waited for the mute one and blocklisted it...
        caplog.set_level(logging.ERROR, logger="tcmu_pr.backends.rbd_peers")
        with pytest.raises(StoreError) as err:  # ... so it can no longer touch the cluster
            io.getxattr(a.store.peers.oid, "x", cap=16)
        assert err.value.errno == errno.ESHUTDOWN  # EBLOCKLISTED
        outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
        assert outcome.status == scsi.GOOD  # the blocklisted one no longer watches
        assert b.lu.state.registration_of(VICTIM) is None
    finally:
        io.close()
        mute.shutdown()
        a.close()
        b.close()
        _clear_blocklist(ceph_conf)


def test_a_silent_gateway_that_cannot_be_cut_off_gets_check_condition(
    ceph_conf: str, rbd_image: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = Gateway(ceph_conf, rbd_image, ack_timeout=1)
    b = Gateway(ceph_conf, rbd_image)
    _fence_setup(a, b)
    mute, io = _mute_watcher(ceph_conf, a, listed=False)  # never said where it lives
    try:
        caplog.set_level(logging.ERROR)
        outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
        assert (outcome.status, outcome.sense) == (scsi.CHECK_CONDITION, NOT_CONFIRMED)
        assert f"client.{mute.gid} watches" in caplog.text
        # It landed (cannot be undone) and the gateways that did ack applied it.
        assert b.lu.state.registration_of(VICTIM) is None
    finally:
        io.close()
        mute.shutdown()
        a.close()
        b.close()


def test_fencing_off_gives_check_condition_and_leaves_the_gateway_alone(
    ceph_conf: str, rbd_image: str
) -> None:
    a = Gateway(ceph_conf, rbd_image, ack_timeout=1, fence=False)
    b = Gateway(ceph_conf, rbd_image)
    _fence_setup(a, b)
    mute, io = _mute_watcher(ceph_conf, a, listed=True)
    try:
        outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
        assert (outcome.status, outcome.sense) == (scsi.CHECK_CONDITION, NOT_CONFIRMED)
        assert io.getxattr(a.store.peers.oid, "nothing", cap=16) is None  # not blocklisted
    finally:
        io.close()
        mute.shutdown()
        a.close()
        b.close()


def test_a_cut_off_gateway_stops_vouching_for_its_state(ceph_conf: str, rbd_image: str) -> None:
    a = Gateway(ceph_conf, rbd_image)
    b = Gateway(ceph_conf, rbd_image)
    try:
        assert b.run(VICTIM, REGISTER, sa_key=0xB).status == scsi.GOOD
        assert a.lu.current()
        subprocess.run(
            ["ceph", "--conf", ceph_conf, "osd", "blocklist", "add", a.store.cluster.addrs],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not a.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert a.lost and "blocklisted" in a.lost[0]
        assert not a.lu.current()  # its devices answer NOT READY until it reconnects
        assert b.lu.current() and b.lu.state.registration_of(VICTIM) is not None
    finally:
        a.close()
        b.close()
        _clear_blocklist(ceph_conf)


def test_librbd_data_clients_are_not_asked(
    gateways: tuple[Gateway, Gateway], ceph_conf: str, rbd_image: str, rbd_io_native: Any
) -> None:
    """VMs and krbd watch the header; announcements go to the gateways' own object."""
    from tcmu_pr.backends.rbd_data import RbdImage

    a, b = gateways
    with RbdImage("rbd", rbd_image, conf=ceph_conf) as data:
        data.write(0, b"\x01" * 512)
        _fence_setup(a, b)
        outcome = a.run(FENCER, PREEMPT, key=0xA, sa_key=0xB, pr_type=WE_RO)
        assert outcome.status == scsi.GOOD
        confirmation = a.store.confirm_change()
        assert (confirmation.told, confirmation.acked, confirmation.ok) == (1, 1, True)
        assert data.read(0, 512) == b"\x01" * 512


def test_leaving_removes_the_watch_and_the_registry_entry(
    ceph_conf: str, rbd_image: str, rados_ioctx: Any
) -> None:
    gw = Gateway(ceph_conf, rbd_image)
    oid, key = gw.store.peers.oid, f"{PEER_PREFIX}{gw.store.cluster.gid}"
    assert rados_ioctx.get_xattr(oid, key).split()[0] == gw.store.cluster.addrs.encode()
    gw.close()
    assert key not in dict(rados_ioctx.get_xattrs(oid))
    other = Gateway(ceph_conf, rbd_image)
    try:
        confirmation = other.store.confirm_change()
        assert (confirmation.told, confirmation.ok) == (0, True)
    finally:
        other.close()


def test_a_gateway_with_the_rbd_caps_can_fence(
    ceph_conf: str, rbd_image: str, tmp_path: Any
) -> None:
    """What docs/consistency.md tells an administrator to grant a gateway is enough."""
    keyring = tmp_path / "client.gw1.keyring"
    subprocess.run(
        ["ceph", "--conf", ceph_conf, "auth", "get-or-create", "client.gw1",
         "mon", "profile rbd", "osd", "profile rbd pool=rbd", "-o", str(keyring)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    conf = tmp_path / "gw1.conf"
    text = Path(ceph_conf).read_text()
    conf.write_text(text.split("[client]")[0] + f"[client]\nkeyring = {keyring}\n")
    a = Gateway(str(conf), rbd_image, ack_timeout=1, ceph_id="gw1")
    b = Gateway(ceph_conf, rbd_image)
    mute, io = _mute_watcher(ceph_conf, a, listed=True)
    try:
        _fence_setup(a, b)
        with pytest.raises(StoreError) as err:
            io.getxattr(a.store.peers.oid, "x", cap=16)
        assert err.value.errno == errno.ESHUTDOWN
    finally:
        io.close()
        mute.shutdown()
        a.close()
        b.close()
        _clear_blocklist(ceph_conf)


def _clear_blocklist(conf: str) -> None:
    subprocess.run(["ceph", "--conf", conf, "osd", "blocklist", "clear"],
                   capture_output=True, timeout=20)  # fmt: skip
