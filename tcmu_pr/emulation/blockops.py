"""Commands that touch the data: READ/WRITE slow path, SYNCHRONIZE CACHE, WRITE SAME, UNMAP,
COMPARE AND WRITE, START STOP UNIT (SBC-3 §5).

Each handler validates the whole CDB and parameter list first (raising ``CommandFailed``)
and only then calls the ``DataBackend``, so a rejected command leaves the medium untouched.
Backend ``OSError``s are left to the dispatcher, which maps them to MEDIUM ERROR sense.
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation.cdb import (
    CommandFailed,
    check_lba_range,
    check_writable,
    invalid_field,
    u,
)
from tcmu_pr.emulation.device import DeviceInfo

WRITE_SAME_10 = 0x41
VERIFY_10 = 0x2F
VERIFY_16 = 0x8F

_FUA = 0x08
_PROTECT_MASK = 0xE0  # RDPROTECT / WRPROTECT / VRPROTECT: no protection information here
_UNMAP_DESCRIPTOR = 16


def _lba_and_length(cdb: bytes) -> tuple[int, int]:
    """LBA and TRANSFER LENGTH of a READ/WRITE/VERIFY CDB of any size (SBC-3 §5.15-5.42)."""
    size = len(cdb)
    if size == 6:
        return u(cdb, 1, 3) & 0x1FFFFF, cdb[4] or 256  # 6-byte: zero means 256 blocks
    if size == 10:
        return u(cdb, 2, 4), u(cdb, 7, 2)
    if size == 12:
        return u(cdb, 2, 4), u(cdb, 6, 4)
    return u(cdb, 2, 8), u(cdb, 10, 4)


def _check_transfer(dev: DeviceInfo, cdb: bytes) -> tuple[int, int]:
    if len(cdb) != 6 and cdb[1] & _PROTECT_MASK:
        raise invalid_field()
    lba, count = _lba_and_length(cdb)
    if count > dev.max_transfer_lbas:  # SBC-3 §6.6.3: beyond MAXIMUM TRANSFER LENGTH
        raise invalid_field()
    check_lba_range(dev, lba, count)
    return lba, count


def read(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> bytes | None:
    """READ (6/10/12/16).  A zero TRANSFER LENGTH (10/12/16) reads nothing and is GOOD."""
    lba, count = _check_transfer(dev, cdb)
    if not count:
        return None
    return backend.read(lba * dev.block_size, count * dev.block_size)


def write(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """WRITE (6/10/12/16); FUA makes the data durable before GOOD.

    The data-out must be exactly TRANSFER LENGTH blocks: the kernel sizes it from the CDB,
    so a mismatch means a broken CDB and nothing is written.
    """
    check_writable(dev)
    lba, count = _check_transfer(dev, cdb)
    if len(data_out) != count * dev.block_size:
        raise invalid_field()
    if not count:
        return
    backend.write(lba * dev.block_size, data_out)
    if len(cdb) != 6 and cdb[1] & _FUA:
        backend.flush()


def verify(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """VERIFY (10/16) with BYTCHK 0 only: a range check (the medium has no ECC to check)."""
    if cdb[1] & _PROTECT_MASK or cdb[1] & 0x06:
        raise invalid_field()
    lba, count = (u(cdb, 2, 4), u(cdb, 7, 2)) if len(cdb) == 10 else (u(cdb, 2, 8), u(cdb, 10, 4))
    check_lba_range(dev, lba, count)


def synchronize_cache(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """SYNCHRONIZE CACHE (10/16): range checked, then the whole backend is flushed.

    NUMBER OF LOGICAL BLOCKS 0 means "to the end of the medium".  IMMED is honoured by
    simply completing after the flush (allowed: GOOD then means more, not less).
    """
    if len(cdb) == 10:
        lba, count = u(cdb, 2, 4), u(cdb, 7, 2)
    else:
        lba, count = u(cdb, 2, 8), u(cdb, 10, 4)
    check_lba_range(dev, lba, count)
    backend.flush()


def write_same(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """WRITE SAME (10/16) (SBC-3 §5.43-5.44).

    UNMAP set and the block is all zeros (or NDOB) on a thin device: discard, since LBPRZ
    says discarded blocks read back as zeros.  UNMAP set with non-zero data must write (the
    result has to read back as that data).  UNMAP clear always writes: Linux sends that for
    "write zeroes, keep allocated" (REQ_NOUNMAP).
    """
    check_writable(dev)
    flags = cdb[1]
    sixteen = len(cdb) == 16
    ndob = sixteen and bool(flags & 0x01)
    unmap = bool(flags & 0x08)
    if flags & _PROTECT_MASK or flags & 0x10:  # WRPROTECT, ANCHOR (ANC_SUP = 0)
        raise invalid_field()
    if unmap and not dev.thin:
        raise invalid_field()
    lba, count = (u(cdb, 2, 8), u(cdb, 10, 4)) if sixteen else (u(cdb, 2, 4), u(cdb, 7, 2))
    if count == 0 or count > dev.max_write_same_lbas:  # WSNZ = 1 in the Block Limits page
        raise invalid_field()
    check_lba_range(dev, lba, count)
    if ndob:
        if data_out:
            raise CommandFailed(scsi.PARAMETER_LIST_LENGTH_ERROR)
        block = bytes(dev.block_size)
    else:
        if len(data_out) != dev.block_size:
            raise CommandFailed(scsi.PARAMETER_LIST_LENGTH_ERROR)
        block = data_out
    offset, length = lba * dev.block_size, count * dev.block_size
    if unmap and not any(block):
        backend.discard(offset, length)
        return
    _write_repeated(backend, offset, block, count)


def _write_repeated(backend: DataBackend, offset: int, block: bytes, count: int) -> None:
    """Write ``block`` ``count`` times in chunks of at most 1 MiB (bounded memory)."""
    per_chunk = max(1, (1 << 20) // len(block))
    while count:
        n = min(count, per_chunk)
        backend.write(offset, block * n)
        offset += n * len(block)
        count -= n


def unmap(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """UNMAP (SBC-3 §5.28): every descriptor is validated before the first discard."""
    if not dev.thin:  # LBPU = 0: the command is not supported at all
        raise CommandFailed(scsi.INVALID_COMMAND_OPERATION_CODE)
    check_writable(dev)
    if cdb[1] & 0x01:  # ANCHOR, and ANC_SUP = 0
        raise invalid_field()
    length = u(cdb, 7, 2)
    if length == 0:
        return
    if length < 8 or len(data_out) < length:
        raise CommandFailed(scsi.PARAMETER_LIST_LENGTH_ERROR)
    plist = data_out[:length]
    data_len, desc_len = u(plist, 0, 2), u(plist, 2, 2)
    if data_len + 2 > length or desc_len + 8 > length:
        raise CommandFailed(scsi.PARAMETER_LIST_LENGTH_ERROR)
    count = desc_len // _UNMAP_DESCRIPTOR  # a trailing partial descriptor is ignored (SBC-3)
    if count > dev.max_unmap_descriptors:
        raise CommandFailed(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
    ranges = []
    total = 0
    for i in range(count):
        base = 8 + i * _UNMAP_DESCRIPTOR
        lba, blocks = u(plist, base, 8), u(plist, base + 8, 4)
        total += blocks
        if total > dev.max_unmap_lbas:
            raise CommandFailed(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
        if blocks:
            check_lba_range(dev, lba, blocks)
            ranges.append((lba, blocks))
    for lba, blocks in ranges:
        backend.discard(lba * dev.block_size, blocks * dev.block_size)


def compare_and_write(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """COMPARE AND WRITE (SBC-3 §5.2): data-out is N blocks to verify, then N blocks to write.

    On a mismatch nothing is written and the sense is MISCOMPARE DURING VERIFY OPERATION with
    INFORMATION = offset of the first differing byte within the compared data.
    """
    check_writable(dev)
    if cdb[1] & _PROTECT_MASK:
        raise invalid_field()
    lba, count = u(cdb, 2, 8), cdb[13]
    if count > dev.max_compare_and_write_lbas:
        raise invalid_field()
    check_lba_range(dev, lba, count)
    if count == 0:  # SBC-3: nothing compared or written, not an error
        return
    size = count * dev.block_size
    if len(data_out) != 2 * size:
        raise CommandFailed(scsi.PARAMETER_LIST_LENGTH_ERROR)
    offset = lba * dev.block_size
    mismatch = backend.compare_and_write(offset, data_out[:size], data_out[size:])
    if mismatch is not None:
        raise CommandFailed(scsi.MISCOMPARE_DURING_VERIFY, info=mismatch)
    if cdb[1] & _FUA:
        backend.flush()


def start_stop_unit(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """START STOP UNIT: the medium is always there; GOOD without doing anything.

    Hosts send it on suspend or eject; a virtual LU shared with other gateways must not
    stop for one of them, so LOEJ/START are accepted and ignored (as LIO does).
    """
