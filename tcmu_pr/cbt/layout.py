"""The map file beside an image (IMAGE.cbt): a 4 KiB header, one byte per tracking block
(its change number), then one byte per block for the live snapshots' copy-on-write state.

native/cbt.h has the same offsets (the C data path reads the change number, the in-flight
count, the freeze and copy-on-write flags); tests/test_cbt_map.py pins the two together.
Little endian: the file is shared by the servers of one host, never moved between hosts.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tcmu_pr.cbt import geometry

MAGIC = b"TCMUCBT1"
VERSION = 1
HEADER_SIZE = 4096
SUFFIX = ".cbt"

OFF_NUMBER = 48
OFF_DIRTY = 52
OFF_BOOT = 56
OFF_INFLIGHT = 72
OFF_FREEZE = 76
OFF_FREEZE_DEADLINE = 80
OFF_COW = 88
OFF_SNAP_NEXT = 92

# magic, version, block size, capacity, block count, generation (16 bytes)
_FIXED = struct.Struct("<8sIIQQ16s")


class LayoutError(ValueError):
    """A map file that does not describe a map we can use: the message says what is wrong."""


def page_round(n: int) -> int:
    return -(-n // HEADER_SIZE) * HEADER_SIZE


def file_size(block_count: int) -> int:
    """Header + change numbers + copy-on-write bytes, each array page-aligned."""
    return HEADER_SIZE + 2 * page_round(block_count)


def map_path(image: str) -> str:
    return image + SUFFIX


@dataclass(frozen=True, slots=True)
class Geometry:
    """What the header says about the LU, checked against the file's length."""

    block_size: int
    capacity: int
    block_count: int
    generation: bytes

    @property
    def map_offset(self) -> int:
        return HEADER_SIZE

    @property
    def cow_offset(self) -> int:
        return HEADER_SIZE + page_round(self.block_count)


def new_header(block_size: int, capacity: int, generation: bytes) -> bytearray:
    """A header for a fresh map: change number 1, clean, nothing in flight."""
    head = bytearray(HEADER_SIZE)
    count = geometry.block_count(capacity, block_size)
    _FIXED.pack_into(head, 0, MAGIC, VERSION, block_size, capacity, count, generation)
    struct.pack_into("<I", head, OFF_NUMBER, 1)
    struct.pack_into("<I", head, OFF_SNAP_NEXT, 1)
    return head


def parse(head: bytes | memoryview, length: int) -> Geometry:
    """The header's geometry, or LayoutError: never trust a file's own word for its size."""
    if len(head) < HEADER_SIZE:
        raise LayoutError("map file shorter than its header")
    magic, version, bs, cap, count, gen = _FIXED.unpack_from(head, 0)
    if magic != MAGIC:
        raise LayoutError("not a tcmu-pr CBT map (bad magic)")
    if version != VERSION:
        raise LayoutError(f"CBT map version {version}, this tcmu-pr reads {VERSION}")
    try:
        geometry.check_block_size(bs)
    except geometry.GeometryError as err:
        raise LayoutError(f"CBT map header: {err}") from None
    if count != geometry.block_count(cap, bs):
        raise LayoutError(f"CBT map header: {count} blocks do not cover {cap} bytes")
    if file_size(count) > length:
        raise LayoutError(f"CBT map file is {length} bytes, {file_size(count)} needed")
    return Geometry(bs, cap, count, bytes(gen))
