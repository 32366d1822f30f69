"""The daemon with the nexus-handle kernel patch: one device per LU, the nexus from each entry.

The kernel is played by tests: the netlink peer for ADDED_DEVICE, ``NexusKernel`` for
GET_NEXUS (pyroute2 on the other end), a simulator that writes KFLAG_NEXUS entries and the
CAP_NEXUS mailbox flag, and a directory of plain files standing for the backstore's configfs
attributes.  Handles 1 and 3 are one initiator with two ISIDs (two sessions through one
portal), handle 2 another initiator through another target port.
"""

from __future__ import annotations

import logging

import pytest
from daemon_support import DaemonRig, run_cmd
from netlink_peer import NexusKernel, nexus_attrs
from pr_cdbs import basic_list, prout, sense_code
from ring_support import rw10

from tcmu_pr import scsi
from tcmu_pr.daemon.attrib import BackstoreAttribs, PRMode
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.engine.cdb import PREEMPT, REGISTER, RESERVE
from tcmu_pr.engine.conflict import VERDICT_UA
from tcmu_pr.netlink.nexus import NexusClient
from tcmu_pr.ring.simulator import NEXUS_FLAGS

BLOCK = 512
WE = 0x1
KEY_A, KEY_A2, KEY_B = 0xA1, 0xA2, 0xBB
INIT_A = "iqn.1994-05.com.redhat:client-a"
INIT_B = "iqn.1994-05.com.redhat:client-b"
TPORT = "iqn.2003-01.org.linux-iscsi.gw1:lu0"
NO_NEXUS = (scsi.HARDWARE_ERROR, 0x08, 0x00)
UA_PREEMPTED = (scsi.UNIT_ATTENTION, 0x2A, 0x05)
VPD_83 = bytes([0x12, 1, 0x83, 0, 255, 0])
RESERVE_6, RELEASE_6 = bytes([0x16]) + bytes(5), bytes([0x17]) + bytes(5)


def relative_port(rtpi: int) -> bytes:
    """VPD 0x83's relative target port designator (binary, target port, type 4)."""
    return bytes([0x01, 0x14, 0x00, 0x04, 0, 0, 0, rtpi])


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu0.img"
    path.write_bytes(bytes(1 << 20))
    return path


def _configfs(tmp_path, *, patched: bool, pgr: str = "1"):
    attrib = tmp_path / "configfs" / "user_1" / "lu0" / "attrib"
    attrib.mkdir(parents=True)
    (attrib / "pgr_support").write_text(f"{pgr}\n")
    if patched:
        (attrib / "nexus_handles").write_text("0\n")
    return BackstoreAttribs(tmp_path / "configfs"), attrib


@pytest.fixture
def kernel():
    k = NexusKernel()
    k.table[(1, 1)] = nexus_attrs(1, INIT_A, TPORT, isid=0x23D000001, rtpi=1)
    k.table[(1, 2)] = nexus_attrs(2, INIT_B, TPORT, isid=0x23D000002, tpgt=2, rtpi=2)
    k.table[(1, 3)] = nexus_attrs(3, INIT_A, TPORT, isid=0x23D000003, rtpi=1)
    k.table[(1, 5)] = nexus_attrs(6, INIT_A, TPORT)  # a lying kernel: names another handle
    yield k
    k.close()


@pytest.fixture
def rig(tmp_path, image, kernel):
    attribs, attrib = _configfs(tmp_path, patched=True)
    cfg = DaemonConfig(topology=tmp_path / "none.json", dbus=False, ring_poll_ms=50)
    client = NexusClient(kernel.transport)
    with DaemonRig(cfg, attribs=attribs, resolve=client.resolve, flags=NEXUS_FLAGS) as rig:
        assert rig.peer.add_device(1, f"tcmu-pr/file:{image}", name="lu0", minor=0) == 0
        rig.attrib = attrib
        yield rig


def pr(rig, handle, sa, params, type_=0):
    cdb, data = prout(sa, params, type_)
    return run_cmd(rig.sim("lu0"), cdb, data_out=data, nexus=handle)


def write(rig, handle, fill=b"x"):
    return run_cmd(rig.sim("lu0"), rw10(True, 0, 1), data_out=fill * BLOCK, nexus=handle)


def read(rig, handle):
    return run_cmd(rig.sim("lu0"), rw10(False, 0, 1), data_in=BLOCK, nexus=handle)


def device(rig):
    return rig.daemon.manager.devices[1]


