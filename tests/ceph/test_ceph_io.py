"""The native RBD data layer (native/rbd_io.c through cffi) against a real image."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tcmu_pr.backends.base import StoreError
from tcmu_pr.backends.rbd_data import RbdImage

IMAGE_SIZE = 64 << 20  # what the rbd_image fixture creates

pytestmark = pytest.mark.ceph


@pytest.fixture
def image(ceph_conf: str, rbd_image: str, rbd_io_native: Any) -> Iterator[RbdImage]:
    with RbdImage("rbd", rbd_image, conf=ceph_conf) as img:
        yield img


def test_size_and_open_errors(image: RbdImage, ceph_conf: str) -> None:
    assert image.size == IMAGE_SIZE
    with pytest.raises(StoreError) as err:
        RbdImage("rbd", "no-such-image", conf=ceph_conf)
    assert err.value.errno == errno.ENOENT


def test_write_read_verify_with_iovecs(image: RbdImage, rados_ioctx: Any, rbd_image: str) -> None:
    import rbd

    data = os.urandom(3 * 4096 + 512)
    parts = [data[:100], data[100:5000], data[5000:]]
    assert image.writev(8192, parts) == len(data)
    image.flush()
    bufs = [bytearray(7), bytearray(4096), bytearray(len(data) - 4103)]
    assert image.readv(8192, bufs) == len(data)
    assert b"".join(bufs) == data
    # Across an object boundary (4 MiB objects), and seen by python-rbd too.
    edge = (4 << 20) - 1000
    image.write(edge, data)
    assert image.read(edge, len(data)) == data
    with rbd.Image(rados_ioctx, rbd_image, read_only=True) as ref:
        assert ref.read(edge, len(data)) == data


def test_discard_reads_back_zeros(image: RbdImage) -> None:
    image.write(0, b"\xaa" * 65536)
    image.discard(4096, 8192)
    got = image.read(0, 65536)
    assert got[:4096] == b"\xaa" * 4096
    assert got[4096:12288] == bytes(8192)
    assert got[12288:] == b"\xaa" * (65536 - 12288)


def test_write_same_repeats_the_pattern(image: RbdImage) -> None:
    pattern = bytes(range(256)) * 2  # one 512-byte block
    image.write_same(1 << 20, 64 * 512, pattern)
    assert image.read(1 << 20, 64 * 512) == pattern * 64
    assert image.read((1 << 20) + 64 * 512, 512) == bytes(512)  # and no further
    with pytest.raises(StoreError) as err:
        image.write_same(0, 1000, pattern)  # not a multiple of the pattern
    assert err.value.errno == errno.EINVAL


def test_compare_and_write_match_and_miscompare(image: RbdImage) -> None:
    old = b"\x11" * 512
    new = b"\x22" * 512
    image.write(4096, old)
    assert image.compare_and_write(4096, old, new) is None
    assert image.read(4096, 512) == new
    # Stale compare data: nothing written, first differing byte reported (relative).
    wrong = bytearray(new)
    wrong[300] ^= 0xFF
    assert image.compare_and_write(4096, bytes(wrong), b"\x33" * 512) == 300
    assert image.read(4096, 512) == new
    assert image.compare_and_write(4096, old, b"\x33" * 512) == 0


def test_out_of_range_is_refused_before_librbd(image: RbdImage) -> None:
    size = image.size
    for call in (
        lambda: image.read(size - 511, 512),
        lambda: image.write(size, b"x"),
        lambda: image.discard(size - 4096, 8192),
        lambda: image.write_same(size, 512, bytes(512)),
        lambda: image.compare_and_write(size - 1, b"ab", b"cd"),
        lambda: image.read(2**64 - 512, 512),  # offset + length wraps
    ):
        with pytest.raises(StoreError) as err:
            call()
        assert err.value.errno == errno.ERANGE
    image.write(size - 512, b"\x01" * 512)  # the last block itself is fine
    assert image.read(size - 512, 512) == b"\x01" * 512


def test_closed_image_raises(ceph_conf: str, rbd_image: str, rbd_io_native: Any) -> None:
    img = RbdImage("rbd", rbd_image, conf=ceph_conf)
    img.close()
    img.close()  # idempotent
    with pytest.raises(StoreError):
        img.read(0, 512)


def test_miscompare_offset_is_relative_to_the_command(image: RbdImage) -> None:
    # Offset 100, mismatch at 199: relative 199, absolute 299 -- only one answer is right.
    base = b"\x44" * 200
    image.write(100, base)
    cmp = bytearray(base)
    cmp[199] = 0
    assert image.compare_and_write(100, bytes(cmp), bytes(200)) == 199
    assert image.read(100, 200) == base


def test_compare_and_write_spanning_sectors_is_refused(image: RbdImage) -> None:
    # librbd 16 limits COMPARE AND WRITE to one 512-byte sector (see rbd_io.h).
    image.write(0, b"\x55" * 1024)
    with pytest.raises(StoreError) as err:
        image.compare_and_write(0, b"\x55" * 1024, bytes(1024))
    assert err.value.errno == errno.EINVAL
    assert image.read(0, 1024) == b"\x55" * 1024


# --- allocation map (rbd_io_allocated over rbd_diff_iterate2) -----------------------------

OBJ = 4 << 20  # the fixture's images: order 22, no striping


def test_allocation_map_follows_writes_and_discards(image: RbdImage) -> None:
    assert image.discard_granularity == OBJ and image.allocation_scan_limit
    assert list(image.allocated(0, IMAGE_SIZE)) == []
    image.write(8192, b"\xaa" * 4096)
    # librbd counts an object from its start up to its size: 0..8 KiB was never written
    assert list(image.allocated(0, IMAGE_SIZE)) == [(0, 12288)]
    image.write(OBJ + 1024, b"\xbb" * 512)
    image.write(2 * OBJ, b"\xcc" * OBJ)
    expected = [(0, 12288), (OBJ, 1536), (2 * OBJ, OBJ)]
    assert list(image.allocated(0, IMAGE_SIZE)) == expected
    assert list(image.allocated(OBJ + 1000, 100)) == [(OBJ + 1000, 100)]  # clipped
    assert list(image.allocated(OBJ + 1536, OBJ - 1536)) == []
    image.discard(2 * OBJ + (1 << 20), 1 << 20)  # inside the object: zeroed, still counted
    assert list(image.allocated(0, IMAGE_SIZE)) == expected
    image.discard(2 * OBJ + (3 << 20), 1 << 20)  # its tail: truncated
    assert list(image.allocated(0, IMAGE_SIZE))[-1] == (2 * OBJ, 3 << 20)
    image.discard(2 * OBJ, OBJ)  # the whole object: removed
    assert list(image.allocated(0, IMAGE_SIZE)) == expected[:2]
    assert image.read(2 * OBJ, OBJ) == bytes(OBJ)


def test_allocation_map_continues_past_a_full_buffer(
    image: RbdImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tcmu_pr.backends.rbd_data as rbd_data

    for n in (0, 1, 2, 4, 5, 7, 15):  # 1 and 2 touch: one extent
        image.write(n * OBJ, b"\x01" * OBJ)
    expected = [(0, 3 * OBJ), (4 * OBJ, 2 * OBJ), (7 * OBJ, OBJ), (15 * OBJ, OBJ)]
    assert list(image.allocated(0, IMAGE_SIZE)) == expected
    monkeypatch.setattr(rbd_data, "_EXTENTS_PER_CALL", 1)  # -E2BIG after every extent
    assert list(image.allocated(0, IMAGE_SIZE)) == expected
    assert list(image.allocated(OBJ, 5 * OBJ)) == [(OBJ, 2 * OBJ), (4 * OBJ, 2 * OBJ)]


def test_allocation_map_bounds(image: RbdImage, rbd_io_native: Any) -> None:
    ffi, lib = rbd_io_native.ffi, rbd_io_native.lib
    for offset, length in ((IMAGE_SIZE - 511, 512), (IMAGE_SIZE + 1, 0), (2**64 - 512, 1024)):
        with pytest.raises(StoreError) as err:
            list(image.allocated(offset, length))
        assert err.value.errno == errno.ERANGE
    assert list(image.allocated(IMAGE_SIZE, 0)) == []
    out = ffi.new("struct rbd_io_extent[]", 1)
    count, following = ffi.new("size_t *"), ffi.new("uint64_t *")
    handle = ffi.cast("struct rbd_io *", image.pin())
    try:
        assert lib.rbd_io_allocated(handle, 0, 4096, out, 0, count, following) == -errno.EINVAL
        assert lib.rbd_io_allocated(handle, 0, 4096, ffi.NULL, 1, count, following) == -errno.EINVAL
        assert lib.rbd_io_allocated(handle, 0, 4096, out, 1, ffi.NULL, following) == -errno.EINVAL
        assert lib.rbd_io_allocated(ffi.NULL, 0, 4096, out, 1, count, following) == -errno.EINVAL
        assert lib.rbd_io_allocated(handle, 0, IMAGE_SIZE, out, 1, count, following) == 0
        assert (count[0], following[0]) == (0, IMAGE_SIZE)
    finally:
        image.unpin()


def test_allocation_map_cost(ceph_conf: str, rados_ioctx: Any, rbd_io_native: Any) -> None:
    """How long one GET LBA STATUS scan window takes on a layering-only image (no object
    map, as docs/rbd.md recommends): printed for docs/rbd.md."""
    import time
    import uuid

    import rbd

    from tcmu_pr.backends import rbd_data

    name = f"t-{uuid.uuid4().hex[:12]}"
    size = 2 * rbd_data._SCAN_LIMIT
    rbd.RBD().create(rados_ioctx, name, size, old_format=False, features=rbd.RBD_FEATURE_LAYERING)
    try:
        with RbdImage("rbd", name, conf=ceph_conf) as img:
            for gib in range(0, size >> 30, 1):
                img.write(gib << 30, b"x" * 4096)
            t0 = time.perf_counter()
            extents = list(img.allocated(0, rbd_data._SCAN_LIMIT))
            took = time.perf_counter() - t0
            assert extents == [(gib << 30, 4096) for gib in range(rbd_data._SCAN_LIMIT >> 30)]
            objects = rbd_data._SCAN_LIMIT // OBJ
            print(f"\nallocation map of {rbd_data._SCAN_LIMIT >> 30} GiB ({objects} objects, "
                  f"{len(extents)} allocated): {took * 1e3:.1f} ms")  # fmt: skip
            assert took < 10  # generous: a loaded host, not a benchmark
    finally:
        rbd.RBD().remove(rados_ioctx, name)
