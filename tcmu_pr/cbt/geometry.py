"""Tracking-block arithmetic: which block size a LU gets, which blocks a byte range touches.

No I/O here: the data path, the CLI and the tests all share these few functions, so a block
boundary means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

MIN_SHIFT = 16  # 64 KiB: blksnap's tracking_block_minimum_shift
MAX_SHIFT = 20  # 1 MiB: blksnap's tracking_block_maximum_shift
MAX_COUNT = 1 << 21  # blksnap's tracking_block_maximum_count: grow the block past this
MIN_BLOCK = 1 << 12  # an explicit --block-size may go down to a page, never below


class GeometryError(ValueError):
    """A block size or range that names no tracking blocks: the message says why."""


def default_block_size(capacity: int) -> int:
    """blksnap's choice: the smallest power of two from 64 KiB that keeps the map at most
    MAX_COUNT blocks, but never above 1 MiB (a larger LU just gets more blocks)."""
    if capacity < 0:
        raise GeometryError(f"capacity {capacity} is negative")
    shift = MIN_SHIFT
    while shift < MAX_SHIFT and block_count(capacity, 1 << shift) > MAX_COUNT:
        shift += 1
    return 1 << shift


def check_block_size(block_size: int) -> int:
    """``block_size`` if it is a power of two in [4 KiB, 1 MiB], else GeometryError."""
    if block_size < MIN_BLOCK or block_size > 1 << MAX_SHIFT or block_size & (block_size - 1):
        raise GeometryError(
            f"block size {block_size}: must be a power of two from {MIN_BLOCK} to {1 << MAX_SHIFT}"
        )
    return block_size


def block_count(capacity: int, block_size: int) -> int:
    """Blocks covering ``capacity`` bytes; a partial last block counts."""
    return -(-capacity // block_size)


def block_range(offset: int, length: int, block_size: int) -> range:
    """The blocks a write of ``length`` bytes at ``offset`` touches (empty for length 0)."""
    if offset < 0 or length < 0:
        raise GeometryError(f"range {offset}+{length} is negative")
    if length == 0:
        return range(0)
    return range(offset // block_size, (offset + length - 1) // block_size + 1)


def extents(map_bytes: Sequence[int] | bytes, since: int, block_size: int,
            capacity: int) -> Iterator[tuple[int, int]]:  # fmt: skip
    """(offset, length) byte extents of the runs of blocks marked after change ``since``
    (value > since), the last one clipped to the capacity."""
    start = None
    for i, value in enumerate(map_bytes):
        if value > since:
            if start is None:
                start = i
        elif start is not None:
            yield _extent(start, i, block_size, capacity)
            start = None
    if start is not None:
        yield _extent(start, len(map_bytes), block_size, capacity)


def _extent(first: int, end: int, block_size: int, capacity: int) -> tuple[int, int]:
    off = first * block_size
    return off, min(end * block_size, capacity) - off
