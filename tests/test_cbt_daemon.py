"""The daemon tracks a file LU whose image has a map: both devices of the LU (native fast
path and punted commands) mark their writes, a snapshot taken while it serves reads the
image of its time, and stopping the daemon closes the map cleanly."""

from __future__ import annotations

import struct

import pytest
from daemon_support import NEXUS_A, NEXUS_B, DaemonRig, run_cmd, write_topology
from ring_support import rw10

from tcmu_pr import scsi
from tcmu_pr.cbt import layout, mapfile, snapshot
from tcmu_pr.daemon.config import DaemonConfig

BLOCK = 512
SIZE = 1 << 20


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu0.img"
    path.write_bytes(bytes(SIZE))
    mapfile.enable(str(path), 4096)
    return path


@pytest.fixture
def cfg(tmp_path, image):
    write_topology(
        tmp_path / "topology.json",
        {
            "user_1/lu0_a": {"lu": "lu0", "store": f"file:{image}", "nexus": NEXUS_A, "rtpi": 1},
            "user_1/lu0_b": {"lu": "lu0", "store": f"file:{image}", "nexus": NEXUS_B, "rtpi": 2},
        },
    )
    return DaemonConfig(topology=tmp_path / "topology.json", dbus=False, ring_poll_ms=50)


def _marked(image) -> set[int]:
    with mapfile.CbtMap.open(str(image), writer=False) as m:
        return {i for i, v in enumerate(m.map_bytes()) if v}


def test_daemon_marks_writes_of_every_device_and_snapshots_work(cfg, image):
    with DaemonRig(cfg) as rig:
        assert rig.peer.add_device(1, f"tcmu-pr/file:{image}", name="lu0_a", minor=0) == 0
        assert rig.peer.add_device(2, f"tcmu-pr/file:{image}", name="lu0_b", minor=1) == 0
        a, b = rig.sim("lu0_a"), rig.sim("lu0_b")
        assert run_cmd(a, rw10(True, 8, 1), data_out=b"a" * BLOCK).status == scsi.GOOD
        assert run_cmd(b, rw10(True, 80, 8), data_out=b"b" * 8 * BLOCK).status == scsi.GOOD
        write_same = struct.pack(">BBQIBB", 0x93, 0, 800, 16, 0, 0)  # punted: the emulation
        assert run_cmd(a, write_same, data_out=b"w" * BLOCK).status == scsi.GOOD
        assert _marked(image) == {1, 10, 100, 101}
        with open(image, "rb") as f:
            before = f.read()
        snap = snapshot.create(str(image))
        assert run_cmd(b, rw10(True, 8, 1), data_out=b"c" * BLOCK).status == scsi.GOOD
        out: list[bytes] = []
        snapshot.read(str(image), snap.number, out.append)
        assert b"".join(out) == before
        assert rig.daemon.manager.devices[2]._ring.stats()["punted"] >= 1  # the first write
    with open(str(image) + layout.SUFFIX, "rb") as f:
        assert struct.unpack_from("<I", f.read(4096), layout.OFF_DIRTY)[0] == 0
