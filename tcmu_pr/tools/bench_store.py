"""``tcmu-pr bench store``: N processes hammer one file store through the apply loop.

Each process is its own I_T nexus (a gateway daemon stand-in) and issues REGISTER AND IGNORE
EXISTING KEY with a counter-valued key, so every command is a real change: the generation must
end at exactly the number of GOOD answers and each nexus's key at its last counter.  The same
run is repeated without the guard (:class:`Unguarded`: a plain read-modify-write through the
same write path) to show what the guard prevents: there the generation falls short, and the
shortfall is the number of lost updates.  Works on either store (``--store rbd:POOL/IMAGE``).

A command that exhausts the retry budget (CHECK CONDITION, PR_UPDATE_CONTENTION) is re-issued,
as an initiator would; it changed nothing, which the final count proves.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tcmu_pr import scsi
from tcmu_pr.backends.base import PRSlot, Store, StoreError
from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.cli import UsageError, command
from tcmu_pr.engine.pr_cdb import REGISTER_AND_IGNORE_EXISTING_KEY, pr_out
from tcmu_pr.pr.nexus import Nexus

CONTENTION_SENSE = scsi.PR_UPDATE_CONTENTION.to_bytes()


def bench_nexus(proc: int) -> Nexus:
    return Nexus.make(
        f"iqn.2026-01.org.example:bench{proc}", "iqn.2003-01.org.linux-iscsi.gw:bench",
        isid=proc + 1, tpgt=1,
    )  # fmt: skip


def bench_key(proc: int, counter: int) -> int:
    return (proc + 1) << 32 | counter


@dataclass(slots=True)
class WorkerResult:
    proc: int
    good: int = 0
    contention: int = 0  # commands answered PR_UPDATE_CONTENTION, re-issued
    other: int = 0  # any other answer: a bug
    attempts: int = 0
    conflicts: int = 0
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class BenchResult:
    guarded: bool
    procs: int
    updates: int
    seconds: float
    generation: int  # final generation (started at 0)
    keys_ok: int  # processes whose registration holds their last key
    workers: list[WorkerResult]

    @property
    def good(self) -> int:
        return sum(w.good for w in self.workers)

    @property
    def lost(self) -> int:
        """Updates answered GOOD that the final state does not show."""
        return self.good - self.generation

    @property
    def conflicts(self) -> int:
        return sum(w.conflicts for w in self.workers)

    @property
    def contention(self) -> int:
        return sum(w.contention for w in self.workers)

    @property
    def other(self) -> int:
        return sum(w.other for w in self.workers)

    def latency(self, q: float) -> float:
        lat = sorted(x for w in self.workers for x in w.latencies)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    def summary(self) -> str:
        rate = self.good / self.seconds if self.seconds else float("inf")
        lat = [x for w in self.workers for x in w.latencies]
        mean = statistics.fmean(lat) if lat else float("nan")
        return (
            f"{'guarded' if self.guarded else 'UNGUARDED (control)':20}"
            f" {self.procs}x{self.updates}: {self.good} GOOD in {self.seconds:.2f} s"
            f" = {rate:.0f} updates/s; generation {self.generation}, lost {self.lost};"
            f" conflicts retried {self.conflicts}, gave up {self.contention};"
            f" latency p50 {self.latency(0.5) * 1e3:.2f} ms p99 {self.latency(0.99) * 1e3:.2f} ms"
            f" mean {mean * 1e3:.2f} ms"
        )


class Unguarded:
    """A slot whose compare-and-swap ignores what the caller read: each write replaces
    whatever is stored, through the very same write path.  The control run's slot only."""

    def __init__(self, slot: PRSlot) -> None:
        self.slot = slot

    def read(self) -> bytes:
        return self.slot.read()

    def compare_and_swap(self, expected: bytes, new: bytes) -> bool:
        while not self.slot.compare_and_swap(self.slot.read(), new):
            pass
        return True


#: Opens the store under test.  Must pickle (a functools.partial of a module-level
#: function), since workers may be spawned.
StoreFactory = Callable[[], Store]


