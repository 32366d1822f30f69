#!/usr/bin/env python3
"""Change-block tracking's cost on the real kernel: the same tmpfs image with tracking off
and on, in the test VM, through ONE tcm_loop path of our daemon or through a ublk device.

    tests/vm/bench_cbt.py [--path tcmu|ublk] [--seconds 15] [--rounds 2] [--size-mb 256]

One boot. ``tcmu`` (default): bench.py's image (/dev/shm, fully written), layout
(loopback-mpath, backend ours, 2 paths) and fio case script (QD16, direct, libaio), so IOPS
and the daemon's CPU time per I/O are measured exactly as there. ``ublk``: bench_ublk.py's
image (/dev/shm, random data), ``tcmu-pr ublk add`` (depth 32, one queue) per case and its
fio script (QD16, direct, libaio; CPU per I/O is the ublk server's). Tracking is switched
with ``tcmu-pr cbt enable`` / ``disable`` while nothing serves the image; rounds alternate
the order, and besides the best round per mode the median of the rounds' on/off ratios is
printed (each ratio pairs two runs minutes apart at most, so the rig's drift cancels).
Figures, not a test: QEMU/TCG on a shared host (±30 % between runs): compare within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench
import bench_ublk
import layouts
import vmrig

CLI = "python3 -m tcmu_pr"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--cases", default="randwrite4k,randread4k")
    p.add_argument("--path", choices=("tcmu", "ublk"), default="tcmu",
                   help="through a tcm_loop path of the daemon, or a ublk device")  # fmt: skip
    args = p.parse_args(argv)
    cases = args.cases.split(",")
    image = bench.IMAGE if args.path == "tcmu" else bench_ublk.IMAGE
    #: (tracking, case) -> the best round's (IOPS, server CPU us per I/O)
    best: dict[tuple[str, str], tuple[float, float]] = {}
    #: per round, (tracking, case) -> (IOPS, CPU us per I/O): on/off paired within a round
    per_round: list[dict[tuple[str, str], tuple[float, float]]] = []
    with vmrig.VM() as vm:
        if args.path == "tcmu":
            bench.prepare_image(vm, args.size_mb)
        else:
            vm.run(layouts.RESET + "modprobe ublk_drv", timeout=120)
            bench_ublk.prepare(vm, "file", args.size_mb)
        for r in range(args.rounds):
            per_round.append({})
            for on in ((False, True) if r % 2 else (True, False)):
                # RESET's kill does not wait: enable/disable refuse while the daemon
                # still has the image (EBUSY), so retry until the map is (not) there
                store = f"--store file:{image}"
                want = "-e" if on else "! -e"
                act = f"{CLI} cbt {'enable' if on else 'disable'} {store} >/dev/null 2>&1"
                switch = (f"for _ in $(seq 100); do [ {want} {image}.cbt ] && break; "
                          f"{act} || sleep 0.1; done; [ {want} {image}.cbt ]")
                rc, out = vm.run(f"{layouts.RESET}\n{switch}", env=layouts.GUEST_ENV)
                if rc:
                    raise vmrig.VMError(f"cbt switch failed: {out}")
                for case, iops, cpu_us in _measure(vm, args.path, cases, args.seconds,
                                                   args.size_mb):  # fmt: skip
                    key = ("on" if on else "off", case)
                    print(f"bench-cbt: round {r} tracking {key[0]} {case}: {iops:,.0f} IOPS, "
                          f"{cpu_us:.1f} us CPU/IO", file=sys.stderr)  # fmt: skip
                    per_round[-1][key] = (iops, cpu_us)
                    if key not in best or iops > best[key][0]:
                        best[key] = (iops, cpu_us)
    print(f"path {args.path}, best of {args.rounds} rounds of {args.seconds} s")
    print(f"{'case':<14} {'tracking':<9} {'IOPS':>10} {'CPU us/IO':>10}")
    for case in cases:
        for mode in ("off", "on"):
            iops, cpu_us = best[(mode, case)]
            print(f"{case:<14} {mode:<9} {iops:>10,.0f} {cpu_us:>10.1f}")
        (off_iops, off_cpu), (on_iops, on_cpu) = best[("off", case)], best[("on", case)]
        print(f"{case:<14} cost: IOPS {(on_iops / off_iops - 1) * 100:+.1f} %, "
              f"CPU/IO {(on_cpu / (off_cpu or 1) - 1) * 100:+.1f} %")
        # Drift between rounds exceeds the cost: pair on with off inside each round.
        iops_r = [m[("on", case)][0] / m[("off", case)][0] for m in per_round]
        cpu_r = [m[("on", case)][1] / (m[("off", case)][1] or 1) for m in per_round]
        print(f"{case:<14} median of {len(per_round)} paired rounds: IOPS "
              f"{(statistics.median(iops_r) - 1) * 100:+.1f} %, CPU/IO "
              f"{(statistics.median(cpu_r) - 1) * 100:+.1f} % (rounds: IOPS "
              + " ".join(f"{(x - 1) * 100:+.0f}" for x in iops_r) + " %)")
    return 0


def _measure(vm: vmrig.VM, path: str, cases: list[str], seconds: int,
             size_mb: int) -> list[tuple[str, float, float]]:  # fmt: skip
    """One round's (case, IOPS, server CPU us per I/O): the daemon's, or the ublk server's."""
    if path == "tcmu":
        return [(res.case, res.iops, res.cpu_us or 0.0)
                for res in bench.run_backend(vm, "ours", cases, seconds, 2, size_mb)]
    return [(res.case, res.iops, res.server_us or 0.0)
            for res in bench_ublk.run(vm, "file", "ublk", cases, seconds, 1, size_mb, 32)]


if __name__ == "__main__":
    sys.exit(main())
