"""The SCSI commands a TCMU device answers itself, in Python (SPC-4 / SBC-3).

``Emulator(device, backend).emulate(cdb, data_out)`` returns ``(status, sense, data_in)``
for every byte string: unknown opcodes get INVALID COMMAND OPERATION CODE, short CDBs
INVALID FIELD IN CDB, backend I/O errors MEDIUM ERROR.  PERSISTENT RESERVE IN/OUT and
RESERVE/RELEASE are not answered here — the daemon routes them to the PR engine — and
arriving here they are unknown opcodes like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation import blockops, capacity, inquiry, misc, mode, provisioning
from tcmu_pr.emulation.cdb import CommandFailed, Reply, cdb_length, invalid_field
from tcmu_pr.emulation.device import DeviceConfigError, DeviceInfo, lu_naa, lu_serial

__all__ = [
    "DeviceConfigError",
    "DeviceInfo",
    "Emulator",
    "Reply",
    "lu_naa",
    "lu_serial",
]

MODE_SELECT_6 = 0x15
MODE_SELECT_10 = 0x55
WRITE_SAME_16 = scsi.WRITE_SAME_16

Handler = Callable[[DeviceInfo, DataBackend, bytes, bytes], bytes | None]


def _pure(fn: Callable[[DeviceInfo, bytes], bytes]) -> Handler:
    """Adapt a handler that needs only the device description."""
    return lambda dev, _backend, cdb, _data: fn(dev, cdb)


def _mode_select(dev: DeviceInfo, _backend: DataBackend, cdb: bytes, data: bytes) -> None:
    mode.mode_select(dev, cdb, data)


def _nothing(dev: DeviceInfo, _backend: DataBackend, _cdb: bytes, _data: bytes) -> None:
    """TEST UNIT READY: the LU is always ready."""


@dataclass(frozen=True, slots=True)
class _Command:
    handler: Handler
    reads_medium: bool = False  # an I/O error is then a READ error, else a WRITE error


_COMMANDS: dict[int, _Command] = {
    scsi.TEST_UNIT_READY: _Command(_nothing),
    scsi.REQUEST_SENSE: _Command(lambda _d, _b, cdb, _x: misc.request_sense(cdb)),
    scsi.INQUIRY: _Command(_pure(inquiry.inquiry)),
    scsi.READ_CAPACITY_10: _Command(_pure(capacity.read_capacity_10)),
    scsi.MODE_SENSE_6: _Command(_pure(mode.mode_sense)),
    scsi.MODE_SENSE_10: _Command(_pure(mode.mode_sense)),
    MODE_SELECT_6: _Command(_mode_select),
    MODE_SELECT_10: _Command(_mode_select),
    scsi.START_STOP_UNIT: _Command(blockops.start_stop_unit),
    scsi.READ_6: _Command(blockops.read, reads_medium=True),
    scsi.READ_10: _Command(blockops.read, reads_medium=True),
    scsi.READ_12: _Command(blockops.read, reads_medium=True),
    scsi.READ_16: _Command(blockops.read, reads_medium=True),
    scsi.WRITE_6: _Command(blockops.write),
    scsi.WRITE_10: _Command(blockops.write),
    scsi.WRITE_12: _Command(blockops.write),
    scsi.WRITE_16: _Command(blockops.write),
    blockops.VERIFY_10: _Command(blockops.verify),
    blockops.VERIFY_16: _Command(blockops.verify),
    scsi.SYNCHRONIZE_CACHE_10: _Command(blockops.synchronize_cache),
    scsi.SYNCHRONIZE_CACHE_16: _Command(blockops.synchronize_cache),
    blockops.WRITE_SAME_10: _Command(blockops.write_same),
    WRITE_SAME_16: _Command(blockops.write_same),
    scsi.UNMAP: _Command(blockops.unmap),
    scsi.COMPARE_AND_WRITE: _Command(blockops.compare_and_write, reads_medium=True),
}

# Opcodes whose service action (CDB byte 1, bits 4-0) picks the command.
_SERVICE_ACTIONS: dict[tuple[int, int], _Command] = {
    (scsi.SERVICE_ACTION_IN_16, capacity.SA_READ_CAPACITY_16): _Command(
        _pure(capacity.read_capacity_16)
    ),
    (scsi.SERVICE_ACTION_IN_16, provisioning.SA_GET_LBA_STATUS): _Command(
        provisioning.get_lba_status, reads_medium=True
    ),
}


def _supported() -> list[tuple[int, int | None]]:
    return [(op, None) for op in _COMMANDS] + [
        *_SERVICE_ACTIONS,
        (scsi.MAINTENANCE_IN, misc.SA_REPORT_SUPPORTED_OPCODES),
    ]


def _report_opcodes(_dev: DeviceInfo, _backend: DataBackend, cdb: bytes, _data: bytes) -> bytes:
    return misc.report_supported_opcodes(cdb, _supported())


_SERVICE_ACTIONS[(scsi.MAINTENANCE_IN, misc.SA_REPORT_SUPPORTED_OPCODES)] = _Command(
    _report_opcodes
)
_SA_OPCODES = frozenset(op for op, _ in _SERVICE_ACTIONS)


def _lookup(cdb: bytes) -> _Command:
    """The command a CDB names; CommandFailed for unknown opcodes and service actions."""
    opcode = cdb[0]
    if opcode in _COMMANDS:
        return _COMMANDS[opcode]
    if opcode in _SA_OPCODES:
        command = _SERVICE_ACTIONS.get((opcode, cdb[1] & 0x1F))
        if command is None:  # SPC-4 §4.2.5.3: unsupported service action of a known opcode
            raise invalid_field()
        return command
    raise CommandFailed(scsi.INVALID_COMMAND_OPERATION_CODE)


class Emulator:
    """Answers one TCMU device's non-PR commands from its ``DeviceInfo`` and ``DataBackend``.

    Stateless apart from those two, so one instance may serve commands from several threads
    as long as the backend is thread safe (``FileDataBackend`` is).
    """

    def __init__(self, device: DeviceInfo, backend: DataBackend) -> None:
        self.device = device
        self.backend = backend

    def emulate(self, cdb: bytes, data_out: bytes = b"") -> Reply:
        """Execute ``cdb`` with its data-out; (status, sense bytes or None, data-in or None)."""
        command: _Command | None = None
        try:
            if not cdb:
                raise invalid_field()
            length = cdb_length(cdb[0])
            if length is None:
                raise CommandFailed(scsi.INVALID_COMMAND_OPERATION_CODE)
            if len(cdb) < length:
                # Too short to hold its own opcode's fields; an unknown opcode still says so.
                if cdb[0] not in _COMMANDS and cdb[0] not in _SA_OPCODES:
                    raise CommandFailed(scsi.INVALID_COMMAND_OPERATION_CODE)
                raise invalid_field()
            cdb = bytes(cdb[:length])  # the ring may hand over a longer buffer
            command = _lookup(cdb)
            if cdb[-1] & 0x04:  # NACA: ACA is not supported (SAM-5 §5.9)
                raise invalid_field()
            data_in = command.handler(self.device, self.backend, cdb, bytes(data_out))
        except CommandFailed as failed:
            return scsi.CHECK_CONDITION, failed.sense.to_bytes(info=failed.info), None
        except OSError:
            reading = command is not None and command.reads_medium
            sense = scsi.READ_ERROR if reading else scsi.WRITE_ERROR
            return scsi.CHECK_CONDITION, sense.to_bytes(), None
        return scsi.GOOD, None, data_in
