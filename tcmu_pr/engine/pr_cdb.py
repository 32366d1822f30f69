"""Build PERSISTENT RESERVE IN/OUT CDBs and parameter lists, the way an initiator would.

The engine parses these; this side only builds them, for the demo, the benchmark, the CLI
tests and anyone scripting ``tcmu-pr pr exec``.  Layouts: SPC-4 §6.15 (PR IN), §6.16 (PR OUT,
basic parameter list of 24 bytes, table 172).
"""

from __future__ import annotations

import struct

from tcmu_pr import scsi

# The service action codes are the engine's (one definition); re-exported for builders.
from tcmu_pr.engine.cdb import (
    CLEAR,
    PREEMPT,
    PREEMPT_AND_ABORT,
    READ_FULL_STATUS,
    READ_KEYS,
    READ_RESERVATION,
    REGISTER,
    REGISTER_AND_IGNORE_EXISTING_KEY,
    REGISTER_AND_MOVE,
    RELEASE,
    REPORT_CAPABILITIES,
    RESERVE,
)

__all__ = [
    "ALL_TG_PT", "APTPL", "CLEAR", "PREEMPT", "PREEMPT_AND_ABORT", "READ_FULL_STATUS",
    "READ_KEYS", "READ_RESERVATION", "REGISTER", "REGISTER_AND_IGNORE_EXISTING_KEY",
    "REGISTER_AND_MOVE", "RELEASE", "REPORT_CAPABILITIES", "RESERVE", "SPEC_I_PT",
    "parse_read_keys", "pr_in", "pr_out", "read10", "write10",
]  # fmt: skip

# Parameter list flags, byte 20.
SPEC_I_PT = 0x08
ALL_TG_PT = 0x04
APTPL = 0x01


def pr_out(
    service_action: int,
    *,
    key: int = 0,
    sa_key: int = 0,
    pr_type: int = 0,
    flags: int = 0,
) -> tuple[bytes, bytes]:
    """CDB and 24-byte basic parameter list of a PERSISTENT RESERVE OUT (LU scope)."""
    params = struct.pack(">QQ4sB3x", key, sa_key, b"\0" * 4, flags)
    cdb = struct.pack(
        ">BBBxxIB",
        scsi.PERSISTENT_RESERVE_OUT,
        service_action & 0x1F,
        pr_type & 0x0F,
        len(params),
        0,
    )
    return cdb, params


def pr_in(service_action: int, allocation_length: int = 8192) -> bytes:
    """CDB of a PERSISTENT RESERVE IN."""
    return struct.pack(
        ">BB5xHB", scsi.PERSISTENT_RESERVE_IN, service_action & 0x1F, allocation_length, 0
    )


def write10(lba: int = 0, blocks: int = 1) -> bytes:
    """A WRITE(10) CDB: what the conflict check is asked about for a data write."""
    return struct.pack(">BBIBHB", scsi.WRITE_10, 0, lba, 0, blocks, 0)


def read10(lba: int = 0, blocks: int = 1) -> bytes:
    return struct.pack(">BBIBHB", scsi.READ_10, 0, lba, 0, blocks, 0)


def parse_read_keys(data: bytes) -> tuple[int, list[int]]:
    """(generation, keys) from READ KEYS parameter data (SPC-4 §6.15.2)."""
    generation, length = struct.unpack_from(">II", data)
    body = data[8 : 8 + length]
    return generation, [k for (k,) in struct.iter_unpack(">Q", body[: len(body) // 8 * 8])]
