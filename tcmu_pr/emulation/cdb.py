"""CDB field access and the checks every command handler shares.

Handlers raise :class:`tcmu_pr.scsi.CheckCondition` with the sense to report instead of
returning status tuples, so the checks read top to bottom like the standard's "shall
terminate" clauses and nothing is half-done: every check runs before the first byte
touches the backend.
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import CheckCondition, Sense

# Conditions the PR core has no name for (SPC-4 Annex D); see the report to the lead.
WRITE_PROTECTED = Sense(scsi.DATA_PROTECT, 0x27, 0x00)
SAVING_PARAMETERS_NOT_SUPPORTED = Sense(scsi.ILLEGAL_REQUEST, 0x39, 0x00)
NO_ADDITIONAL_SENSE = Sense(scsi.NO_SENSE, 0x00, 0x00)

#: (status, sense bytes, data-in) — what ``Emulator.emulate`` returns.
Reply = tuple[int, bytes | None, bytes | None]


def cdb_length(opcode: int) -> int | None:
    """The fixed CDB length of an opcode's group (SPC-4 §4.2.5.1); None if variable/vendor."""
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(opcode >> 5)


def u(cdb: bytes, start: int, length: int) -> int:
    """Big-endian unsigned field of ``length`` bytes at ``start``."""
    return int.from_bytes(cdb[start : start + length], "big")


def invalid_field(field: tuple[int, int] | None = None) -> CheckCondition:
    """INVALID FIELD IN CDB; ``field`` = (byte, leftmost bit) of the field at fault."""
    return CheckCondition(scsi.INVALID_FIELD_IN_CDB, field=field)


def check_usage(cdb: bytes, mask: bytes) -> None:
    """INVALID FIELD IN CDB for any bit set outside ``mask`` (the command's accepted bits).

    SPC-4 lets a device server refuse non-zero reserved bits; doing it from the same mask
    REPORT SUPPORTED OPERATION CODES reports makes the report true by construction.
    Scanned from byte 0 and the high bit down, like the disks that do the same, so the
    pointer names the first offending bit.
    """
    for byte, (value, allowed) in enumerate(zip(cdb, mask, strict=True)):
        extra = value & ~allowed
        if extra:
            raise invalid_field((byte, extra.bit_length() - 1))


def lba_and_length(cdb: bytes) -> tuple[int, int]:
    """LBA and TRANSFER LENGTH of a CDB in the READ/WRITE layout of its size (SBC-4 §5).

    6 bytes: 21-bit LBA, length 0 means 256; 10: LBA 2-5, length 7-8; 12: LBA 2-5, length
    6-9; 16: LBA 2-9, length 10-13.  VERIFY, WRITE AND VERIFY, ORWRITE, SYNCHRONIZE CACHE and
    WRITE SAME put their LBA and block count in the same places.
    """
    size = len(cdb)
    if size == 6:
        return u(cdb, 1, 3) & 0x1FFFFF, cdb[4] or 256
    if size == 10:
        return u(cdb, 2, 4), u(cdb, 7, 2)
    if size == 12:
        return u(cdb, 2, 4), u(cdb, 6, 4)
    return u(cdb, 2, 8), u(cdb, 10, 4)


def check_transfer_length(dev: DeviceInfo, count: int) -> None:
    """SBC-4 Block Limits VPD page: more than MAXIMUM TRANSFER LENGTH is INVALID FIELD IN CDB."""
    if count > dev.max_transfer_lbas:
        raise invalid_field()


def check_lba_range(dev: DeviceInfo, lba: int, count: int) -> None:
    """LOGICAL BLOCK ADDRESS OUT OF RANGE unless [lba, lba+count) lies on the medium.

    SBC-3 checks the LBA even for a zero count, so ``lba == num_lbas`` with count 0 fails.
    """
    if lba >= dev.num_lbas or lba + count > dev.num_lbas:
        raise CheckCondition(scsi.LBA_OUT_OF_RANGE)


def check_writable(dev: DeviceInfo) -> None:
    """DATA PROTECT / WRITE PROTECTED on a read-only LU (SBC-4 write protection)."""
    if dev.read_only:
        raise CheckCondition(WRITE_PROTECTED)
