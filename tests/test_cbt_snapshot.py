"""Copy-on-write snapshots: point-in-time reads while writes go on, the native loop's punt of
a first write, a full difference file (corrupt snapshot, writes unharmed), delete."""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time

import pytest
from ring_support import BLOCK, close_device, make_device, rw10

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.cbt import mapfile, snapshot
from tcmu_pr.cbt.mapfile import CbtError, CbtMap
from tcmu_pr.cli import main
from tcmu_pr.emulation import DeviceInfo, Emulator
from tcmu_pr.ring.handler import RingHandler

SIZE = 1 << 20
TRACK = 4096


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu.img"
    path.write_bytes(os.urandom(SIZE))
    mapfile.enable(str(path), TRACK)
    return str(path)


def _snap_bytes(image: str, number: int) -> bytes:
    out = io.BytesIO()
    snapshot.read(image, number, out.write)
    return out.getvalue()


def test_snapshot_cli_create_list_read_delete(image, capfdbinary):
    with open(image, "rb") as f:
        before = f.read()
    assert main(["snapshot", "create", "--store", f"file:{image}"]) == 0
    number = int(capfdbinary.readouterr().out)
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        data.write(5000, b"new" * 3000)
        assert m.number == 2  # writes after the snapshot carry the next number
    assert main(["snapshot", "list", "--store", f"file:{image}"]) == 0
    (entry,) = json.loads(capfdbinary.readouterr().out)
    assert entry["number"] == number and entry["changes_number"] == 1
    assert entry["state"] == "ready" and entry["diff_bytes"] == 3 * TRACK
    assert main(["snapshot", "read", "--number", str(number), "--store", f"file:{image}"]) == 0
    assert capfdbinary.readouterr().out == before
    assert main(["cbt", "diff", "--since", "1", "--json", "--store", f"file:{image}"]) == 0
    assert json.loads(capfdbinary.readouterr().out) == [[4096, 3 * 4096]]
    assert main(["snapshot", "delete", "--number", str(number), "--store", f"file:{image}"]) == 0
    assert main(["snapshot", "read", "--number", str(number), "--store", f"file:{image}"]) == 1
    assert not os.path.exists(snapshot.diff_path(image, number))


@pytest.mark.parametrize("writers", [1, 2])
def test_snapshot_equals_the_image_at_its_time_while_writes_go_on(image, writers):
    """Writer threads (two: as two devices of one LU share the map) on disjoint blocks; a
    write is in the snapshot iff the number it was marked with (read back from the map:
    only its thread writes that block) is the snapshot's or older."""
    with open(image, "rb") as f:
        initial = f.read()
    logs: list[list[tuple[int, bytes, int]]] = [[] for _ in range(writers)]
    stop = threading.Event()
    m = CbtMap.open(image)
    data = FileDataBackend(image, cbt=m)

    def writer(k: int) -> None:
        rnd = random.Random(7 + k)
        while not stop.is_set():
            block = rnd.randrange(SIZE // TRACK // writers) * writers + k
            payload = rnd.randbytes(TRACK)
            data.write(block * TRACK, payload)
            logs[k].append((block, payload, m.map_bytes()[block]))

    def count() -> int:
        return sum(len(log) for log in logs)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    try:
        while count() < 200:
            time.sleep(0.001)
        infos = []
        for _ in range(3):
            infos.append(snapshot.create(image))
            target = count() + 50
            while count() < target:
                time.sleep(0.001)
        reads = {i.number: _snap_bytes(image, i.number) for i in infos}  # writes go on
    finally:
        stop.set()
        for t in threads:
            t.join()
    for info in infos:
        expected = bytearray(initial)
        for log in logs:
            for block, payload, mark in log:
                if mark <= info.changes_number:
                    expected[block * TRACK : (block + 1) * TRACK] = payload
        assert reads[info.number] == bytes(expected), info
        assert any(mark > info.changes_number for log in logs for _, _, mark in log)
    data.close()
    m.close()


@pytest.mark.parametrize("kind", ["native", "python"])
def test_the_loop_punts_a_first_write_and_python_copies_first(kind, image, tmp_path):
    with open(image, "rb") as f:
        before = f.read()
    m = CbtMap.open(image)
    dev = make_device(kind, tmp_path, size=SIZE, image=image, ring_args={"cbt": m})
    data = FileDataBackend(image, cbt=m)
    try:
        handler = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size,
                              emulate=Emulator(DeviceInfo.from_size("s", SIZE), data).emulate)
        info = snapshot.create(image)
        for round_ in range(2):
            dev.sim.queue(rw10(True, 16, 1), data_out=b"x" * BLOCK)
            handler.serve()
            (done,) = dev.sim.reap()
            assert done.status == 0
            # first write punted (copy first), the second one served in the loop
            assert dev.ring.stats()["punted"] == 1 and dev.ring.stats()["fast"] == round_
        assert _snap_bytes(image, info.number) == before
        snapshot.delete(image, info.number)
        dev.sim.queue(rw10(True, 800, 1), data_out=b"y" * BLOCK)
        handler.serve()
        dev.sim.reap()
        assert dev.ring.stats()["punted"] == 1  # no snapshot left: no copy to wait for
    finally:
        data.close()
        close_device(dev)
        m.close()


