"""Two daemons on one kernel: each serves the devices its globs select, silent about the rest.

The kernel multicasts every TCM-USER command to every listener and takes the first reply,
so the test sends each command to both daemons (two rigs, as one kernel would) and checks
that exactly one answers; then a reservation taken through daemon A fences daemon B's
device through the shared file store.
"""

from __future__ import annotations

import socket

import pytest
from daemon_support import (
    NEXUS_A,
    NEXUS_B,
    DaemonRig,
    SimRingSource,
    run_cmd,
    write_topology,
)
from netlink_peer import DAEMON_PORT, FAMILY_ID, KernelPeer, build
from pr_cdbs import basic_list, prout
from ring_support import rw10

from tcmu_pr import scsi
from tcmu_pr.daemon import config
from tcmu_pr.daemon.adopt import Existing
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.main import Daemon
from tcmu_pr.daemon.selection import DeviceSelection
from tcmu_pr.engine.cdb import REGISTER, RESERVE
from tcmu_pr.netlink.family import Attr, Cmd
from tcmu_pr.netlink.socket import PacketTransport

BLOCK = 512
WE = 0x1


@pytest.mark.parametrize(
    ("globs", "name", "selected"),
    [
        ((), "tcm-user/3/anything/tcmu-pr/file//x", True),
        (("lu1.p1.*",), "tcm-user/3/lu1.p1.i2/tcmu-pr/file//srv/lu1.img", True),
        (("lu1.p1.*",), "tcm-user/3/lu1.p2.i1/tcmu-pr/file//srv/lu1.img", False),
        (("user_3/*",), "tcm-user/3/lu1.p2.i1/tcmu-pr/file//srv/lu1.img", True),
        (("user_3/*",), "tcm-user/4/lu1.p2.i1/tcmu-pr/file//srv/lu1.img", False),
        (("a", "lu1.p2.*"), "tcm-user/3/lu1.p2.i1", True),
        (("lu1*",), "not a tcmu name", False),
    ],
)
def test_selection_matches_backstore_name_or_configfs_key(globs, name, selected):
    assert DeviceSelection(globs).selects(name) is selected


def test_config_devices():
    assert config.parse('[daemon]\ndevices = ["lu0.p1.*", "x"]').devices == ("lu0.p1.*", "x")
    assert config.parse("").devices == ()
    for bad in ('devices = "lu0"', "devices = [1]", 'devices = [""]'):
        with pytest.raises(config.DaemonConfigError, match=r"daemon\.devices"):
            config.parse(f"[daemon]\n{bad}")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu0.img"
    path.write_bytes(bytes(1 << 20))
    return path


def _cfg(tmp_path, globs):
    return DaemonConfig(topology=tmp_path / "topology.json", dbus=False, ring_poll_ms=50,
                        devices=globs)  # fmt: skip


def _both(rigs, cmd, device_id, name, dev_config, minor):
    """Send one kernel command to every daemon; the replies that came back, per rig."""
    attrs = {Attr.DEVICE: f"tcm-user/1/{name}/{dev_config}", Attr.MINOR: minor,
             Attr.DEVICE_ID: device_id}  # fmt: skip
    for rig in rigs:
        rig.peer.send(build(cmd, attrs))
    return [rig.peer.recv(timeout=0.5) for rig in rigs]


