"""What one supported command is: its handler, the CDB bits it accepts, and its timeout.

A row of the emulator's dispatch table is a :class:`Command`.  Its ``usage`` is the CDB
USAGE DATA that REPORT SUPPORTED OPERATION CODES returns (SPC-4 §6.35.3) and, at the same
time, the mask the dispatcher enforces: a CDB bit outside it is INVALID FIELD IN CDB before
the handler runs.  One string serves both, so the report cannot drift from what we do.

Writing masks: hex digits, spaces free, one group per field, e.g. READ(10) is
``"28 18 ffffffff 00 ffff 00"`` (opcode, DPO+FUA, LBA, GROUP NUMBER refused, TRANSFER
LENGTH, CONTROL with NACA/LINK refused).  For a service-action command byte 1 carries the
service action code in bits 4-0, as the standard's usage data does; the dispatcher has
already matched those bits, so they are not re-checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation.device import DeviceInfo

Handler = Callable[[DeviceInfo, DataBackend, bytes, bytes], bytes | None]
#: A usage mask, or a function of the device when what is accepted depends on it.
Usage = str | Callable[[DeviceInfo], str]


def _always(_dev: DeviceInfo, _backend: DataBackend) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Command:
    """One row of the dispatch table."""

    handler: Handler
    usage: Usage
    #: An I/O error is then MEDIUM ERROR / UNRECOVERED READ ERROR, else WRITE ERROR.
    reads_medium: bool = False
    #: RECOMMENDED COMMAND TIMEOUT in seconds for RCTD (0: not specified).
    timeout: int = 0
    #: Whether this device offers the command at all; if not, it is an unknown opcode (and
    #: not reported), e.g. UNMAP on a fully provisioned LU.
    offered: Callable[[DeviceInfo, DataBackend], bool] = _always

    def usage_data(self, dev: DeviceInfo) -> bytes:
        """The CDB USAGE DATA for ``dev`` (opcode first, service action in byte 1)."""
        text = self.usage if isinstance(self.usage, str) else self.usage(dev)
        return bytes.fromhex(text)


class Offered(NamedTuple):
    """A command as this device offers it: what REPORT SUPPORTED OPERATION CODES lists."""

    opcode: int
    service_action: int | None
    usage: bytes
    timeout: int


def enforced_mask(usage: bytes, service_action: int | None) -> bytes:
    """The bits the dispatcher lets through: ``usage`` with the opcode (and SA) taken as is."""
    mask = bytearray(usage)
    mask[0] = 0xFF
    if service_action is not None:
        mask[1] |= 0x1F
    return bytes(mask)
