"""Commands that move or drop data: READ/WRITE slow path, SYNCHRONIZE CACHE, WRITE SAME,
UNMAP, START STOP UNIT (SBC-4 §5); VERIFY is in verify.py, COMPARE AND WRITE in atomic.py.

The dispatcher has already refused every CDB bit outside the command's usage mask (PROTECT
fields, GROUP NUMBER, reserved bits).  Each handler then checks, in this order: write
protection, field values, MAXIMUM TRANSFER LENGTH, the LBA range, the data-out length —
and only then calls the ``DataBackend``, so a rejected command leaves the medium untouched.
Backend ``OSError``s are left to the dispatcher, which maps them to MEDIUM ERROR sense.
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation.cdb import (
    check_lba_range,
    check_transfer_length,
    check_writable,
    invalid_field,
    lba_and_length,
    u,
)
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import CheckCondition

WRITE_SAME_10 = 0x41

FUA = 0x08  # byte 1 of every 10/12/16-byte write-type CDB
_UNMAP_DESCRIPTOR = 16


def fua(cdb: bytes) -> bool:
    return len(cdb) != 6 and bool(cdb[1] & FUA)


def make_durable(dev: DeviceInfo, backend: DataBackend, forced: bool) -> None:
    """Flush when the write must be on stable storage before GOOD.

    ``forced``: FUA, or a command that implies it (WRITE AND VERIFY).  With the write cache
    off (WCE=0 in the Caching mode page) every write must be durable at GOOD (SBC-4 Caching
    mode page), so the flush is unconditional then: the mode page tells the truth.
    """
    if forced or not dev.write_cache:
        backend.flush()


def checked_transfer(dev: DeviceInfo, cdb: bytes) -> tuple[int, int]:
    """LBA and block count of a READ/WRITE-layout CDB, after the length and range checks."""
    lba, count = lba_and_length(cdb)
    check_transfer_length(dev, count)
    check_lba_range(dev, lba, count)
    return lba, count


def check_data_out(dev: DeviceInfo, data_out: bytes, count: int) -> None:
    """The data-out must be exactly ``count`` blocks: the kernel sizes it from the CDB, so a
    mismatch means a broken CDB and nothing is written."""
    if len(data_out) != count * dev.block_size:
        raise invalid_field()


def read(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> bytes | None:
    """READ (6/10/12/16).  A zero TRANSFER LENGTH (10/12/16) reads nothing and is GOOD.

    DPO and FUA are accepted: the backend has no cache of ours to bypass or spare.
    """
    lba, count = checked_transfer(dev, cdb)
    if not count:
        return None
    return backend.read(lba * dev.block_size, count * dev.block_size)


def write(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """WRITE (6/10/12/16); durable before GOOD with FUA or with the write cache off."""
    check_writable(dev)
    lba, count = checked_transfer(dev, cdb)
    check_data_out(dev, data_out, count)
    if not count:
        return
    backend.write(lba * dev.block_size, data_out)
    make_durable(dev, backend, fua(cdb))


def synchronize_cache(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """SYNCHRONIZE CACHE (10/16): the range is checked first, then the whole backend flushed.

    NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium"; an LBA or range off the
    medium is LBA OUT OF RANGE and flushes nothing.  Flushing more than the range is allowed
    (SBC-4: the device server may synchronize more).  IMMED=1 would let us answer before the
    flush; we answer after it, which promises more, never less.
    """
    lba, count = lba_and_length(cdb)
    check_lba_range(dev, lba, count)
    backend.flush()


def write_same(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """WRITE SAME (10/16).

    UNMAP set and the block is all zeros (or NDOB) on a thin device: discard, since LBPRZ
    says discarded blocks read back as zeros.  UNMAP set with non-zero data must write (the
    result has to read back as that data).  UNMAP clear always writes: Linux sends that for
    "write zeroes, keep allocated" (REQ_NOUNMAP).  WRPROTECT and ANCHOR are outside the
    usage mask, and so is UNMAP on a fully provisioned LU.
    """
    check_writable(dev)
    flags = cdb[1]
    ndob = len(cdb) == 16 and bool(flags & 0x01)
    unmap = bool(flags & 0x08)
    lba, count = lba_and_length(cdb)
    if count == 0 or count > dev.max_write_same_lbas:  # WSNZ = 1 in the Block Limits page
        raise invalid_field()
    check_lba_range(dev, lba, count)
    if ndob:
        if data_out:
            raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
        block = bytes(dev.block_size)
    else:
        if len(data_out) != dev.block_size:
            raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
        block = data_out
    offset, length = lba * dev.block_size, count * dev.block_size
    if unmap and not any(block):
        backend.discard(offset, length)
    else:
        _write_repeated(backend, offset, block, count)
    make_durable(dev, backend, False)


def _write_repeated(backend: DataBackend, offset: int, block: bytes, count: int) -> None:
    """Write ``block`` ``count`` times in chunks of at most 1 MiB (bounded memory)."""
    per_chunk = max(1, (1 << 20) // len(block))
    while count:
        n = min(count, per_chunk)
        backend.write(offset, block * n)
        offset += n * len(block)
        count -= n


def unmap(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """UNMAP: every descriptor is validated before the first discard.

    Offered only on a thin LU (LBPU=1); elsewhere the opcode is unknown.  ANCHOR is outside
    the usage mask (ANC_SUP = 0).
    """
    check_writable(dev)
    length = u(cdb, 7, 2)
    if length == 0:
        return
    if length < 8 or len(data_out) < length:
        raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
    plist = data_out[:length]
    data_len, desc_len = u(plist, 0, 2), u(plist, 2, 2)
    if data_len + 2 > length or desc_len + 8 > length:
        raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
    count = desc_len // _UNMAP_DESCRIPTOR  # a trailing partial descriptor is ignored (SBC-3)
    if count > dev.max_unmap_descriptors:
        raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
    ranges = []
    total = 0
    for i in range(count):
        base = 8 + i * _UNMAP_DESCRIPTOR
        lba, blocks = u(plist, base, 8), u(plist, base + 8, 4)
        total += blocks
        if total > dev.max_unmap_lbas:
            raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
        if blocks:
            check_lba_range(dev, lba, blocks)
            ranges.append((lba, blocks))
    for lba, blocks in ranges:
        backend.discard(lba * dev.block_size, blocks * dev.block_size)
    if ranges:
        make_durable(dev, backend, False)


def start_stop_unit(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """START STOP UNIT: the medium is always there; GOOD without doing anything.

    Hosts send it on suspend or eject; a virtual LU shared with other gateways must not
    stop for one of them, so LOEJ/START are accepted and ignored (as LIO does).
    """
