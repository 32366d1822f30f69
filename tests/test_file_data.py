"""FileDataBackend on real files: I/O, discard (punch hole and zero fallback), CAW atomicity."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from tcmu_pr.backends.base import StoreError
from tcmu_pr.backends.file_data import FileDataBackend

SHM = "/dev/shm"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "data.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return str(path)


def test_size_read_write_roundtrip(image):
    with FileDataBackend(image) as b:
        assert b.size == 1 << 20
        b.write(4096, b"hello")
        b.flush()
        assert b.read(4094, 9) == b"\0\0hello\0\0"
    with open(image, "rb") as f:
        f.seek(4096)
        assert f.read(5) == b"hello"


def test_read_past_end_of_shrunk_file_is_zeros(image):
    with FileDataBackend(image) as b:
        os.truncate(image, 100)
        assert b.read(90, 20) == bytes(20)


def test_open_errors(tmp_path):
    with pytest.raises(StoreError):
        FileDataBackend(str(tmp_path / "missing"))
    with pytest.raises(StoreError):
        FileDataBackend(str(tmp_path))  # a directory
    with pytest.raises(StoreError):
        FileDataBackend("/dev/null")  # a character device


def test_read_only_refuses_writes(image):
    with FileDataBackend(image, read_only=True) as b, pytest.raises(OSError):
        b.write(0, b"x")


def _filled(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.write(b"\xab" * size)
        f.flush()
        os.fsync(f.fileno())


@pytest.mark.parametrize("punch", [True, False])
def test_discard_reads_back_zeros(tmp_path, punch):
    path = str(tmp_path / "d")
    _filled(path, 1 << 20)
    with FileDataBackend(path, punch_holes=punch) as b:
        b.discard(1000, 70000)
        data = b.read(0, 1 << 20)
    assert data[:1000] == b"\xab" * 1000
    assert data[1000:71000] == bytes(70000)
    assert data[71000:] == b"\xab" * ((1 << 20) - 71000)
    assert os.path.getsize(path) == 1 << 20


def test_punch_hole_frees_space_and_fallback_does_not():
    path = f"{SHM}/tcmu-pr-test-filedata-{os.getpid()}"
    try:
        for punch, expect_freed in ((True, True), (False, False)):
            _filled(path, 4 << 20)
            before = os.stat(path).st_blocks
            with FileDataBackend(path, punch_holes=punch) as b:
                b.discard(0, 2 << 20)
            freed = before - os.stat(path).st_blocks
            assert (freed >= (2 << 20) // 512) is expect_freed, (punch, before, freed)
    finally:
        os.unlink(path)


def test_allocation_map_is_the_filesystems_holes(image):
    with FileDataBackend(image) as b:
        g = b.discard_granularity
        assert g == os.stat(image).st_blksize and b.allocation_scan_limit is None
        assert list(b.allocated(0, 1 << 20)) == []
        b.write(3 * g + 1, b"x")  # one byte: its whole filesystem block is data
        b.write(8 * g, b"y" * (2 * g))
        assert list(b.allocated(0, 1 << 20)) == [(3 * g, g), (8 * g, 2 * g)]
        assert list(b.allocated(3 * g + 7, g)) == [(3 * g + 7, g - 7)]  # clipped to the range
        assert list(b.allocated(9 * g, 100)) == [(9 * g, 100)]
        assert list(b.allocated(4 * g, 4 * g)) == []
        b.discard(8 * g, g)  # a whole block: a hole again
        b.discard(3 * g, g - 1)  # not the whole block: zeroed, still allocated
        assert list(b.allocated(0, 1 << 20)) == [(3 * g, g), (9 * g, g)]
        assert b.read(3 * g, g) == bytes(g)


def test_allocation_map_past_the_end_of_the_file_is_a_hole(image):
    with FileDataBackend(image) as b:
        b.write((1 << 20) - 512, b"z" * 512)
        g = b.discard_granularity
        assert list(b.allocated(0, 1 << 20)) == [((1 << 20) - g, g)]
        os.truncate(image, 1 << 19)  # shrunk underneath: the rest reads as zeros
        assert list(b.allocated(0, 1 << 20)) == []


def test_compare_and_write(image):
    with FileDataBackend(image) as b:
        b.write(512, b"A" * 512)
        assert b.compare_and_write(512, b"A" * 512, b"B" * 512) is None
        assert b.read(512, 512) == b"B" * 512
        expected = b"B" * 100 + b"X" + b"B" * 411
        assert b.compare_and_write(512, expected, b"C" * 512) == 100
        assert b.read(512, 512) == b"B" * 512


class SlowReads(FileDataBackend):
    """A disk whose reads take a moment: widens the window between CAW's compare and write."""

    def read(self, offset: int, length: int) -> bytes:
        data = super().read(offset, length)
        time.sleep(0.0005)
        return data


def _increment(path: str, rounds: int, results) -> None:
    """Count up a big-endian counter in block 0 with CAW only; report the successes."""
    wins = 0
    with SlowReads(path) as b:
        for _ in range(rounds):
            while True:
                cur = b.read(0, 512)
                value = int.from_bytes(cur[:8], "big")
                new = (value + 1).to_bytes(8, "big") + cur[8:]
                if b.compare_and_write(0, cur, new) is None:
                    wins += 1
                    break
    results.put(wins)


def _final(path: str) -> int:
    with open(path, "rb") as f:
        return int.from_bytes(f.read(8), "big")


def test_compare_and_write_is_atomic_across_processes(image):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_increment, args=(image, 60, results)) for _ in range(3)]
    for p in procs:
        p.start()
    wins = sum(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert wins == 180
    assert _final(image) == 180  # no update was lost


def test_compare_and_write_is_atomic_across_threads_of_one_backend(image):
    with SlowReads(image) as b:
        wins = []

        def run() -> None:
            for _ in range(60):
                while True:
                    cur = b.read(0, 512)
                    new = (int.from_bytes(cur[:8], "big") + 1).to_bytes(8, "big") + cur[8:]
                    if b.compare_and_write(0, cur, new) is None:
                        wins.append(1)
                        break

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(wins) == 180 and _final(image) == 180


def test_or_write_ors_into_the_range(image):
    with FileDataBackend(image) as b:
        assert b.can_or_write
        b.write(100, bytes([0x01, 0x80, 0xFF]))
        b.or_write(100, bytes([0x02, 0x01, 0x00, 0x10]))
        assert b.read(99, 6) == bytes([0, 0x03, 0x81, 0xFF, 0x10, 0])


def _or_bit(path: str, bit: int) -> None:
    with SlowReads(path) as b:
        b.or_write(0, bytes([1 << bit]) * 512)


def test_or_write_is_atomic_across_processes(image):
    """Eight processes each OR one bit into the same block: no read-modify-write may lose
    another's bit (the OFD range lock COMPARE AND WRITE uses covers ORWRITE too)."""
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        with FileDataBackend(image) as b:
            b.write(0, bytes(512))
        procs = [ctx.Process(target=_or_bit, args=(image, bit)) for bit in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        with FileDataBackend(image) as b:
            assert b.read(0, 512) == b"\xff" * 512


def test_or_write_is_atomic_across_threads_of_one_backend(image):
    with SlowReads(image) as b:
        threads = [
            threading.Thread(target=b.or_write, args=(0, bytes([1 << bit]) * 512))
            for bit in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b.read(0, 512) == b"\xff" * 512


def test_rbd_has_no_atomic_or():
    from tcmu_pr.backends.rbd_data import RbdImage

    assert RbdImage.can_or_write is False
