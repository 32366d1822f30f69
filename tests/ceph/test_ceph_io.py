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