def test_feature_detected_and_switched_on_before_serving(rig):
    assert (rig.attrib / "nexus_handles").read_text().strip() == "1"
    assert (rig.attrib / "pgr_support").read_text().strip() == "0"  # PR comes to us
    assert device(rig).params.pr_mode is PRMode.NEXUS


def test_reservation_of_one_nexus_fences_another_in_the_native_loop(rig, image, kernel):
    assert pr(rig, 1, REGISTER, basic_list(0, KEY_A)).status == scsi.GOOD
    assert pr(rig, 2, REGISTER, basic_list(0, KEY_B)).status == scsi.GOOD
    assert pr(rig, 1, RESERVE, basic_list(KEY_A), WE).status == scsi.GOOD
    assert sorted(set(kernel.requests)) == [(1, 1), (1, 2)]  # once per handle
    stats = device(rig)._ring.stats()
    assert write(rig, 2, b"b").status == scsi.RESERVATION_CONFLICT
    after = device(rig)._ring.stats()
    assert after["conflicts"] == stats["conflicts"] + 1 and after["punted"] == stats["punted"]
    assert write(rig, 1, b"a").status == scsi.GOOD
    got = read(rig, 2)
    assert (got.status, got.data) == (scsi.GOOD, b"a" * BLOCK)
    assert image.read_bytes()[:BLOCK] == b"a" * BLOCK
    assert sorted(set(kernel.requests)) == [(1, 1), (1, 2)]


def test_two_isids_of_one_initiator_are_two_nexuses(rig):
    assert pr(rig, 1, REGISTER, basic_list(0, KEY_A)).status == scsi.GOOD
    assert pr(rig, 1, RESERVE, basic_list(KEY_A), WE).status == scsi.GOOD
    # the same initiator name through the same portal, another session: not registered
    assert write(rig, 3).status == scsi.RESERVATION_CONFLICT
    assert pr(rig, 3, RESERVE, basic_list(KEY_A), WE).status == scsi.RESERVATION_CONFLICT
    assert pr(rig, 3, REGISTER, basic_list(0, KEY_A2)).status == scsi.GOOD
    assert write(rig, 3).status == scsi.RESERVATION_CONFLICT  # registered, not the holder


def test_unit_attention_goes_to_the_preempted_nexus_only(rig):
    pr(rig, 1, REGISTER, basic_list(0, KEY_A))
    pr(rig, 2, REGISTER, basic_list(0, KEY_B))
    pr(rig, 1, RESERVE, basic_list(KEY_A), WE)
    assert pr(rig, 2, PREEMPT, basic_list(KEY_B, KEY_A), WE).status == scsi.GOOD
    assert device(rig).slots[1]._verdict & VERDICT_UA
    assert not device(rig).slots[2]._verdict & VERDICT_UA
    assert write(rig, 2).status == scsi.GOOD
    first = write(rig, 1)
    assert (first.status, sense_code(first.sense)) == (scsi.CHECK_CONDITION, UA_PREEMPTED)
    assert write(rig, 1).status == scsi.RESERVATION_CONFLICT


def test_scsi2_reservation_per_nexus(rig):
    assert run_cmd(rig.sim("lu0"), RESERVE_6, nexus=1).status == scsi.GOOD
    assert write(rig, 3).status == scsi.RESERVATION_CONFLICT  # another ISID: another nexus
    assert run_cmd(rig.sim("lu0"), RESERVE_6, nexus=3).status == scsi.RESERVATION_CONFLICT
    assert write(rig, 1).status == scsi.GOOD
    assert run_cmd(rig.sim("lu0"), RELEASE_6, nexus=1).status == scsi.GOOD
    assert write(rig, 3).status == scsi.GOOD


def test_new_session_releases_the_scsi2_reservation_with_a_unit_attention(rig):
    sim = rig.sim("lu0")
    assert run_cmd(sim, RESERVE_6, nexus=1).status == scsi.GOOD
    assert write(rig, 3).status == scsi.RESERVATION_CONFLICT
    got = run_cmd(sim, rw10(False, 0, 1), data_in=BLOCK, nexus=1, new_session=True)
    assert (got.status, sense_code(got.sense)) == (scsi.CHECK_CONDITION,
                                                   (scsi.UNIT_ATTENTION, 0x29, 0x07))  # fmt: skip
    assert write(rig, 3).status == scsi.GOOD  # released everywhere before that answer
    assert read(rig, 1).status == scsi.GOOD  # the UA was delivered once
    # a persistent reservation survives a nexus loss, and nothing is queued for it
    pr(rig, 2, REGISTER, basic_list(0, KEY_B))
    pr(rig, 2, RESERVE, basic_list(KEY_B), WE)
    got = run_cmd(sim, rw10(True, 0, 1), data_out=bytes(BLOCK), nexus=2, new_session=True)
    assert got.status == scsi.GOOD
    assert write(rig, 1).status == scsi.RESERVATION_CONFLICT


