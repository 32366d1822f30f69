"""Run as a script by test_daemon_process.py: a daemon process with one simulated device.

argv: a scratch directory.  The process serves through tcmu_pr.daemon.main.run (signal
handlers included), plays the kernel on a thread (adds one device, runs one command on
it), prints READY, and then waits for the parent's SIGTERM.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from daemon_support import NEXUS_A, DaemonRig, run_cmd, write_topology

from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.main import run, setup_logging


def main() -> int:
    scratch = Path(sys.argv[1])
    image = scratch / "lu0.img"
    image.write_bytes(bytes(1 << 20))
    write_topology(
        scratch / "topology.json",
        {"user_1/lu0_a": {"store": f"file:{image}", "nexus": NEXUS_A, "rtpi": 1}},
    )
    cfg = DaemonConfig(topology=scratch / "topology.json", dbus=False, ring_poll_ms=50)
    setup_logging("info")
    rig = DaemonRig(cfg)

    def kernel() -> None:
        hello = rig.peer.recv()
        assert hello is not None
        assert rig.peer.add_device(1, f"tcmu-pr/file:{image}", name="lu0_a") == 0
        assert run_cmd(rig.sim("lu0_a"), bytes(6)).status == 0
        print("READY", flush=True)

    threading.Thread(target=kernel, daemon=True).start()
    return run(cfg, make=lambda _cfg: rig.daemon)


if __name__ == "__main__":
    sys.exit(main())
