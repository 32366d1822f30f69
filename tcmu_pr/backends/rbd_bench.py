"""The update storm on an RBD image: N processes (gateways) x M PR updates through apply().

Same method as tcmu_pr.bench_store (the file store's bench), so the figures compare: each
process is its own nexus and issues REGISTER AND IGNORE EXISTING KEY with a counter key, so
every command is a real change; the final generation must equal the number of GOOD answers.
The unguarded control writes with a plain setxattr (no cmpxattr) and shows the lost updates.

Processes are spawned, not forked: a process that already runs librados threads must not fork
a child that starts librados again.  The storm itself is bench_store.run_storm.
"""

from __future__ import annotations

from functools import partial

from tcmu_pr.bench_store import BenchResult, run_storm


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
    from tcmu_pr.backends.rbd import PR_XATTR, RbdPRSlot

    with RbdPRSlot.open(pool, image, conf=conf) as slot:
        slot.ioctx.setxattr(slot.oid, PR_XATTR, b"")  # empty = never written
    factory = partial(RbdPRSlot.open, pool, image, conf=conf)
    return run_storm(
        factory, procs=procs, updates=updates, guarded=guarded, start_method="spawn"
    )
