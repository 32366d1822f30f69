"""CDB field access and the one way a command handler fails.

Handlers raise ``CommandFailed`` with the sense to report instead of returning status
tuples, so the checks read top to bottom like the standard's "shall terminate" clauses and
nothing is half-done: every check runs before the first byte touches the backend.
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import Sense

# Conditions the PR core has no name for (SPC-4 Annex D); see the report to the lead.
WRITE_PROTECTED = Sense(scsi.DATA_PROTECT, 0x27, 0x00)
SAVING_PARAMETERS_NOT_SUPPORTED = Sense(scsi.ILLEGAL_REQUEST, 0x39, 0x00)
NO_ADDITIONAL_SENSE = Sense(scsi.NO_SENSE, 0x00, 0x00)

#: (status, sense bytes, data-in) — what ``Emulator.emulate`` returns.
Reply = tuple[int, bytes | None, bytes | None]


class CommandFailed(Exception):
    """Terminate the command with CHECK CONDITION and this sense (``info``: INFORMATION)."""

    def __init__(self, sense: Sense, info: int | None = None) -> None:
        super().__init__(sense)
        self.sense = sense
        self.info = info


def cdb_length(opcode: int) -> int | None:
    """The fixed CDB length of an opcode's group (SPC-4 §4.2.5.1); None if variable/vendor."""
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(opcode >> 5)


def u(cdb: bytes, start: int, length: int) -> int:
    """Big-endian unsigned field of ``length`` bytes at ``start``."""
    return int.from_bytes(cdb[start : start + length], "big")


def invalid_field() -> CommandFailed:
    return CommandFailed(scsi.INVALID_FIELD_IN_CDB)


def check_lba_range(dev: DeviceInfo, lba: int, count: int) -> None:
    """LOGICAL BLOCK ADDRESS OUT OF RANGE unless [lba, lba+count) lies on the medium.

    SBC-3 checks the LBA even for a zero count, so ``lba == num_lbas`` with count 0 fails.
    """
    if lba >= dev.num_lbas or lba + count > dev.num_lbas:
        raise CommandFailed(scsi.LBA_OUT_OF_RANGE)


def check_writable(dev: DeviceInfo) -> None:
    if dev.read_only:
        raise CommandFailed(WRITE_PROTECTED)
