"""The update storm on an RBD image: N processes (gateways) x M PR updates through apply().

Same method as tcmu_pr.bench_store (the file store's bench), so the figures compare: each
process is its own nexus and issues REGISTER AND IGNORE EXISTING KEY with a counter key, so
every command is a real change; the final generation must equal the number of GOOD answers.
The unguarded control writes with a plain setxattr (no cmpxattr) and shows the lost updates.

Processes are spawned, not forked: a process that already runs librados threads must not fork
a child that starts librados again.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

from tcmu_pr import scsi
from tcmu_pr.bench_store import BenchResult, WorkerResult, bench_key, bench_nexus
from tcmu_pr.pr_cdb import REGISTER_AND_IGNORE_EXISTING_KEY, pr_out

CONTENTION_SENSE = scsi.PR_UPDATE_CONTENTION.to_bytes()


def _worker(
    conf: str | None, pool: str, image: str, proc: int, updates: int, guarded: bool,
    start: Any, out: Any,
) -> None:  # fmt: skip
    from tcmu_pr.apply import ApplyStats, apply
    from tcmu_pr.backends.rbd import RbdPRSlot

    result = WorkerResult(proc)
    stats = ApplyStats()
    nexus = bench_nexus(proc)
    try:
        with RbdPRSlot.open(pool, image, conf=conf, guard=guarded) as slot:
            start.wait()
            counter = 1
            while counter <= updates:
                cdb, params = pr_out(
                    REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=bench_key(proc, counter)
                )
                t0 = time.perf_counter()
                outcome = apply(slot, nexus, cdb, params, stats=stats)
                result.latencies.append(time.perf_counter() - t0)
                if outcome.status == scsi.GOOD:
                    result.good += 1
                    counter += 1
                elif outcome.sense == CONTENTION_SENSE:
                    result.contention += 1
                else:
                    result.other += 1
                    counter += 1
    finally:
        result.attempts, result.conflicts = stats.attempts, stats.conflicts
        out.put(result)


def run_rbd_storm(
    pool: str,
    image: str,
    *,
    conf: str | None = None,
    procs: int = 4,
    updates: int = 200,
    guarded: bool = True,
) -> BenchResult:
    """Run one round on ``pool/image`` (its ``pr_info`` is reset first) and check the result."""
    from tcmu_pr import codec
    from tcmu_pr.backends.rbd import PR_XATTR, RbdPRSlot

    with RbdPRSlot.open(pool, image, conf=conf) as slot:
        slot.ioctx.setxattr(slot.oid, PR_XATTR, b"")  # empty = never written
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(procs + 1)
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(conf, pool, image, p, updates, guarded, start, out))
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    try:
        start.wait(timeout=120)
        t0 = time.perf_counter()
        results = [out.get(timeout=600) for _ in workers]
        seconds = time.perf_counter() - t0
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    with RbdPRSlot.open(pool, image, conf=conf) as slot:
        state = codec.decode(slot.read())
    keys_ok = sum(
        1
        for p in range(procs)
        if (reg := state.registration_of(bench_nexus(p))) is not None
        and reg.key == bench_key(p, updates)
    )
    results.sort(key=lambda r: r.proc)
    return BenchResult(guarded, procs, updates, seconds, state.generation, keys_ok, results)
