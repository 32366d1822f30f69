"""The data-path benchmark script (tests/vm/bench.py) runs end to end: tiny durations, every
backend, and a table with the ratios.  Checks the script, not the figures."""

from __future__ import annotations

import bench
import pytest

pytestmark = pytest.mark.vm


def test_bench_runs_every_backend_and_prints_ratios(vm) -> None:
    backends = bench.STORE_BACKENDS["file"]
    results = bench.bench(vm, backends, ["randread4k", "seqwrite128k"],
                          seconds=1, ramp=0, size_mb=48)  # fmt: skip
    assert {(r.backend, r.case) for r in results} == {
        (b, c) for b in backends for c in ("randread4k", "seqwrite128k")
    }
    assert all(r.iops > 0 and r.mb_s > 0 for r in results), results
    text = bench.table(results)
    lines = text.splitlines()
    assert "ours/tcmu-runner" in lines[0] and "ours/fileio" in lines[0]
    assert lines[1].startswith("randread4k") and lines[1].endswith("x")
    # 128 KiB blocks: MB/s is IOPS x 0.131
    seq = next(r for r in results if r.case == "seqwrite128k")
    assert seq.mb_s == pytest.approx(seq.iops * 131072 / 1e6, rel=0.05)


def test_bench_on_rbd_runs_ours_tcmu_runner_and_krbd(vm) -> None:
    """The rbd store: our daemon, tcmu-runner's rbd handler and LIO iblock on krbd, on one
    image of the guest's cluster; CPU ratios against tcmu-runner, none for the kernel."""
    backends = bench.STORE_BACKENDS["rbd"]
    results = bench.bench(vm, backends, ["randwrite4k"], seconds=1, ramp=0, size_mb=48,
                          store="rbd")  # fmt: skip
    assert [r.backend for r in results] == backends
    assert all(r.iops > 0 for r in results), results
    assert [r.cpu_us is None for r in results] == [False, False, True], results
    head = bench.table(results).splitlines()[0]
    assert "cpu ours/tcmu-runner" in head and "ours/krbd" in head and "cpu ours/krbd" not in head
