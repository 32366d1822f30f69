"""Change-block tracking in the ublk queue loop, without ublk_drv: the loop's tracking step
(ublk_cbt_begin on a decoded descriptor, native/ublk.c) against a real map file, and the
server's handling of a punted write (tcmu_pr/ublk/tracking.py) against a real snapshot.

The loop's plumbing around them (the punt pipe, the tag handed back, the leave on the
answer) needs the kernel: tests/vm/test_ublk.py::test_tracked_file_store_map_and_snapshot.
"""

from __future__ import annotations

import io

import pytest

from tcmu_pr.backends import open_store
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.cbt import mapfile, snapshot
from tcmu_pr.ublk.native import load
from tcmu_pr.ublk.tracking import Tracking

MiB = 1 << 20
TRACK = 64 << 10
SECTORS_PER_TRACK = TRACK // 512


@pytest.fixture
def tracked(tmp_path):
    """A 4 MiB tracked image opened as the ublk server opens it (FileStore.data())."""
    image = tmp_path / "lu.img"
    image.write_bytes(bytes(4 * MiB))
    mapfile.enable(str(image), TRACK)
    store = open_store(StoreSpec.file(image))
    backend = store.data()
    assert backend.cbt is not None
    tracking = Tracking(load(), backend.cbt, backend.read, 2, 8)
    yield image, backend, tracking
    tracking.close()
    store.close()


def begin(tracking: Tracking, op: int, sector: int, nr: int) -> int:
    """The loop's step for one descriptor, on queue 1's view of the map."""
    mod = load()
    d = mod.ffi.new("struct ublk_io_desc *")
    d.op_flags, d.start_sector, d.nr_sectors = op, sector, nr
    req = mod.ffi.new("struct ublk_req *")
    assert mod.lib.ublk_decode(d, 4 * MiB, 512, 512 << 10, req) == 0
    return int(mod.lib.ublk_cbt_begin(tracking.maps[1], req))


def marked(backend) -> list[int]:
    return [b for b, n in enumerate(backend.cbt.map_bytes()) if n]


def test_writes_discards_and_write_zeroes_mark_their_blocks_reads_and_flushes_do_not(tracked):
    _image, backend, tracking = tracked
    lib = load().lib
    ops = [
        (lib.UBLK_OP_WRITE, 3 * SECTORS_PER_TRACK + 16, 8),  # 4 KiB inside block 3
        (lib.UBLK_OP_DISCARD, 10 * SECTORS_PER_TRACK + 64, 256),  # 128 KiB: blocks 10-12
        (lib.UBLK_OP_WRITE_ZEROES, 20 * SECTORS_PER_TRACK, SECTORS_PER_TRACK),  # block 20
        (lib.UBLK_OP_WRITE, 64 * SECTORS_PER_TRACK - 1, 1),  # the last sector: block 63
    ]
    for op, sector, nr in ops:
        assert begin(tracking, op, sector, nr) == 0
        assert backend.cbt.lib.tcmu_cbt_inflight(backend.cbt.c) == 1  # entered ...
        load().lib.tcmu_cbt_leave(tracking.maps[1])  # ... until the loop answers it
    assert begin(tracking, lib.UBLK_OP_READ, 40 * SECTORS_PER_TRACK, 8) == -1
    assert begin(tracking, lib.UBLK_OP_FLUSH, 0, 0) == -1
    assert backend.cbt.lib.tcmu_cbt_inflight(backend.cbt.c) == 0
    assert marked(backend) == [3, 10, 11, 12, 20, 63]
    assert set(backend.cbt.map_bytes()) == {0, backend.cbt.number}
    assert int(tracking.maps[1].marked) == 4


def test_a_freeze_punts_and_enters_nothing(tracked):
    _image, backend, tracking = tracked
    lib = load().lib
    backend.cbt.lib.tcmu_cbt_set_freeze(backend.cbt.c, 1)
    try:
        assert begin(tracking, lib.UBLK_OP_WRITE, 0, 8) == 1
        assert backend.cbt.lib.tcmu_cbt_inflight(backend.cbt.c) == 0
        assert marked(backend) == []  # marked when the write really goes (take)
    finally:
        backend.cbt.lib.tcmu_cbt_set_freeze(backend.cbt.c, 0)
    assert int(tracking.maps[1].punted) == 1


def test_a_punted_write_copies_the_old_block_first_and_stays_entered(tracked):
    image, backend, tracking = tracked
    lib = load().lib
    old = bytes([0xA5]) * TRACK
    with open(image, "r+b") as f:
        f.seek(5 * TRACK)
        f.write(old)
    number = snapshot.create(str(image)).number
    sector = 5 * SECTORS_PER_TRACK + 8
    assert begin(tracking, lib.UBLK_OP_WRITE, sector, 8) == 1  # block 5 needs its copy
    assert tracking.take(sector * 512, 4096) == 0  # what the server's thread does
    assert backend.cbt.lib.tcmu_cbt_inflight(backend.cbt.c) == 1
    with open(image, "r+b") as f:  # what the loop then writes ...
        f.seek(sector * 512)
        f.write(bytes([0x5A]) * 4096)
    lib.tcmu_cbt_leave(tracking.maps[0])  # ... and the leave on its answer
    assert backend.cbt.lib.tcmu_cbt_inflight(backend.cbt.c) == 0
    out = io.BytesIO()
    snapshot.read(str(image), number, out.write, offset=5 * TRACK, length=TRACK)
    assert out.getvalue() == old  # the snapshot kept the block as it was
    assert begin(tracking, lib.UBLK_OP_WRITE, sector, 8) == 0  # copied once: fast path
    lib.tcmu_cbt_leave(tracking.maps[1])
    assert 5 in marked(backend)
    (entry,) = snapshot.listing(str(image))
    assert entry.as_json()["state"] == "ready"
