"""scripts/ceph-cluster: loopback only, idempotent, two clusters side by side, clean stop."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ceph

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ceph-cluster"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _inet_sockets(inodes: set[str]) -> list[tuple[str, str]]:
    """(local address hex, state hex) of the TCP/UDP sockets among ``inodes``."""
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((fields[1].split(":")[0], fields[3]))
    return found


def _pids(directory: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted((directory / "run").glob("*.pid"))]


def test_daemons_listen_on_loopback_only(ceph_conf: str) -> None:
    directory = Path(ceph_conf).parent
    pids = _pids(directory)
    assert len(pids) == 2
    sockets = [s for pid in pids for s in _inet_sockets(_socket_inodes(pid))]
    listening = [addr for addr, state in sockets if state == "0A"]
    assert listening, "the daemons listen somewhere"
    # 127.0.0.1 in /proc/net/tcp's little-endian hex; nothing on IPv6 at all.
    assert {addr for addr, _ in sockets} == {"0100007F"}


def test_start_is_idempotent_and_status_answers(ceph_conf: str) -> None:
    directory = Path(ceph_conf).parent
    before = _pids(directory)
    again = subprocess.run([SCRIPT, "start", directory], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.strip() == f"CEPH_CONF={ceph_conf}"
    assert _pids(directory) == before
    status = subprocess.run([SCRIPT, "status", directory], capture_output=True, timeout=60)
    assert status.returncode == 0


def test_second_cluster_coexists_and_stops_cleanly(ceph_conf: str) -> None:
    directory = Path(f"/tmp/tcmu-pr-ceph2-{os.getpid()}")
    try:
        started = subprocess.run(
            [SCRIPT, "start", directory], capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0, started.stderr
        pids = _pids(directory)
        assert len(pids) == 2
        first = Path(ceph_conf).read_text()
        second = (directory / "ceph.conf").read_text()
        mon = [line for line in second.splitlines() if line.startswith("mon_host")]
        assert mon and mon[0] not in first
        stopped = subprocess.run([SCRIPT, "stop", directory], capture_output=True, timeout=60)
        assert stopped.returncode == 0
        assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        down = subprocess.run([SCRIPT, "status", directory], capture_output=True, timeout=60)
        assert down.returncode != 0
        # The session's cluster is untouched.
        up = subprocess.run([SCRIPT, "status", Path(ceph_conf).parent], capture_output=True)
        assert up.returncode == 0
    finally:
        subprocess.run([SCRIPT, "stop", directory], capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", directory], check=False)


def _kill_and_wait(pid: int) -> None:
    """kill -9 and wait until it is gone (a daemon is not our child: init reaps it)."""
    os.kill(pid, 9)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)


def test_data_survives_osd_and_monitor_restarts_and_a_stop(tmp_path: Path) -> None:
    """What the fault tests rely on: start brings back whichever daemon is down, on its data."""
    directory = Path(f"/tmp/tcmu-pr-ceph3-{os.getpid()}")
    conf = directory / "ceph.conf"
    payload = tmp_path / "payload"
    payload.write_bytes(os.urandom(65536))
    rados = ["rados", "--conf", str(conf), "-p", "rbd"]

    def start() -> None:
        done = subprocess.run([SCRIPT, "start", directory], capture_output=True, text=True,
                              timeout=180)  # fmt: skip
        assert done.returncode == 0, done.stderr

    def read_back() -> bytes:
        got = tmp_path / "got"
        subprocess.run([*rados, "get", "obj", str(got)], check=True, timeout=60)
        return got.read_bytes()

    try:
        start()
        subprocess.run([*rados, "put", "obj", str(payload)], check=True, timeout=60)
        for daemon in ("osd.0", "mon.a"):
            _kill_and_wait(int((directory / "run" / f"{daemon}.pid").read_text()))
            start()
            assert read_back() == payload.read_bytes(), f"lost after a {daemon} restart"
        subprocess.run([SCRIPT, "stop", directory], check=True, timeout=60)
        start()
        assert read_back() == payload.read_bytes()
    finally:
        subprocess.run([SCRIPT, "stop", directory], capture_output=True, timeout=60)
        subprocess.run(["rm", "-rf", directory], check=False)
