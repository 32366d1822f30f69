"""``tcmu-pr bench pr``: what one PR OUT costs, by registration count, on one store.

Three ways of running the same REGISTER AND IGNORE EXISTING KEY, measured side by side in one
run on the same blob:

- ``apply`` — the compare-and-swap loop with the LU's decode cache (what a gateway runs);
- ``apply, no cache`` — the same loop decoding every blob it reads (the path before the cache);
- ``confirmed`` — the whole rule: the change through a LogicalUnit, confirmed by ``--peers``
  other gateways (each a participant in a process of its own) before it answers.

The blob holds N-1 registrations of other nexuses plus the one that changes its key, so each
change rewrites (and a gateway re-reads) a blob of N registrations.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.cli import UsageError, command

DEFAULT_COUNTS = (10, 100, 1000, 2048)


def _nexus(i: int):  # type: ignore[no-untyped-def]
    from tcmu_pr.pr.nexus import Nexus

    return Nexus.make(f"iqn.2026-01.org.example:host{i:05d}", "iqn.2003-01.org.gw:bench",
                      isid=i + 1, tpgt=1)  # fmt: skip


def _peer(spec: StoreSpec, ready, stop) -> None:  # type: ignore[no-untyped-def]
    """A gateway that only serves: it applies and acknowledges every change."""
    from tcmu_pr.backends import open_store
    from tcmu_pr.unit.lu import LogicalUnit

    store = open_store(spec)
    lu = LogicalUnit(store)
    ready.set()
    stop.wait()
    lu.close()
    store.close()


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


def _time(run: Callable[[], object], changes: int) -> list[float]:
    out = []
    for _ in range(changes):
        t0 = time.perf_counter()
        run()
        out.append(time.perf_counter() - t0)
    return out


def _row(lu, me, keys, changes: int, peers: int) -> str:  # type: ignore[no-untyped-def]
    """One registration count: the three ways, side by side."""
    from tcmu_pr import scsi
    from tcmu_pr.engine.pr_cdb import REGISTER_AND_IGNORE_EXISTING_KEY, pr_out
    from tcmu_pr.unit.apply import BlobCache, apply

    def command() -> tuple[bytes, bytes]:
        return pr_out(REGISTER_AND_IGNORE_EXISTING_KEY, sa_key=next(keys))

    def applied(cache: BlobCache | None) -> None:
        assert apply(lu.slot, me, *command(), cache=cache).status == scsi.GOOD

    def confirmed() -> None:
        out = lu.execute(me, *command())
        assert out.status == scsi.GOOD, out
        assert lu.last_confirmation is not None and lu.last_confirmation.acked == peers

    cache = BlobCache()
    cells = [f"{_percentiles(samples)[0]:7.2f} /{_percentiles(samples)[1]:7.2f}"
             for samples in (_time(lambda: applied(cache), changes),
                             _time(lambda: applied(None), changes),
                             _time(confirmed, changes))]  # fmt: skip
    return "  ".join(cells)


def bench(spec: StoreSpec, counts: tuple[int, ...], changes: int, peers: int) -> list[str]:
    """One table row per registration count (the lines printed)."""
    from tcmu_pr.backends import open_store
    from tcmu_pr.pr import codec
    from tcmu_pr.pr.state import PRState, Registration
    from tcmu_pr.unit.lu import LogicalUnit

    ctx = mp.get_context("spawn")  # librados must not be forked into a child
    stop = ctx.Event()
    procs, rows = [], []
    store = open_store(spec)
    try:
        for _ in range(peers):
            ready = ctx.Event()
            proc = ctx.Process(target=_peer, args=(spec, ready, stop), daemon=True)
            proc.start()
            procs.append(proc)
            if not ready.wait(120):
                raise RuntimeError("a peer gateway did not start")
        lu = LogicalUnit(store, serve=False)
        keys = iter(range(1, 1 << 40))
        for n in counts:
            others = tuple(Registration(i + 1, _nexus(i)) for i in range(n - 1))
            lu.slot.compare_and_swap(lu.slot.read(), codec.encode(PRState(registrations=others)))
            rows.append(f"{n:5d}  " + _row(lu, _nexus(n), keys, changes, peers))
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
        store.close()
    return rows


def _counts(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from err
    if not values or not all(1 <= v <= 2048 for v in values):
        raise argparse.ArgumentTypeError("registration counts must be 1..2048")
    return values


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="SPEC",
                   help="file:PATH or rbd:POOL/IMAGE (its PR state is overwritten); default: "
                        "a fresh image file")  # fmt: skip
    p.add_argument("--registrations", type=_counts, default=DEFAULT_COUNTS, metavar="N,N,...",
                   help="registration counts (default 10,100,1000,2048)")
    p.add_argument("--changes", type=int, default=100, help="changes per cell (default 100)")
    p.add_argument("--peers", type=int, default=1,
                   help="other gateways confirming each change (default 1)")  # fmt: skip


@command("bench", "pr", help="PR OUT cost by registration count, with and without the decode "
         "cache, and confirmed by other gateways", configure=_configure)  # fmt: skip
def _bench_pr(args: argparse.Namespace) -> int:
    if not 1 <= args.changes <= 100_000 or not 0 <= args.peers <= 16:
        raise UsageError("--changes must be 1..100000 and --peers 0..16")
    with tempfile.TemporaryDirectory(prefix="tcmu-pr-bench-") as tmp:
        if args.store:
            try:
                spec = StoreSpec.parse(args.store, base=Path.cwd())
            except StoreSpecError as err:
                raise UsageError(str(err)) from err
        else:
            image = Path(tmp) / "bench.img"
            image.write_bytes(bytes(1 << 20))
            spec = StoreSpec.file(image)
        print(f"store {spec}; {args.changes} changes per cell; {args.peers} peer gateway(s)")
        print("PR OUT latency, p50 / p99 in ms:")
        print("  regs          apply   apply, no cache    confirmed")
        for row in bench(spec, args.registrations, args.changes, args.peers):
            print("  " + row)
    return 0
