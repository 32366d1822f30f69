"""VERIFY (10/12/16) and WRITE AND VERIFY (10/12/16): compare the medium with the data-out.

There is no ECC of our own to check, so a verify without a byte compare is a range check
(VERIFY) or a read-back that surfaces I/O errors (WRITE AND VERIFY).  A byte compare reads
the range back in bounded chunks; the first difference is reported as MISCOMPARE /
MISCOMPARE DURING VERIFY OPERATION with INFORMATION = its byte offset from the start of the
compared data (SBC-4 VERIFY and WRITE AND VERIFY, "INFORMATION field").
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation.blockops import check_data_out, checked_transfer, make_durable
from tcmu_pr.emulation.cdb import check_writable, invalid_field
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import CheckCondition

VERIFY_10, VERIFY_12, VERIFY_16 = 0x2F, 0xAF, 0x8F
WRITE_AND_VERIFY_10, WRITE_AND_VERIFY_12, WRITE_AND_VERIFY_16 = 0x2E, 0xAE, 0x8E

# BYTCHK (byte 1, bits 2-1) values.
_NO_COMPARE, _COMPARE, _RESERVED, _ONE_BLOCK = 0b00, 0b01, 0b10, 0b11
_BYTCHK_FIELD = (1, 2)  # for the sense field pointer: byte 1, leftmost bit 2
_CHUNK = 1 << 20


def _bytchk(cdb: bytes) -> int:
    return (cdb[1] >> 1) & 0x03


def first_difference(a: bytes, b: bytes) -> int:
    """Offset of the first differing byte of two unequal buffers of one length.

    XOR as big integers: the highest set bit belongs to the first differing byte, found
    without a Python loop over up to a megabyte.
    """
    diff = int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
    return len(a) - 1 - (diff.bit_length() - 1) // 8


def _compare(
    dev: DeviceInfo, backend: DataBackend, lba: int, count: int, data: bytes, repeat: bool
) -> int | None:
    """Offset of the first byte of [lba, lba+count) that differs from ``data``; None if none.

    ``repeat``: ``data`` is one block, expected in every block of the range.
    """
    bs = dev.block_size
    per_chunk = max(1, _CHUNK // bs)
    done = 0
    while done < count:
        n = min(per_chunk, count - done)
        current = backend.read((lba + done) * bs, n * bs)
        expected = data * n if repeat else data[done * bs : (done + n) * bs]
        if current != expected:
            return done * bs + first_difference(current, expected)
        done += n
    return None


def _read_back(dev: DeviceInfo, backend: DataBackend, lba: int, count: int) -> None:
    """Read the range (in chunks) so a medium that cannot return it fails the command."""
    bs = dev.block_size
    per_chunk = max(1, _CHUNK // bs)
    for start in range(lba, lba + count, per_chunk):
        backend.read(start * bs, min(per_chunk, lba + count - start) * bs)


def verify(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """VERIFY (10/12/16) by BYTCHK (SBC-4 VERIFY, BYTCHK field table).

    00b: no data-out, a range check.  01b: the data-out is VERIFICATION LENGTH blocks,
    compared with the medium.  11b: the data-out is one block, compared with every block of
    the range.  10b is reserved: INVALID FIELD IN CDB.  VRPROTECT is outside the usage mask;
    DPO is accepted and means nothing here.
    """
    bytchk = _bytchk(cdb)
    if bytchk == _RESERVED:
        raise invalid_field(_BYTCHK_FIELD)
    lba, count = checked_transfer(dev, cdb)
    if bytchk == _NO_COMPARE or count == 0:  # zero length: nothing verified, not an error
        return
    one_block = bytchk == _ONE_BLOCK
    check_data_out(dev, data_out, 1 if one_block else count)
    mismatch = _compare(dev, backend, lba, count, data_out, one_block)
    if mismatch is not None:
        raise CheckCondition(scsi.MISCOMPARE_DURING_VERIFY, info=mismatch)


def write_and_verify(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> None:
    """WRITE AND VERIFY (10/12/16): write, make it durable, then verify what landed.

    BYTCHK 00b reads the range back (an I/O error fails the command); 01b also compares it
    with the data-out.  10b and 11b are reserved for this command in SBC-4 (only VERIFY
    defines the one-block form): INVALID FIELD IN CDB.  The write always reaches stable
    storage first — verifying a cache would prove nothing — so it implies FUA.  A
    miscompare is reported after the write, as the standard orders it.
    """
    check_writable(dev)
    bytchk = _bytchk(cdb)
    if bytchk in (_RESERVED, _ONE_BLOCK):
        raise invalid_field(_BYTCHK_FIELD)
    lba, count = checked_transfer(dev, cdb)
    check_data_out(dev, data_out, count)
    if not count:
        return
    backend.write(lba * dev.block_size, data_out)
    make_durable(dev, backend, True)
    if bytchk == _NO_COMPARE:
        _read_back(dev, backend, lba, count)
        return
    mismatch = _compare(dev, backend, lba, count, data_out, False)
    if mismatch is not None:
        raise CheckCondition(scsi.MISCOMPARE_DURING_VERIFY, info=mismatch)
