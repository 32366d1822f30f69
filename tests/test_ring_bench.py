"""``tcmu-pr bench ring`` runs end to end (tiny and short: figures are not checked here)."""

from __future__ import annotations

from tcmu_pr.cli import main
from tcmu_pr.tools.bench_ring import measure, report, reservation_verdict


def test_reservation_verdict_is_computed_and_allows_the_holder():
    assert reservation_verdict() == 3


def test_measure_and_report():
    best = measure(size_mb=2, seconds=0.1, batch=16, rounds=1)
    variants = ("native", "native+reservation", "native+watch", "watch off", "python")
    assert set(best) == {f"{k} {op}" for k in variants for op in ("read", "write")} | {
        "changes", "announcements"}  # fmt: skip
    assert all(v > 0 for v in best.values())
    # The watched rounds were watched for real: another gateway's changes applied here.
    assert best["announcements"] >= best["changes"] >= 1
    lines = report(best)
    assert lines[-1].startswith("ratio native/python: ")


def test_cli_subcommand(capsys):
    assert main(["bench", "ring", "--size-mb", "1", "--seconds", "0.1", "--batch", "8",
                 "--rounds", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("ratio native/python: ") and len(out) == 14
    assert main(["bench", "ring", "--batch", "0"]) == 2
