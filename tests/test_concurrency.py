"""Four writer processes, one file store: the compare-and-swap loses nothing; without it, it does.

This is the proof the project is built on, run through the real pieces: FileSlot, the apply
loop, the codec and the engine, in separate processes that start together on a barrier.  Each
process registers its own nexus with a counter-valued key (REGISTER AND IGNORE EXISTING KEY),
so each GOOD must show up as one generation step in the final blob.
"""

from __future__ import annotations

from pathlib import Path

from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.tools.bench_store import run_store_bench

PROCS, UPDATES = 4, 200


def test_guarded_updates_all_land_and_the_unguarded_control_loses_some(tmp_path: Path) -> None:
    image = tmp_path / "bench.img"
    image.write_bytes(b"")
    spec = StoreSpec.file(image)
    guarded = run_store_bench(spec, procs=PROCS, updates=UPDATES, guarded=True)
    assert guarded.other == 0, "every command is a valid REGISTER AND IGNORE EXISTING KEY"
    assert guarded.good == PROCS * UPDATES
    assert guarded.generation == PROCS * UPDATES, f"lost {guarded.lost} updates"
    assert guarded.keys_ok == PROCS, "each nexus ends with its last key"
    # The writers really overlapped: races happened and were re-applied, not avoided.
    assert guarded.conflicts > 0

    control = run_store_bench(spec, procs=PROCS, updates=UPDATES, guarded=False)
    assert control.good == PROCS * UPDATES
    # Same workload, compare disabled: updates answered GOOD vanish.  If this ever passes with
    # 0 lost, the test above could not have failed either.
    assert control.lost > 0
