"""The change number and the generation: what blksnap calls snap_number and generation_id.

Every write marks its blocks with the current change number (1..255; 0 in the map means
"not changed in this generation"). A snapshot freezes the map and moves to the next
number. After 255 there is no next byte value: a new generation starts (fresh UUID, the map
zeroed, number 1), and a backup tool that sees another generation id reads everything once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

FIRST = 1
LAST = 255


@dataclass(frozen=True, slots=True)
class CbtInfo:
    """blksnap's CBT info, the fields ``tcmu-pr cbt info`` prints (and only those)."""

    device_capacity: int
    block_size: int
    block_count: int
    generation_id: str
    changes_number: int

    def as_json(self) -> dict[str, int | str]:
        return {
            "device_capacity": self.device_capacity,
            "block_size": self.block_size,
            "block_count": self.block_count,
            "generation_id": self.generation_id,
            "changes_number": self.changes_number,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """What a snapshot does to the live map: the next number, and whether the generation
    (and so the map's contents) starts over."""

    changes_number: int
    new_generation: bool


def next_number(current: int) -> Step:
    """The number after ``current``; past LAST a new generation restarts at FIRST."""
    if not FIRST <= current <= LAST:
        raise ValueError(f"change number {current} outside {FIRST}..{LAST}")
    if current == LAST:
        return Step(FIRST, True)
    return Step(current + 1, False)


def new_generation_id() -> bytes:
    """16 random bytes (a UUID4): never reused, so a stale map never looks current."""
    return uuid.uuid4().bytes


def generation_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=bytes(raw)))