def _worker(factory: StoreFactory, proc: int, updates: int, guarded: bool, start, out) -> None:  # type: ignore[no-untyped-def]
    from tcmu_pr.unit.apply import ApplyStats, apply

    result = WorkerResult(proc)
    stats = ApplyStats()
    nexus = bench_nexus(proc)
    store = factory()
    try:
        slot: PRSlot = store.slot() if guarded else Unguarded(store.slot())
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
        store.close()
        result.attempts, result.conflicts = stats.attempts, stats.conflicts
        out.put(result)


def run_storm(
    factory: StoreFactory,
    *,
    procs: int = 4,
    updates: int = 200,
    guarded: bool = True,
    start_method: str = "fork",
) -> BenchResult:
    """``procs`` processes x ``updates`` updates on the (empty) store ``factory`` opens.

    RBD needs ``start_method="spawn"``: a process already running librados threads must not
    fork a child that starts librados again.
    """
    from tcmu_pr.pr import codec

    ctx = mp.get_context(start_method)
    start = ctx.Barrier(procs + 1)  # the processes really overlap: all start at once
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(factory, p, updates, guarded, start, out))
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
    store = factory()
    try:
        state = codec.decode(store.slot().read())
    finally:
        store.close()
    keys_ok = sum(
        1
        for p in range(procs)
        if (reg := state.registration_of(bench_nexus(p))) is not None
        and reg.key == bench_key(p, updates)
    )
    results.sort(key=lambda r: r.proc)
    return BenchResult(guarded, procs, updates, seconds, state.generation, keys_ok, results)


def _open(spec: StoreSpec) -> Store:
    from tcmu_pr.backends import open_store

    return open_store(spec)


def run_store_bench(
    spec: StoreSpec, *, procs: int = 4, updates: int = 200, guarded: bool = True
) -> BenchResult:
    """One round on ``spec``, whose PR state is reset first (RBD: spawned workers, since a
    process already running librados threads must not fork one that starts librados)."""
    factory = partial(_open, spec)
    store = factory()
    try:
        if spec.is_file:
            from tcmu_pr.backends.file import sidecar_path

            sidecar_path(spec.path).unlink(missing_ok=True)
        else:
            from tcmu_pr.backends.rbd import PR_XATTR

            slot = store.slot()
            slot.ioctx.setxattr(slot.oid, PR_XATTR, b"")  # type: ignore[attr-defined]
    finally:
        store.close()
    method = "fork" if spec.is_file else "spawn"
    return run_storm(factory, procs=procs, updates=updates, guarded=guarded, start_method=method)


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--procs", type=int, default=4, help="writer processes (default 4)")
    p.add_argument("--updates", type=int, default=200, help="updates per process (default 200)")
    p.add_argument("--dir", type=Path, help="where the image goes (default: a temp dir)")
    p.add_argument(
        "--store",
        metavar="SPEC",
        help="storm this store instead of a fresh image file: file:PATH or rbd:POOL/IMAGE "
        "(its PR state is reset; Ceph config from $CEPH_CONF)",
    )


@command("bench", "store", help="concurrent PR updates on one store", configure=_configure)
def _bench_store(args: argparse.Namespace) -> int:
    if not 1 <= args.procs <= 64 or not 1 <= args.updates <= 1_000_000:
        raise UsageError("--procs must be 1..64 and --updates 1..1000000")
    with tempfile.TemporaryDirectory(prefix="tcmu-pr-bench-", dir=args.dir) as tmp:
        if args.store:
            try:
                spec = StoreSpec.parse(args.store, base=Path.cwd())
            except StoreSpecError as err:
                raise UsageError(str(err)) from err
            print(f"store {spec}; {args.procs} processes x {args.updates} updates each")
        else:
            image = Path(tmp) / "bench.img"
            image.write_bytes(b"")
            spec = StoreSpec.file(image)
            print(f"file store in {tmp}; {args.procs} processes x {args.updates} updates each")
        ok = True
        for guarded in (True, False):
            try:
                res = run_store_bench(spec, procs=args.procs, updates=args.updates,
                                      guarded=guarded)  # fmt: skip
            except StoreError as err:
                raise UsageError(f"store {spec}: {err}") from err
            print(res.summary())
            if guarded:
                ok = res.lost == 0 and res.other == 0 and res.keys_ok == args.procs
    print("guarded run lost nothing" if ok else "GUARDED RUN LOST UPDATES")
    return 0 if ok else 1
