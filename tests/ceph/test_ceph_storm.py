"""4 gateway processes x 200 PR updates on one RBD image: the guard loses nothing."""

from __future__ import annotations

import pytest

from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.tools.bench_store import run_store_bench

pytestmark = [pytest.mark.ceph, pytest.mark.slow]


def test_guarded_storm_applies_every_update(ceph_conf: str, rbd_image: str) -> None:
    spec = StoreSpec("rbd", pool="rbd", image=rbd_image)  # Ceph config from $CEPH_CONF
    res = run_store_bench(spec, procs=4, updates=200, guarded=True)
    print("\n" + res.summary())
    assert res.other == 0
    assert res.good == 4 * 200
    assert res.lost == 0 and res.generation == res.good
    assert res.keys_ok == 4
    assert res.conflicts > 0  # the processes really raced


def test_unguarded_control_loses_updates(ceph_conf: str, rbd_image: str) -> None:
    spec = StoreSpec("rbd", pool="rbd", image=rbd_image)
    res = run_store_bench(spec, procs=4, updates=100, guarded=False)
    print("\n" + res.summary())
    assert res.good == 4 * 100  # every command was answered GOOD...
    assert res.lost > 0  # ...yet some of them are not in the stored state
