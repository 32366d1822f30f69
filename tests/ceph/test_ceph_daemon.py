"""The whole daemon serving an LU that lives on RBD: data through librbd in the native loop,
PR state in the image header's ``pr_info`` xattr, kernel played by the netlink peer and ring
simulators (tests/daemon_support.py)."""

from __future__ import annotations

import pytest
from conftest import rbd_store
from daemon_support import NEXUS_A, NEXUS_B, DaemonRig, run_cmd, write_topology
from pr_cdbs import basic_list, prout
from ring_support import rw10

from tcmu_pr import scsi
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.engine.cdb import REGISTER, RESERVE
from tcmu_pr.netlink.family import Attr
from tcmu_pr.pr import codec

pytestmark = pytest.mark.ceph

BLOCK = 512
KEY_A, KEY_B = 0xA1, 0xB2
WE = 0x1


def pr(sim, sa: int, params: bytes, type_: int = 0):
    cdb, data = prout(sa, params, type_)
    return run_cmd(sim, cdb, data_out=data, timeout=30)


def test_rbd_lu_is_served_natively_and_fenced_through_the_header_xattr(
    tmp_path, ceph_conf, rados_ioctx, rbd_image, rbd_io_native
):
    store = f"rbd:rbd/{rbd_image}"
    write_topology(
        tmp_path / "topology.json",
        {
            "user_1/lu0_a": {"lu": "lu0", "store": store, "nexus": NEXUS_A, "rtpi": 1},
            "user_1/lu0_b": {"lu": "lu0", "store": store, "nexus": NEXUS_B, "rtpi": 2},
        },
    )
    cfg = DaemonConfig(topology=tmp_path / "topology.json", dbus=False, ring="native")
    with DaemonRig(cfg) as rig:
        config = f"tcmu-pr/rbd/rbd/{rbd_image}"
        assert rig.peer.add_device(1, config, name="lu0_a", minor=0) == 0
        assert rig.peer.add_device(2, config, name="lu0_b", minor=1) == 0
        a, b = rig.sim("lu0_a"), rig.sim("lu0_b")

        # Data written through one device reads back through the other, via librbd.
        assert run_cmd(a, rw10(True, 8, 1), data_out=b"r" * BLOCK, timeout=30).status == 0
        read = run_cmd(b, rw10(False, 8, 1), data_in=BLOCK, timeout=30)
        assert (read.status, read.data) == (scsi.GOOD, b"r" * BLOCK)
        assert rig.daemon.manager.devices[1]._ring.stats()["fast"] >= 1  # not punted
        # One RADOS client for both devices' data and the PR state.
        assert len(rig.daemon.manager.stores) == 1

        assert pr(a, REGISTER, basic_list(0, KEY_A)).status == scsi.GOOD
        assert pr(a, RESERVE, basic_list(KEY_A), WE).status == scsi.GOOD
        # The state is the header xattr every gateway reads.
        other = rbd_store(ceph_conf, rbd_image)
        try:
            state = codec.decode(other.slot().read())
        finally:
            other.close()
        assert state.reservation is not None and state.reservation.key == KEY_A

        done = run_cmd(b, rw10(True, 8, 1), data_out=b"x" * BLOCK, timeout=30)
        assert done.status == scsi.RESERVATION_CONFLICT
        again = run_cmd(b, rw10(False, 8, 1), data_in=BLOCK, timeout=30)
        assert (again.status, again.data) == (scsi.GOOD, b"r" * BLOCK)

        # WCE=0 (the kernel's WRITECACHE attribute): the Caching page says so, and the
        # native loop flushes librbd before a write is GOOD.
        assert rig.peer.reconfig(1, {Attr.WRITECACHE: 0}) == 0
        caching = run_cmd(a, bytes([0x1A, 0x08, 0x08, 0, 64, 0]), data_in=64, timeout=30)
        assert caching.status == scsi.GOOD and not caching.data[4 + 2] & 0x04  # WCE
        ring = rig.daemon.manager.devices[1]._ring
        flushes = ring.stats()["flushes"]
        assert run_cmd(a, rw10(True, 9, 1), data_out=b"s" * BLOCK, timeout=30).status == 0
        assert ring.stats()["flushes"] == flushes + 1
