"""A whole tcmu-pr daemon with its kernel played by tests: netlink peer + ring simulators.

``DaemonRig`` runs :class:`tcmu_pr.daemon.main.Daemon` on a SOCK_SEQPACKET pair (the
netlink test peer on the other end) and serves each device's ring from a RingSimulator,
handed to the daemon through its RingSource seam instead of /dev/uioN.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from netlink_peer import DAEMON_PORT, FAMILY_ID, KernelPeer

from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.main import Daemon
from tcmu_pr.daemon.rings import EVENTFD_EVENT_SIZE, RingEndpoint
from tcmu_pr.netlink.devconfig import DeviceInfo
from tcmu_pr.netlink.socket import PacketTransport
from tcmu_pr.ring.simulator import DEFAULT_FLAGS, Completion, RingSimulator

TPORT = "iqn.2003-01.org.linux-iscsi.gw"
NEXUS_A = f"iqn.1994-05.com.redhat:client-a,i,0x23d000001,{TPORT}:a,t,0x1"
NEXUS_B = f"iqn.1994-05.com.redhat:client-b,i,0x23d000002,{TPORT}:b,t,0x1"


@dataclass
class SimRingSource:
    """RingSource seam: device name -> a RingSimulator created on first open."""

    sims: dict[str, RingSimulator] = field(default_factory=dict)
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    flags: int = DEFAULT_FLAGS  # NEXUS_FLAGS: the patched kernel's mailbox

    def open(self, info: DeviceInfo) -> RingEndpoint:
        if info.name not in self.sims:
            self.sims[info.name] = RingSimulator(data_size=1 << 20, flags=self.flags)
        sim = self.sims[info.name]
        self.opened.append(info.name)
        return RingEndpoint(
            sim.mm, sim.notify_fd, sim.kick_fd, EVENTFD_EVENT_SIZE,
            lambda: self.closed.append(info.name),
        )  # fmt: skip

    def close(self) -> None:
        for sim in self.sims.values():
            sim.close()


def run_cmd(
    sim: RingSimulator, cdb: bytes, *, data_out: bytes = b"", data_in: int = 0, timeout: float = 5,
    nexus: int | None = None,
    new_session: bool = False,
) -> Completion:
    """Queue one command as the kernel would (``nexus``: with that handle, as the patched
    kernel does) and wait for the daemon's answer."""
    cmd_id = sim.queue(cdb, data_out=data_out, data_in=data_in, nexus=nexus,
                       new_session=new_session)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for done in sim.reap():
            if done.cmd_id == cmd_id:
                return done
        time.sleep(0.002)
    raise AssertionError(f"command {cdb.hex()} not answered in {timeout} s")


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def write_topology(path: Path, devices: dict[str, dict]) -> None:
    path.write_text(json.dumps({"devices": devices}))


class DaemonRig:
    """Daemon + kernel peer + simulated rings; ``with DaemonRig(cfg) as rig: ...``."""

    def __init__(self, cfg: DaemonConfig, **daemon_kw: object) -> None:
        """``daemon_kw``: more seams of Daemon (``attribs``, ``resolve``), and ``flags``
        for the simulated mailboxes."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.rings = SimRingSource(flags=int(daemon_kw.pop("flags", DEFAULT_FLAGS)))  # type: ignore[call-overload]
        self.daemon = Daemon(
            cfg,
            transport=PacketTransport(ours, family_id=FAMILY_ID, port_id=DAEMON_PORT),
            ring_source=self.rings,
            **daemon_kw,  # type: ignore[arg-type]
        )
        self.peer = KernelPeer(theirs)
        self._theirs = theirs
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DaemonRig:
        self.daemon.start()
        hello = self.peer.recv()  # SET_FEATURES(SUPP_KERN_CMD_REPLY)
        assert hello is not None and hello.get_attr("TCMU_ATTR_SUPP_KERN_CMD_REPLY") == 1
        self._thread = threading.Thread(target=self.daemon.serve, daemon=True)
        self._thread.start()
        return self

    def sim(self, name: str) -> RingSimulator:
        return self.rings.sims[name]

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop_event.set()
        if self._thread is not None:
            self._thread.join(5)
            assert not self._thread.is_alive()
        self.daemon.close()
        self.rings.close()
        self._theirs.close()