def test_two_daemons_split_the_devices_and_share_the_pr_state(tmp_path, image):
    write_topology(
        tmp_path / "topology.json",
        {
            "user_1/lu0_a": {"lu": "lu0", "store": f"file:{image}", "nexus": NEXUS_A, "rtpi": 1},
            "user_1/lu0_b": {"lu": "lu0", "store": f"file:{image}", "nexus": NEXUS_B, "rtpi": 2},
        },
    )
    cfg = f"tcmu-pr/file:{image}"
    with DaemonRig(_cfg(tmp_path, ("lu0_a",))) as gw1, DaemonRig(_cfg(tmp_path, ("lu0_b",))) as gw2:
        rigs = [gw1, gw2]
        r1, r2 = _both(rigs, Cmd.ADDED_DEVICE, 1, "lu0_a", cfg, 0)
        assert r1 is not None and r1.get_attr("TCMU_ATTR_CMD_STATUS") == 0 and r2 is None
        r1, r2 = _both(rigs, Cmd.ADDED_DEVICE, 2, "lu0_b", cfg, 1)
        assert r1 is None and r2 is not None and r2.get_attr("TCMU_ATTR_CMD_STATUS") == 0
        assert set(gw1.daemon.manager.devices) == {1} and set(gw2.daemon.manager.devices) == {2}

        a, b = gw1.sim("lu0_a"), gw2.sim("lu0_b")
        for sim, key in ((a, 0xA), (b, 0xB)):
            cdb, data = prout(REGISTER, basic_list(0, key))
            assert run_cmd(sim, cdb, data_out=data).status == scsi.GOOD
        cdb, data = prout(RESERVE, basic_list(0xA), WE)
        assert run_cmd(a, cdb, data_out=data).status == scsi.GOOD
        # The RESERVE's GOOD came only once gw2 applied it: gw2's C loop refuses at once.
        assert gw2.daemon.manager.devices[2]._verdict & 2 == 0
        done = run_cmd(b, rw10(True, 0, 1), data_out=b"b" * BLOCK)
        assert done.status == scsi.RESERVATION_CONFLICT
        assert run_cmd(a, rw10(True, 0, 1), data_out=b"a" * BLOCK).status == scsi.GOOD
        assert image.read_bytes()[:BLOCK] == b"a" * BLOCK

        # Removal: only the owner answers too.
        r1, r2 = _both(rigs, Cmd.REMOVED_DEVICE, 2, "lu0_b", cfg, 1)
        assert r1 is None and r2 is not None and r2.get_attr("TCMU_ATTR_CMD_STATUS") == 0
        # A device nobody selected: both silent (the kernel times out: a config error).
        assert _both(rigs, Cmd.ADDED_DEVICE, 3, "lu9_x", cfg, 2) == [None, None]


def test_without_selection_unknown_devices_are_still_answered(tmp_path, image):
    with DaemonRig(_cfg(tmp_path, ())) as rig:
        (reply,) = _both([rig], Cmd.REMOVED_DEVICE, 7, "lu0_z", f"tcmu-pr/file:{image}", 0)
        assert reply is not None and reply.get_attr("TCMU_ATTR_CMD_STATUS") != 0


def test_adoption_at_start_takes_only_selected_devices(tmp_path, image):
    """A pending device of the other daemon gets no ADDED_DEVICE_DONE from us."""
    write_topology(tmp_path / "topology.json", {})
    name = lambda n: f"tcm-user/1/{n}/tcmu-pr/file:{image}"  # noqa: E731
    existing = [Existing(1, 0, name("lu0.p1.i1"), configured=False),
                Existing(2, 1, name("lu0.p2.i1"), configured=False)]  # fmt: skip
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    rings = SimRingSource()
    daemon = Daemon(
        _cfg(tmp_path, ("lu0.p1.*",)),
        transport=PacketTransport(ours, family_id=FAMILY_ID, port_id=DAEMON_PORT),
        ring_source=rings,
        scan_existing=lambda: (existing, []),
    )
    peer = KernelPeer(theirs)
    try:
        daemon.start()
        assert peer.recv()["cmd"] == Cmd.SET_FEATURES
        done = peer.recv()
        assert done["cmd"] == Cmd.ADDED_DEVICE_DONE and done.get_attr("TCMU_ATTR_DEVICE_ID") == 1
        assert peer.recv(timeout=0.3) is None  # nothing for device 2
        assert rings.opened == ["lu0.p1.i1"]
    finally:
        daemon.close()
        rings.close()
        theirs.close()
