"""Run as a script by the peer-fault tests: one gateway in a process of its own.

A whole daemon (tcmu_pr.daemon.main.Daemon) with its kernel played in-process (netlink peer,
ring simulator) serves one device of the LU at ``--store`` for ``--nexus``.  Once it serves,
it prints ``READY <pid>`` and then writes block 7 from that nexus every ``--period`` seconds,
the payload naming a counter, printing each answer: ``W <counter> <status> <key/asc/ascq>``.
The parent freezes, kills and resumes it, and reads what it answered and wrote.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from daemon_support import DaemonRig, run_cmd, write_topology
from ring_support import rw10

from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.main import setup_logging

BLOCK = 512
LBA = 7


def payload(counter: int) -> bytes:
    return f"gateway-child write {counter:012d}".encode().ljust(BLOCK, b".")


def counter_of(block: bytes) -> int | None:
    """The counter a block written by a child names (None: not a child's write)."""
    text = block[: len(payload(0))].rstrip(b".").decode(errors="replace")
    head, _, number = text.rpartition(" ")
    return int(number) if head == "gateway-child write" and number.isdigit() else None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--scratch", required=True, type=Path)
    p.add_argument("--nexus", required=True)
    p.add_argument("--ack-timeout-ms", type=int, default=1000)
    p.add_argument("--ceph-conf", default="")
    p.add_argument("--period", type=float, default=0.02)
    args = p.parse_args()
    spec = StoreSpec.parse(args.store)
    topology = args.scratch / f"topology-{os.getpid()}.json"
    write_topology(topology, {"user_1/gwdev": {"store": str(spec), "nexus": args.nexus,
                                               "rtpi": 2}})  # fmt: skip
    cfg = DaemonConfig(topology=topology, dbus=False, ring="native", ring_poll_ms=50,
                       ack_timeout_ms=args.ack_timeout_ms, ceph_conf=args.ceph_conf,
                       log_level="info")  # fmt: skip
    setup_logging("info")
    # SIGTERM closes the daemon (stores, watches) on the way out, as the real one does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with DaemonRig(cfg) as rig:
        assert rig.peer.add_device(1, f"tcmu-pr/{spec.slashed}", name="gwdev") == 0
        sim = rig.sim("gwdev")
        print(f"READY {os.getpid()}", flush=True)
        counter = 0
        while True:
            counter += 1
            done = run_cmd(sim, rw10(True, LBA, 1), data_out=payload(counter), timeout=120)
            s = done.sense
            print(f"W {counter} {done.status} {s[2] & 0xF:x}/{s[12]:02x}/{s[13]:02x}", flush=True)
            time.sleep(args.period)


if __name__ == "__main__":
    sys.exit(main())
