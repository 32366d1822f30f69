"""Tracking-block arithmetic against tables and a byte-by-byte reference model."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcmu_pr.cbt import generation, geometry
from tcmu_pr.cbt.geometry import GeometryError

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("capacity", "block_size"),
    [
        (0, 64 * KiB),
        (1, 64 * KiB),
        (128 * GiB, 64 * KiB),  # exactly MAX_COUNT blocks of 64 KiB
        (128 * GiB + 1, 128 * KiB),
        (256 * GiB, 128 * KiB),
        (512 * GiB, 256 * KiB),
        (2 * TiB, MiB),
        (64 * TiB, MiB),  # capped: more blocks instead
    ],
)
def test_default_block_size_table(capacity, block_size):
    assert geometry.default_block_size(capacity) == block_size


@pytest.mark.parametrize("bad", [0, 1, 512, 2048, 3 * 4096, 2 * MiB, -4096])
def test_bad_block_sizes_are_refused(bad):
    with pytest.raises(GeometryError):
        geometry.check_block_size(bad)


@pytest.mark.parametrize("good", [4096, 64 * KiB, MiB])
def test_good_block_sizes(good):
    assert geometry.check_block_size(good) == good


@pytest.mark.parametrize(
    ("offset", "length", "blocks"),
    [
        (0, 0, []),
        (0, 1, [0]),
        (0, 65536, [0]),
        (0, 65537, [0, 1]),
        (65535, 1, [0]),
        (65535, 2, [0, 1]),
        (65536, 65536, [1]),
        (65536 * 3 - 1, 65536 + 2, [2, 3, 4]),
    ],
)
def test_block_range_boundaries(offset, length, blocks):
    assert list(geometry.block_range(offset, length, 65536)) == blocks


def test_block_count_rounds_up():
    assert geometry.block_count(0, 65536) == 0
    assert geometry.block_count(1, 65536) == 1
    assert geometry.block_count(65536, 65536) == 1
    assert geometry.block_count(65537, 65536) == 2


@given(
    shift=st.integers(12, 20),
    offset=st.integers(0, 1 << 24),
    length=st.integers(0, 1 << 22),
)
def test_block_range_matches_bytes(shift, offset, length):
    bs = 1 << shift
    small = length <= 1 << 16
    expected = sorted({b // bs for b in range(offset, offset + length)}) if small else None
    got = geometry.block_range(offset, length, bs)
    if expected is not None:
        assert list(got) == expected
    # the first and last byte are in the range, the bytes just outside are not
    if length:
        assert offset // bs == got.start and (offset + length - 1) // bs == got.stop - 1


@given(
    values=st.lists(st.integers(0, 255), max_size=64),
    since=st.integers(0, 255),
    tail=st.integers(1, 4096),
)
def test_extents_cover_exactly_the_blocks_after_since(values, since, tail):
    bs = 4096
    capacity = max(0, (len(values) - 1) * bs + tail) if values else 0
    covered = set()
    last_end = -1
    for off, length in geometry.extents(bytes(values), since, bs, capacity):
        assert off > last_end  # sorted, separated by at least one unchanged block
        last_end = off + length
        assert length > 0 and off % bs == 0 and off + length <= capacity
        covered.update(geometry.block_range(off, length, bs))
    assert covered == {i for i, v in enumerate(values) if v > since}


@pytest.mark.parametrize(
    ("current", "nxt", "new"),
    [(1, 2, False), (128, 129, False), (254, 255, False), (255, 1, True)],
)
def test_next_number_wraps_into_a_new_generation(current, nxt, new):
    step = generation.next_number(current)
    assert (step.changes_number, step.new_generation) == (nxt, new)


@pytest.mark.parametrize("bad", [0, 256, -1])
def test_next_number_refuses_numbers_outside_the_byte(bad):
    with pytest.raises(ValueError):
        generation.next_number(bad)


def test_generation_ids_are_uuids_and_fresh():
    a, b = generation.new_generation_id(), generation.new_generation_id()
    assert a != b and len(a) == 16
    assert uuid.UUID(generation.generation_text(a)).bytes == a


def test_info_json_has_exactly_the_blksnap_fields():
    info = generation.CbtInfo(1 << 20, 65536, 16, "x", 3)
    assert list(info.as_json()) == [
        "device_capacity",
        "block_size",
        "block_count",
        "generation_id",
        "changes_number",
    ]


class Reference:
    """Independent model: per block, the number of the last change; generation counter."""

    def __init__(self, blocks: int) -> None:
        self.values = [0] * blocks
        self.number = 1
        self.generations = 0

    def write(self, first: int, last: int) -> None:
        for b in range(first, last + 1):
            self.values[b] = self.number

    def snapshot(self) -> None:
        if self.number == 255:
            self.values = [0] * len(self.values)
            self.number = 1
            self.generations += 1
        else:
            self.number += 1


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 20), st.integers(1, 1 << 18)),
                max_size=300))  # fmt: skip
def test_marking_and_snapshots_match_the_reference(ops):
    bs, capacity = 65536, 1 << 20
    n = geometry.block_count(capacity, bs)
    ref = Reference(n)
    values, number, generations = [0] * n, 1, 0
    for snap, off, length in ops:
        if snap:
            step = generation.next_number(number)
            number = step.changes_number
            if step.new_generation:
                values, generations = [0] * n, generations + 1
            ref.snapshot()
            continue
        off, length = off % capacity, min(length, capacity - off % capacity)
        for b in geometry.block_range(off, length, bs):
            values[b] = number
        ref.write(off // bs, (off + length - 1) // bs)
    assert (values, number, generations) == (ref.values, ref.number, ref.generations)
