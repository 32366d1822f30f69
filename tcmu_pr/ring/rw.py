"""READ/WRITE(6/10/12/16) decoding and checks shared by every Python path of the ring.

The native loop (native/ring.c) makes the same decisions in C; tests run both on the same
CDBs and compare the answers byte for byte.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcmu_pr import scsi
from tcmu_pr.scsi import Sense

#: No SCSI-level reason, the ring entry itself was unusable (iovecs, counts).
INTERNAL_TARGET_FAILURE = Sense(scsi.HARDWARE_ERROR, 0x44, 0x00)

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

_CDB_LEN = {scsi.READ_6: 6, scsi.WRITE_6: 6, scsi.READ_10: 10, scsi.WRITE_10: 10,
            scsi.READ_12: 12, scsi.WRITE_12: 12, scsi.READ_16: 16, scsi.WRITE_16: 16}  # fmt: skip


class RWError(Exception):
    """The command ends in CHECK CONDITION with ``sense``."""

    def __init__(self, sense: Sense) -> None:
        super().__init__(sense)
        self.sense = sense


@dataclass(frozen=True, slots=True)
class RW:
    """A decoded READ or WRITE: byte range on the device."""

    write: bool
    offset: int
    length: int
    fua: bool


def decode_rw(cdb: bytes, block_size: int, num_blocks: int) -> RW:
    """Decode a READ/WRITE CDB (opcode in RW_OPCODES) and range-check it (SBC-3 §5.x).

    Raises RWError: INVALID FIELD IN CDB (short CDB, RDPROTECT/WRPROTECT without PI),
    LOGICAL BLOCK ADDRESS OUT OF RANGE.
    """
    op = cdb[0]
    if len(cdb) < _CDB_LEN[op]:
        raise RWError(scsi.INVALID_FIELD_IN_CDB)
    fua = False
    if op in (scsi.READ_6, scsi.WRITE_6):
        lba = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
        blocks = cdb[4] or 256  # a transfer length of 0 means 256 blocks here
    else:
        if cdb[1] & 0xE0:  # protection information is not supported
            raise RWError(scsi.INVALID_FIELD_IN_CDB)
        fua = op in WRITE_OPCODES and bool(cdb[1] & 0x08)
        if op in (scsi.READ_10, scsi.WRITE_10):
            lba, blocks = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
        elif op in (scsi.READ_12, scsi.WRITE_12):
            lba, blocks = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
        else:
            lba, blocks = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
    if lba > num_blocks or blocks > num_blocks - lba:
        raise RWError(scsi.LBA_OUT_OF_RANGE)
    return RW(op in WRITE_OPCODES, lba * block_size, blocks * block_size, fua)


def verdict_allows(verdict: int, write: bool) -> bool:
    """Whether the PR verdict word (tcmu_pr.conflict.VERDICT_*) lets this READ/WRITE run."""
    return bool(verdict & (2 if write else 1))
