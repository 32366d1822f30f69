#!/usr/bin/env python3
"""Change-block tracking's cost on the real kernel: fio through ONE tcm_loop path of our
daemon, the same tmpfs image with tracking off and on, in the test VM.

    tests/vm/bench_cbt.py [--seconds 15] [--rounds 2] [--size-mb 256]

One boot; bench.py's image (/dev/shm, fully written), layout (loopback-mpath, backend
ours, 2 paths) and fio case script (QD16, direct, libaio), so IOPS and the daemon's CPU time
per I/O are measured exactly as there. Tracking is switched with ``tcmu-pr cbt enable`` /
``disable`` while no daemon runs; rounds alternate the order. Figures, not a test: QEMU/TCG
on a shared host (±30 % between runs): compare within one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
import layouts
import vmrig

CLI = "python3 -m tcmu_pr"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--cases", default="randwrite4k,randread4k")
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    best: dict[tuple[str, str], bench.Result] = {}
    with vmrig.VM() as vm:
        bench.prepare_image(vm, args.size_mb)
        for r in range(args.rounds):
            for on in ((False, True) if r % 2 else (True, False)):
                # RESET's kill does not wait: enable/disable refuse while the daemon
                # still has the image (EBUSY), so retry until the map is (not) there
                store = f"--store file:{bench.IMAGE}"
                want = "-e" if on else "! -e"
                act = f"{CLI} cbt {'enable' if on else 'disable'} {store} >/dev/null 2>&1"
                switch = (f"for _ in $(seq 100); do [ {want} {bench.IMAGE}.cbt ] && break; "
                          f"{act} || sleep 0.1; done; [ {want} {bench.IMAGE}.cbt ]")
                rc, out = vm.run(f"{layouts.RESET}\n{switch}", env=layouts.GUEST_ENV)
                if rc:
                    raise vmrig.VMError(f"cbt switch failed: {out}")
                for res in bench.run_backend(vm, "ours", cases, args.seconds, 2, args.size_mb):
                    key = ("on" if on else "off", res.case)
                    if key not in best or res.iops > best[key].iops:
                        best[key] = res
    print(f"{'case':<14} {'tracking':<9} {'IOPS':>10} {'CPU us/IO':>10}")
    for case in cases:
        for mode in ("off", "on"):
            res = best[(mode, case)]
            print(f"{case:<14} {mode:<9} {res.iops:>10,.0f} {res.cpu_us or 0:>10.1f}")
        off, on_ = best[("off", case)], best[("on", case)]
        cpu = (on_.cpu_us or 0) / (off.cpu_us or 1) - 1
        print(f"{case:<14} cost: IOPS {(on_.iops / off.iops - 1) * 100:+.1f} %, "
              f"CPU/IO {cpu * 100:+.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
