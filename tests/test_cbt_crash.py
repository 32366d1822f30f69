"""kill -9 of a server writing through the data path: at the next open every block written
on disk is in the map, or the generation changed (docs/cbt.md's crash rule).

The record of what was written is the image itself (it starts as zeros and every write
puts a nonzero pattern), independent of the map and of the writer's bookkeeping.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcmu_pr.cbt import mapfile
from tcmu_pr.cbt.mapfile import CbtMap

HERE = Path(__file__).parent
SIZE = 64 << 20
TRACK = 4096
RUNS = 10


def _written_blocks(image: Path) -> set[int]:
    raw = image.read_bytes()
    zero = bytes(TRACK)
    return {i for i in range(SIZE // TRACK) if raw[i * TRACK : (i + 1) * TRACK] != zero}


@pytest.mark.parametrize("kind", ["python", "native"])
def test_kill_9_mid_write_never_loses_a_mark(kind, tmp_path):
    rnd = random.Random(kind)
    totals = {"runs": 0, "written": 0, "missing": 0, "new_generation": 0}
    for run in range(RUNS):
        image = tmp_path / f"{kind}-{run}.img"
        image.touch()
        os.truncate(image, SIZE)
        mapfile.enable(str(image), TRACK)
        with CbtMap.open(str(image), writer=False) as m:
            gen = m.generation_id
        child = subprocess.Popen(
            [sys.executable, str(HERE / "cbt_writer_child.py"), kind, str(image), str(run)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0.0, 0.05))  # mid-run, somewhere
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        with CbtMap.open(str(image)) as m:
            written = _written_blocks(image)
            marked = {i for i, v in enumerate(m.map_bytes()) if v}
            renewed = m.generation_id != gen
        assert written, "the writer wrote nothing before it was killed"
        totals["runs"] += 1
        totals["written"] += len(written)
        totals["new_generation"] += renewed
        if not renewed:
            totals["missing"] += len(written - marked)
    print(f"\ncbt crash test ({kind}): {totals}")
    assert totals["missing"] == 0
