"""COMPARE AND WRITE and ORWRITE (16): read-modify-write of a range as one step.

The backend does the read and the write under its own range lock (``compare_and_write``,
``or_write``), so two such commands on the same blocks never interleave; every check runs
before it is called.  Plain WRITEs are not serialised against them (docs/emulation.md).
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation.blockops import check_data_out, checked_transfer, fua, make_durable
from tcmu_pr.emulation.cdb import check_lba_range, check_writable, invalid_field, u
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import CheckCondition

ORWRITE_16 = 0x8B


def compare_and_write(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """COMPARE AND WRITE: data-out is N blocks to verify, then N blocks to write.

    NUMBER OF LOGICAL BLOCKS above the Block Limits MAXIMUM COMPARE AND WRITE LENGTH is
    INVALID FIELD IN CDB (SBC-4 COMPARE AND WRITE); 0 is GOOD and does nothing.  On a
    mismatch nothing is written and the sense is MISCOMPARE DURING VERIFY OPERATION with
    INFORMATION = offset of the first differing byte within the compared data.  FUA (or
    the write cache off) makes the write durable before GOOD.
    """
    check_writable(dev)
    lba, count = u(cdb, 2, 8), cdb[13]
    if count > dev.max_compare_and_write_lbas:
        raise invalid_field((13, 7))
    check_lba_range(dev, lba, count)
    if count == 0:
        return
    size = count * dev.block_size
    if len(data_out) != 2 * size:
        raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
    mismatch = backend.compare_and_write(lba * dev.block_size, data_out[:size], data_out[size:])
    if mismatch is not None:
        raise CheckCondition(scsi.MISCOMPARE_DURING_VERIFY, info=mismatch)
    make_durable(dev, backend, fua(cdb))


def or_write(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """ORWRITE (16): each byte of the range becomes (medium OR data-out), atomically.

    SBC-4 ORWRITE with the ORWRITE(16) fixed BMOP of 000b (logical OR); ORPROTECT is outside
    the usage mask.  Checked like WRITE: write protection, MAXIMUM TRANSFER LENGTH, range,
    a data-out of exactly TRANSFER LENGTH blocks.  Offered only on backends whose
    ``or_write`` is atomic (``can_or_write``).
    """
    check_writable(dev)
    lba, count = checked_transfer(dev, cdb)
    check_data_out(dev, data_out, count)
    if not count:
        return
    backend.or_write(lba * dev.block_size, data_out)
    make_durable(dev, backend, fua(cdb))


def offers_or_write(_dev: DeviceInfo, backend: DataBackend) -> bool:
    """Whether the backend can OR a range atomically (the file backend can, RBD cannot)."""
    return bool(getattr(backend, "can_or_write", False))
