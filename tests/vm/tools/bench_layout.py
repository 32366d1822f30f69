"""Devices per LU and `tcmu-pr layout apply` time, per-nexus vs nexus mode (run as root in the
test VM: ``tests/vm/bench-layout`` on the host).

For each size (initiators x iSCSI gateways) and mode it lays one LU out from nothing, with
our daemon serving the devices as in production, and prints: the devices the LU got (counted
in configfs), the wall time of ``tcmu-pr layout apply`` (a fresh process, as an administrator
runs it), a re-apply that changes nothing, and ``destroy``.  On a stock target_core_user the
nexus mode is forced (``--mode nexus``): the layout is the same, only the attribute write is
skipped with a warning, so its timing stands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATE = Path("/run/tcmu-pr")
IMAGE = Path("/var/lib/tcmu-pr/bench-layout.img")
SIZES = ((2, 2), (8, 4))
MODES = ("per-nexus", "nexus")
TCMU_PR = [sys.executable, "-m", "tcmu_pr"]


def spec(initiators: int, gateways: int) -> dict:
    return {
        "lu": "bench", "store": f"file:{IMAGE}", "fabric": "iscsi", "size": 64 << 20,
        "targets": [{"wwn": f"iqn.2003-01.org.linux-iscsi.tcmu-pr:bench{g}",
                     "portals": [f"127.0.0.1:{3270 + g}"]} for g in range(1, gateways + 1)],
        "initiators": [f"iqn.1994-05.org.tcmu-pr:bench{c}" for c in range(1, initiators + 1)],
    }


def run(*args: str) -> tuple[float, str]:
    t0 = time.monotonic()
    done = subprocess.run([*TCMU_PR, *args], capture_output=True, text=True)
    took = time.monotonic() - t0
    if done.returncode != 0:
        raise SystemExit(f"tcmu-pr {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    return took, done.stdout


def start_daemon() -> subprocess.Popen:
    subprocess.run(["modprobe", "target_core_user"], check=True)
    subprocess.run(["modprobe", "iscsi_target_mod"], check=True)
    log = STATE / "bench-daemon.log"
    daemon = subprocess.Popen([*TCMU_PR, "daemon", "--no-dbus"], stdout=log.open("w"),
                              stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "daemon ready" not in log.read_text():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"daemon not ready:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return daemon


def devices_of_lu() -> int:
    import rtslib_fb

    return sum(1 for so in rtslib_fb.RTSRoot().storage_objects
               if so.plugin == "user" and (so.name == "bench" or so.name.startswith("bench.")))


def main() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    with IMAGE.open("ab") as f:
        f.truncate(64 << 20)
    daemon = start_daemon()
    rows = []
    try:
        for initiators, gateways in SIZES:
            path = STATE / f"bench-layout-{initiators}x{gateways}.json"
            path.write_text(json.dumps(spec(initiators, gateways)))
            for mode in MODES:
                apply_s, out = run("layout", "apply", str(path), "--mode", mode)
                count = devices_of_lu()
                again_s, again = run("layout", "apply", str(path), "--mode", mode)
                if again != out:
                    raise SystemExit(f"re-apply changed the layout:\n{out}\n---\n{again}")
                destroy_s, _ = run("layout", "destroy", str(path))
                if devices_of_lu():
                    raise SystemExit("destroy left devices behind")
                rows.append((f"{initiators}x{gateways}", mode, count, apply_s, again_s,
                             destroy_s))
    finally:
        daemon.terminate()
        daemon.wait(30)
    from tcmu_pr.lio.converge import LIOLayout

    kernel = ("patched target_core_user (nexus_handles)" if LIOLayout().kernel_has_nexus_handles()
              else "stock target_core_user: nexus mode forced, no nexus_handles")
    print(f"# {os.uname().release}, {kernel}")
    print(f"{'initiators x gateways':22} {'mode':10} {'devices/LU':>10} {'apply s':>8} "
          f"{'re-apply s':>10} {'destroy s':>9}")
    for size, mode, count, apply_s, again_s, destroy_s in rows:
        print(f"{size:22} {mode:10} {count:>10} {apply_s:>8.2f} {again_s:>10.2f} "
              f"{destroy_s:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
