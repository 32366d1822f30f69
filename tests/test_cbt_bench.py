"""``tcmu-pr bench cbt`` runs end to end (tiny and short: figures are not checked here)."""

from __future__ import annotations

from tcmu_pr.cli import main


def test_bench_cbt_prints_both_sides(capsys):
    assert main(["bench", "cbt", "--size-mb", "2", "--seconds", "0.2", "--batch", "8",
                 "--rounds", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 7
    assert out[-1].startswith("tracking cost, write: IOPS ")
    assert main(["bench", "cbt", "--batch", "0"]) == 2
