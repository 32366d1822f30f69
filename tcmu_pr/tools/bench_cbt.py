"""``tcmu-pr bench cbt``: the native ring loop's 4 KiB random writes (and reads) with
change-block tracking off and on, side by side: commands/s and CPU time per command.

The rig is ``tcmu-pr bench ring``'s (simulated kernel side, precomputed batches, image on
tmpfs); one NativeRing serves every round and tracking is switched between rounds, which
are interleaved, best round kept. The map is the real one (IMAGE.cbt beside the image,
shared mapping, 64 KiB blocks). With tracking on a write costs one enter/leave of the
in-flight count (two atomic adds) and a byte compare/store in the map.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from tcmu_pr.cli import UsageError, command
from tcmu_pr.tools.bench_ring import Rig, _make_ring


def _round(rig: Rig, ring, write: bool, seconds: float) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(commands/s, CPU microseconds per command) of one round; the loop runs in this
    thread, so the thread's CPU time is the loop's plus the rig's small share."""
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    cps = rig.run(ring, write, seconds)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return cps, cpu / (cps * wall) * 1e6


Best = dict[str, tuple[float, float]]


def measure(size_mb: int, seconds: float, batch: int, rounds: int) -> Best:
    """Best round of each of "off read", "off write", "on read", "on write"."""
    from tcmu_pr.cbt import mapfile
    from tcmu_pr.cbt.mapfile import CbtMap

    num_blocks = size_mb * 1024 * 1024 // 4096
    rig = Rig.build(batch, num_blocks, seed=3)
    best: Best = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="tcmu-pr-bench-cbt-") as d:
        image = os.path.join(d, "lu.img")
        fd = os.open(image, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            chunk = os.urandom(1 << 20)
            for i in range(size_mb):
                os.pwrite(fd, chunk, i << 20)
            mapfile.enable(image)
            cbt = CbtMap.open(image)
            ring = _make_ring("native", rig, fd, size_mb << 20)
            try:
                per = seconds / rounds
                rig.run(ring, True, min(per, 0.2))  # warm up
                for r in range(rounds):
                    for op in ("read", "write"):
                        for on in (False, True) if r % 2 else (True, False):
                            ring.track(cbt if on else None)  # type: ignore[attr-defined]
                            got = _round(rig, ring, op == "write", per)
                            key = f"{'on' if on else 'off'} {op}"
                            if got[0] > best.get(key, (0.0, 0.0))[0]:
                                best[key] = got
                ring.track(None)  # type: ignore[attr-defined]
                if not any(cbt.map_bytes()):
                    raise RuntimeError("tracking on marked nothing")
            finally:
                ring.close()
                cbt.close()
                rig.sim.close()
        finally:
            os.close(fd)
    return best


def report(best: Best) -> list[str]:
    lines = [f"{'':<20} {'cmds/s':>12} {'CPU us/cmd':>11}"]
    for key in ("off read", "on read", "off write", "on write"):
        cps, us = best[key]
        lines.append(f"tracking {key:<11} {cps:>12,.0f} {us:>11.2f}")
    for op in ("read", "write"):
        delta = best[f"on {op}"][0] / best[f"off {op}"][0] - 1
        cpu = best[f"on {op}"][1] / best[f"off {op}"][1] - 1
        lines.append(
            f"tracking cost, {op:<5}: IOPS {delta * 100:+.1f} %, CPU/cmd {cpu * 100:+.1f} %"
        )
    return lines


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size-mb", type=int, default=64, help="image size (default 64)")
    p.add_argument("--seconds", type=float, default=4.0, help="time per variant (default 4)")
    p.add_argument("--batch", type=int, default=16, help="commands per batch (default 16)")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")


@command("bench", "cbt", help="native ring loop with tracking off vs on", configure=_configure)
def run(args: argparse.Namespace) -> int:
    if args.size_mb < 1 or args.batch < 1 or args.batch > 4096 or args.rounds < 1:
        raise UsageError("--size-mb and --rounds must be >= 1, --batch 1..4096")
    if args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    for line in report(measure(args.size_mb, args.seconds, args.batch, args.rounds)):
        print(line, flush=True)
    return 0