def test_rtpi_of_each_nexus_in_vpd_83_and_pr_in(rig):
    for handle, rtpi in ((1, 1), (2, 2)):
        got = run_cmd(rig.sim("lu0"), VPD_83, data_in=255, nexus=handle)
        assert got.status == scsi.GOOD and relative_port(rtpi) in got.data


@pytest.mark.parametrize("handle", [None, 4, 5])  # no handle, ENOENT, a reply for handle 6
def test_unknown_nexus_refuses_pr_and_runs_data_as_unregistered(rig, handle, caplog):
    caplog.set_level(logging.ERROR)
    got = pr(rig, handle, REGISTER, basic_list(0, KEY_A))
    assert (got.status, sense_code(got.sense)) == (scsi.CHECK_CONDITION, NO_NEXUS)
    assert write(rig, handle).status == scsi.GOOD  # no reservation: anyone writes
    pr(rig, 1, REGISTER, basic_list(0, KEY_A))
    pr(rig, 1, RESERVE, basic_list(KEY_A), WE)
    assert write(rig, handle).status == scsi.RESERVATION_CONFLICT
    assert read(rig, handle).status == scsi.GOOD
    if handle is not None:
        assert "not resolved" in caplog.text
        assert handle not in device(rig).slots


def test_a_change_by_another_gateway_reaches_every_nexus_slot(rig, image):
    from test_daemon_flow import elsewhere

    from tcmu_pr.pr.nexus import Nexus

    pr(rig, 1, REGISTER, basic_list(0, KEY_A))
    pr(rig, 2, REGISTER, basic_list(0, KEY_B))
    other = Nexus.parse("iqn.1994-05.com.redhat:client-c,i,0x1,iqn.2003-01.org.gw2:c,t,0x1")
    elsewhere(image, other, prout(REGISTER, basic_list(0, 0xC)),
              prout(RESERVE, basic_list(0xC), WE))  # fmt: skip
    assert write(rig, 1).status == scsi.RESERVATION_CONFLICT
    assert write(rig, 2).status == scsi.RESERVATION_CONFLICT
    assert read(rig, 1).status == scsi.GOOD


def test_reconfig_rebuilds_the_ring_with_every_slot_published(rig):
    pr(rig, 1, REGISTER, basic_list(0, KEY_A))
    pr(rig, 1, RESERVE, basic_list(KEY_A), WE)
    pr(rig, 2, REGISTER, basic_list(0, KEY_B))
    from netlink_peer import Attr

    assert rig.peer.reconfig(1, {Attr.DEV_SIZE: 1 << 19}) == 0
    before = device(rig)._ring.stats()
    assert write(rig, 2).status == scsi.RESERVATION_CONFLICT
    assert write(rig, 1).status == scsi.GOOD
    assert device(rig)._ring.stats()["punted"] == before["punted"]  # straight from the slots


def test_stock_kernel_gets_lio_pr_with_a_warning(tmp_path, image, caplog):
    attribs, attrib = _configfs(tmp_path, patched=False, pgr="0")
    cfg = DaemonConfig(topology=tmp_path / "none.json", dbus=False, ring_poll_ms=50)
    caplog.set_level(logging.WARNING)
    with DaemonRig(cfg, attribs=attribs) as rig:
        assert rig.peer.add_device(1, f"tcmu-pr/file:{image}", name="lu0", minor=0) == 0
        assert (attrib / "pgr_support").read_text().strip() == "1"
        assert rig.daemon.manager.devices[1].params.pr_mode is PRMode.LIO
        assert "NOT shared with other gateways" in caplog.text
        assert write(rig, None).status == scsi.GOOD


def test_configfs_failure_refuses_pr_but_serves_data(tmp_path, image, caplog):
    attribs = BackstoreAttribs(tmp_path / "missing")
    cfg = DaemonConfig(topology=tmp_path / "none.json", dbus=False, ring_poll_ms=50)
    with DaemonRig(cfg, attribs=attribs) as rig:
        assert rig.peer.add_device(1, f"tcmu-pr/file:{image}", name="lu0", minor=0) == 0
        assert rig.daemon.manager.devices[1].params.pr_mode is PRMode.NONE
        got = pr(rig, None, REGISTER, basic_list(0, KEY_A))
        assert sense_code(got.sense) == NO_NEXUS
        assert write(rig, None).status == scsi.GOOD
