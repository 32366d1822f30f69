"""Start-up of the daemon: adopting TCMU devices that already exist, and the readiness signal.

The sysfs/configfs trees are real directories laid out as the kernel lays them out (names
from target_core_user.c and target_core_configfs.c); the daemon runs whole, with the netlink
test peer playing the kernel and ring simulators for the rings.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import pytest
from daemon_support import NEXUS_A, SimRingSource, run_cmd, wait_for, write_topology
from netlink_peer import DAEMON_PORT, FAMILY_ID, KernelPeer

from tcmu_pr.daemon import notify
from tcmu_pr.daemon.adopt import Existing, ours, scan
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.main import Daemon
from tcmu_pr.netlink.family import Cmd
from tcmu_pr.netlink.socket import PacketTransport


def make_uio(sysfs: Path, minor: int, name: str, size: int = 0x1000) -> None:
    d = sysfs / f"uio{minor}"
    (d / "maps" / "map0").mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "maps" / "map0" / "size").write_text(f"0x{size:016x}\n")


def make_backstore(core: Path, hba: int, name: str, index: int, enabled: bool = True) -> None:
    d = core / f"user_{hba}" / name
    (d / "statistics" / "scsi_dev").mkdir(parents=True)
    (d / "statistics" / "scsi_dev" / "indx").write_text(f"{index}\n")
    (d / "enable").write_text("1\n" if enabled else "0\n")


@pytest.fixture
def trees(tmp_path):
    sysfs, core = tmp_path / "uio", tmp_path / "core"
    sysfs.mkdir()
    core.mkdir()
    return sysfs, core


def test_scan_finds_our_devices_with_their_kernel_ids(trees):
    sysfs, core = trees
    make_uio(sysfs, 0, "tcm-user/10/lu0_gw1/tcmu-pr/file//srv/lu0.img")
    make_backstore(core, 10, "lu0_gw1", 3)
    make_uio(sysfs, 2, "tcm-user/11/lu0_gw2/tcmu_pr/file//srv/lu0.img")  # targetcli spelling
    make_backstore(core, 11, "lu0_gw2", 4, enabled=False)
    make_uio(sysfs, 1, "tcm-user/12/other/qcow//srv/x.qcow2")  # tcmu-runner's: not ours
    make_backstore(core, 12, "other", 5)
    (sysfs / "uio7").mkdir()  # a uio of another driver, unreadable name: skipped
    found, problems = scan(sysfs, core)
    assert found == [
        Existing(3, 0, "tcm-user/10/lu0_gw1/tcmu-pr/file//srv/lu0.img", configured=True),
        Existing(4, 2, "tcm-user/11/lu0_gw2/tcmu_pr/file//srv/lu0.img", configured=False),
    ]
    assert problems == []


def test_scan_reports_a_device_without_configfs_entry(trees):
    sysfs, core = trees
    make_uio(sysfs, 0, "tcm-user/1/gone/tcmu-pr/file//srv/lu0.img")
    make_uio(sysfs, 1, "tcm-user/1/bad/tcmu-pr/file//srv/lu0.img")
    make_backstore(core, 1, "bad", 0)
    (core / "user_1" / "bad" / "statistics" / "scsi_dev" / "indx").write_text("x\n")
    found, problems = scan(sysfs, core)
    assert found == []
    assert len(problems) == 2
    assert "uio0 (1/gone): no usable configfs entry" in problems[0]
    assert "uio1 (1/bad)" in problems[1]


def test_scan_without_uio_class_is_empty(tmp_path):
    assert scan(tmp_path / "none", tmp_path) == ([], [])


@pytest.mark.parametrize(
    ("config", "expected"),
    [("tcmu-pr/file//x", True), ("tcmu_pr/rbd/p/i", True), ("qcow//x", False), ("", False),
     ("tcmu-prx/file//x", False)],
)  # fmt: skip
def test_ours(config, expected):
    assert ours(config) is expected


def ack(seq: int, error: int = 0) -> bytes:
    """NLMSG_ERROR as netlink_ack() sends it: error code + the request's header."""
    return struct.pack("=IHHII", 36, 2, 0, seq, 0) + struct.pack("=i", error) + bytes(16)


