"""READ/WRITE(6/10/12/16) as the ring loops see them: serve it here, or punt it to Python.

A loop serves a READ/WRITE itself only when the emulation would accept every bit of its CDB
(the command's usage data, the same bytes REPORT SUPPORTED OPERATION CODES reports) and its
length is within MAXIMUM TRANSFER LENGTH; anything else is punted, and the emulation answers
it with its field pointer.  So a CDB gets the same answer whichever path it takes.  The
native loop (native/ring.c) makes the same decisions in C; tests run both on the same CDBs
and compare the answers byte for byte.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcmu_pr import scsi
from tcmu_pr.emulation import fixed_usage
from tcmu_pr.scsi import CheckCondition

READ_OPCODES = frozenset({scsi.READ_6, scsi.READ_10, scsi.READ_12, scsi.READ_16})
WRITE_OPCODES = frozenset({scsi.WRITE_6, scsi.WRITE_10, scsi.WRITE_12, scsi.WRITE_16})
RW_OPCODES = READ_OPCODES | WRITE_OPCODES

#: Commands that may change the PR state: the native loop stops its batch after punting one,
#: so later commands of the batch see the verdict that command leaves behind.
PR_CHANGERS = frozenset(
    {scsi.PERSISTENT_RESERVE_OUT, scsi.RESERVE_6, scsi.RELEASE_6, scsi.RESERVE_10,
     scsi.RELEASE_10}
)  # fmt: skip
PR_OPCODES = PR_CHANGERS | {scsi.PERSISTENT_RESERVE_IN}

#: The CDB bits each READ/WRITE may carry and still be served by a loop.
USAGE = {op: fixed_usage(op) for op in RW_OPCODES}

#: TRANSFER LENGTH is at most 32 bits: this limit never punts anything.
NO_TRANSFER_LIMIT = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class RW:
    """A decoded READ or WRITE: byte range on the device."""

    write: bool
    offset: int
    length: int
    fua: bool


def decode_rw(
    cdb: bytes, block_size: int, num_blocks: int, max_blocks: int = NO_TRANSFER_LIMIT
) -> RW | None:
    """Decode a READ/WRITE CDB (opcode in RW_OPCODES) and range-check it (SBC-4 §5).

    None: the emulation must answer it (a bit outside the usage data, more than
    ``max_blocks``).  Raises CheckCondition LOGICAL BLOCK ADDRESS OUT OF RANGE when the LBA
    names no block, even with nothing to move, or the range runs off the medium.
    """
    op = cdb[0]
    usage = USAGE[op]
    if len(cdb) < len(usage) or any(b & ~m for b, m in zip(cdb[1:], usage[1:], strict=False)):
        return None
    fua = False
    if len(usage) == 6:
        lba = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
        blocks = cdb[4] or 256  # a transfer length of 0 means 256 blocks here
    else:
        fua = op in WRITE_OPCODES and bool(cdb[1] & 0x08)
        if len(usage) == 10:
            lba, blocks = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
        elif len(usage) == 12:
            lba, blocks = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
        else:
            lba, blocks = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
    if blocks > max_blocks:
        return None
    if lba >= num_blocks or blocks > num_blocks - lba:
        raise CheckCondition(scsi.LBA_OUT_OF_RANGE)
    return RW(op in WRITE_OPCODES, lba * block_size, blocks * block_size, fua)