def test_a_full_difference_file_marks_the_snapshot_corrupt_not_the_lu(image):
    info = snapshot.create(image, diff_limit=2 * TRACK)
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        for block in range(4):
            data.write(block * TRACK, b"z" * TRACK)  # never fails
        assert data.read(0, 4 * TRACK) == b"z" * 4 * TRACK
    (entry,) = snapshot.listing(image)
    assert entry.state == "corrupt" and "full" in entry.reason
    with pytest.raises(CbtError, match="corrupt"):
        _snap_bytes(image, info.number)
    assert main(["snapshot", "read", "--number", str(info.number),
                 "--store", f"file:{image}"]) == 1  # fmt: skip


def test_two_live_snapshots_both_keep_their_own_view(image):
    with open(image, "rb") as f:
        v0 = f.read()
    m = CbtMap.open(image)
    data = FileDataBackend(image, cbt=m)
    s1 = snapshot.create(image)
    data.write(0, b"1" * TRACK)
    v1 = bytes(b"1" * TRACK) + v0[TRACK:]
    s2 = snapshot.create(image)
    data.write(0, b"2" * TRACK)
    data.write(TRACK, b"2" * TRACK)
    assert _snap_bytes(image, s1.number) == v0
    assert _snap_bytes(image, s2.number) == v1
    snapshot.delete(image, s1.number)
    assert _snap_bytes(image, s2.number) == v1
    assert (s1.changes_number, s2.changes_number, m.number) == (1, 2, 3)
    data.close()
    m.close()


def test_bad_snapshot_input(image, capsys):
    assert main(["snapshot", "read", "--number", "9", "--store", f"file:{image}"]) == 1
    assert main(["snapshot", "delete", "--number", "9", "--store", f"file:{image}"]) == 1
    assert main(["snapshot", "create", "--diff-limit", "-1", "--store", f"file:{image}"]) == 2
    assert snapshot.numbers(image) == []


def test_change_number_wrap_renews_the_generation(image):
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        gen = m.generation_id
        data.write(0, b"a")
        for _ in range(254):
            snapshot.delete(image, snapshot.create(image).number)
        assert m.number == 255 and m.generation_id == gen and m.map_bytes()[0] == 1
        last = snapshot.create(image)
        assert last.changes_number == 255
        assert m.number == 1 and m.generation_id != gen and not any(m.map_bytes())


def test_snapshot_header_fields_are_where_the_code_writes_them(image):
    info = snapshot.create(image, diff_limit=8 * TRACK)
    with CbtMap.open(image) as m, FileDataBackend(image, cbt=m) as data:
        data.write(0, b"n" * (3 * TRACK))
    with snapshot.Snapshot.open(image, info.number) as s:
        fields = snapshot._HEAD.unpack_from(s.mm, 0)
        assert fields[-1] == s.next_slot == 3 and fields[-2] == s.limit == 8
        assert fields[3] == s.state == snapshot.READY