class StartRig:
    """A Daemon whose kernel is the test peer and whose 'existing devices' are given."""

    def __init__(self, tmp_path: Path, existing: list[Existing]) -> None:
        image = tmp_path / "lu0.img"
        image.write_bytes(bytes(1 << 20))
        self.image = image
        write_topology(
            tmp_path / "topology.json",
            {"user_1/lu0_a": {"store": f"file:{image}", "nexus": NEXUS_A, "rtpi": 1}},
        )
        cfg = DaemonConfig(topology=tmp_path / "topology.json", dbus=False, ring_poll_ms=20)
        ours_sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.rings = SimRingSource()
        self.ready_file = tmp_path / "ready"
        self.daemon = Daemon(
            cfg,
            transport=PacketTransport(ours_sock, family_id=FAMILY_ID, port_id=DAEMON_PORT),
            ring_source=self.rings,
            scan_existing=lambda: (existing, ["uio9: unreadable"]),
            ready_file=self.ready_file,
        )
        self.peer = KernelPeer(theirs)
        self.thread = threading.Thread(target=self.daemon.serve, daemon=True)

    def close(self) -> None:
        """Stop the daemon; the peer's socket stays open to read its last words."""
        self.daemon.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(5)
        self.daemon.close()
        self.rings.close()


def test_start_adopts_existing_devices_and_then_signals_ready(tmp_path, caplog):
    name = lambda n: f"tcm-user/1/{n}/tcmu-pr/file:{tmp_path / 'lu0.img'}"  # noqa: E731
    rig = StartRig(
        tmp_path,
        [Existing(1, 0, name("lu0_a"), configured=True),
         Existing(2, 1, name("lu0_b"), configured=False)],
    )  # fmt: skip
    try:
        rig.daemon.start()
        hello = rig.peer.recv()
        assert hello["cmd"] == Cmd.SET_FEATURES
        assert hello.get_attr("TCMU_ATTR_SUPP_KERN_CMD_REPLY") == 1
        # Only the device the kernel still waits for gets an ADDED_DEVICE_DONE.
        done = rig.peer.recv()
        assert done["cmd"] == Cmd.ADDED_DEVICE_DONE
        assert done.get_attr("TCMU_ATTR_DEVICE_ID") == 2
        assert done.get_attr("TCMU_ATTR_CMD_STATUS") == 0
        assert rig.peer.recv(timeout=0.2) is None
        assert sorted(rig.rings.opened) == ["lu0_a", "lu0_b"]
        assert run_cmd(rig.rings.sims["lu0_a"], bytes(6)).status == 0  # served
        assert "existing TCMU device not adopted: uio9: unreadable" in caplog.text
        # Not ready before the kernel acknowledged SET_FEATURES.
        rig.thread.start()
        assert not rig.daemon.ready.wait(0.3)
        assert not rig.ready_file.exists()
        rig.peer.send(ack(hello["header"]["sequence_number"]))
        assert rig.daemon.ready.wait(5)
        assert rig.ready_file.read_text() == f"{os.getpid()}\n"
        # The kernel's own ADDED_DEVICE for an adopted device (it raced our scan): 0 again.
        assert rig.peer.add_device(1, f"tcmu-pr/file:{rig.image}", name="lu0_a") == 0
        assert rig.rings.opened.count("lu0_a") == 1
    finally:
        rig.close()
    assert not rig.ready_file.exists()  # removed on the way out
    bye = rig.peer.recv()  # reply support off again: no kernel waits for a dead daemon
    rig.peer.sock.close()
    assert bye["cmd"] == Cmd.SET_FEATURES
    assert bye.get_attr("TCMU_ATTR_SUPP_KERN_CMD_REPLY") == 0


def test_refused_set_features_stops_the_daemon(tmp_path):
    rig = StartRig(tmp_path, [])
    try:
        rig.daemon.start()
        hello = rig.peer.recv()
        rig.thread.start()
        rig.peer.send(ack(hello["header"]["sequence_number"], -1))  # EPERM
        wait_for(rig.daemon.stop_event.is_set)
        rig.thread.join(5)
        assert rig.daemon.failure == "the kernel refused SET_FEATURES: Operation not permitted"
        assert not rig.daemon.ready.is_set()
    finally:
        rig.close()
        rig.peer.sock.close()


def test_sd_notify_reaches_the_socket(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        assert notify.sd_notify("READY=1", {"NOTIFY_SOCKET": str(path)})
        assert listener.recv(100) == b"READY=1"
    abstract = f"tcmu-pr-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + abstract)
        assert notify.sd_notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + abstract})
        assert listener.recv(100) == b"STOPPING=1"
    assert not notify.sd_notify("READY=1", {})
    assert not notify.sd_notify("READY=1", {"NOTIFY_SOCKET": "relative"})


def test_ready_file_is_ours_to_remove_only(tmp_path):
    path = tmp_path / "ready"
    notify.write_ready_file(path)
    assert path.read_text() == f"{os.getpid()}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ready"]  # no temporary left behind
    path.write_text("1\n")  # a successor's file
    notify.remove_ready_file(path)
    assert path.exists()
    notify.write_ready_file(path)
    notify.remove_ready_file(path)
    assert not path.exists()
