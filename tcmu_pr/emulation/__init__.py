"""The SCSI commands a TCMU device answers itself, in Python (SPC-4 / SBC-4).

``Emulator(device, backend).emulate(cdb, data_out)`` returns ``(status, sense, data_in)``
for every byte string: unknown opcodes get INVALID COMMAND OPERATION CODE, short CDBs
INVALID FIELD IN CDB, backend I/O errors MEDIUM ERROR.  PERSISTENT RESERVE IN/OUT and
RESERVE/RELEASE are not answered here — the daemon routes them to the PR engine — and
arriving here they are unknown opcodes like any other.
"""

from __future__ import annotations

from collections.abc import Callable

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation import (  # fmt: skip
    atomic,
    blockops,
    capacity,
    inquiry,
    misc,
    mode,
    provisioning,
    verify,
)
from tcmu_pr.emulation.cdb import Reply, cdb_length, check_usage, invalid_field
from tcmu_pr.emulation.device import DeviceConfigError, DeviceInfo, lu_naa, lu_serial
from tcmu_pr.emulation.registry import Command, Handler, Offered, enforced_mask
from tcmu_pr.engine import cdb as pr_codes
from tcmu_pr.scsi import CheckCondition

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

#: RECOMMENDED COMMAND TIMEOUTs (seconds) reported with RCTD: one block-sized I/O may wait
#: for a store (an RBD OSD failover takes tens of seconds); a range-wide command longer.
IO = 30
RANGE = 60


def _pure(fn: Callable[[DeviceInfo, bytes], bytes]) -> Handler:
    """Adapt a handler that needs only the device description."""
    return lambda dev, _backend, cdb, _data: fn(dev, cdb)


def _mode_select(dev: DeviceInfo, _backend: DataBackend, cdb: bytes, data: bytes) -> None:
    mode.mode_select(dev, cdb, data)


def _nothing(dev: DeviceInfo, _backend: DataBackend, _cdb: bytes, _data: bytes) -> None:
    """TEST UNIT READY: the LU is always ready."""


def _thin_only(thin: str, fat: str) -> Callable[[DeviceInfo], str]:
    """A usage mask whose extra bits (UNMAP) are accepted only on a thin LU."""
    return lambda dev: thin if dev.thin else fat


def _thin(dev: DeviceInfo, _backend: DataBackend) -> bool:
    return dev.thin


# The dispatch table.  Each row: handler, then the CDB USAGE DATA — exactly the bits the
# command accepts; any other bit set is INVALID FIELD IN CDB before the handler runs (see
# registry.py).  Masks refuse every PROTECT field (no protection information), GROUP
# NUMBER (no grouping function), obsolete and reserved bits, and NACA/LINK and the vendor
# bits of CONTROL; they accept DPO (a no-op: no cache of ours) and FUA where defined.
# fmt: off
_COMMANDS: dict[int, Command] = {
    scsi.TEST_UNIT_READY: Command(_nothing, "00 00 0000 00 00"),
    scsi.REQUEST_SENSE: Command(lambda _d, _b, cdb, _x: misc.request_sense(cdb),
                                "03 01 0000 ff 00"),  # DESC, ALLOCATION LENGTH
    scsi.INQUIRY: Command(_pure(inquiry.inquiry), "12 01 ff ffff 00"),  # EVPD, PAGE, ALLOC
    scsi.READ_CAPACITY_10: Command(_pure(capacity.read_capacity_10),
                                   "25 00 ffffffff 0000 01 00"),  # LBA, PMI
    scsi.MODE_SENSE_6: Command(_pure(mode.mode_sense), "1a 08 ff ff ff 00"),  # DBD, PC+PAGE
    scsi.MODE_SENSE_10: Command(_pure(mode.mode_sense),
                                "5a 18 ff ff 000000 ffff 00"),  # LLBAA, DBD
    MODE_SELECT_6: Command(_mode_select, "15 11 0000 ff 00"),  # PF, SP
    MODE_SELECT_10: Command(_mode_select, "55 11 0000000000 ffff 00"),
    scsi.START_STOP_UNIT: Command(blockops.start_stop_unit,
                                  "1b 01 00 0f f7 00"),  # IMMED, POWER CONDITION, LOEJ, START
    scsi.READ_6: Command(blockops.read, "08 1f ffff ff 00", reads_medium=True, timeout=IO),
    scsi.READ_10: Command(blockops.read, "28 18 ffffffff 00 ffff 00", reads_medium=True,
                          timeout=IO),
    scsi.READ_12: Command(blockops.read, "a8 18 ffffffff ffffffff 00 00", reads_medium=True,
                          timeout=IO),
    scsi.READ_16: Command(blockops.read, "88 18 ffffffffffffffff ffffffff 00 00",
                          reads_medium=True, timeout=IO),
    scsi.WRITE_6: Command(blockops.write, "0a 1f ffff ff 00", timeout=IO),
    scsi.WRITE_10: Command(blockops.write, "2a 18 ffffffff 00 ffff 00", timeout=IO),
    scsi.WRITE_12: Command(blockops.write, "aa 18 ffffffff ffffffff 00 00", timeout=IO),
    scsi.WRITE_16: Command(blockops.write, "8a 18 ffffffffffffffff ffffffff 00 00", timeout=IO),
    # VERIFY: DPO, BYTCHK.  WRITE AND VERIFY: the same bits (BYTCHK 1xb is a refused value).
    verify.VERIFY_10: Command(verify.verify, "2f 16 ffffffff 00 ffff 00", reads_medium=True,
                              timeout=RANGE),
    verify.VERIFY_12: Command(verify.verify, "af 16 ffffffff ffffffff 00 00",
                              reads_medium=True, timeout=RANGE),
    verify.VERIFY_16: Command(verify.verify, "8f 16 ffffffffffffffff ffffffff 00 00",
                              reads_medium=True, timeout=RANGE),
    verify.WRITE_AND_VERIFY_10: Command(verify.write_and_verify, "2e 16 ffffffff 00 ffff 00",
                                        timeout=RANGE),
    verify.WRITE_AND_VERIFY_12: Command(verify.write_and_verify,
                                        "ae 16 ffffffff ffffffff 00 00", timeout=RANGE),
    verify.WRITE_AND_VERIFY_16: Command(verify.write_and_verify,
                                        "8e 16 ffffffffffffffff ffffffff 00 00", timeout=RANGE),
    scsi.SYNCHRONIZE_CACHE_10: Command(blockops.synchronize_cache,
                                       "35 02 ffffffff 00 ffff 00", timeout=RANGE),  # IMMED
    scsi.SYNCHRONIZE_CACHE_16: Command(blockops.synchronize_cache,
                                       "91 02 ffffffffffffffff ffffffff 00 00", timeout=RANGE),
    blockops.WRITE_SAME_10: Command(blockops.write_same, _thin_only(
        "41 08 ffffffff 00 ffff 00", "41 00 ffffffff 00 ffff 00"), timeout=RANGE),  # UNMAP
    WRITE_SAME_16: Command(blockops.write_same, _thin_only(
        "93 09 ffffffffffffffff ffffffff 00 00",  # UNMAP, NDOB
        "93 01 ffffffffffffffff ffffffff 00 00"), timeout=RANGE),
    scsi.UNMAP: Command(blockops.unmap, "42 00 00000000 00 ffff 00", timeout=RANGE,
                        offered=_thin),  # LBPU = thin
    scsi.COMPARE_AND_WRITE: Command(atomic.compare_and_write,
                                    "89 18 ffffffffffffffff 000000 ff 00 00",  # DPO, FUA
                                    reads_medium=True, timeout=IO),
    atomic.ORWRITE_16: Command(atomic.or_write, "8b 18 ffffffffffffffff ffffffff 00 00",
                               timeout=IO, offered=atomic.offers_or_write),
}

# Opcodes whose service action (CDB byte 1, bits 4-0) picks the command; byte 1 of the
# usage data carries that service action.
_SERVICE_ACTIONS: dict[tuple[int, int], Command] = {
    (scsi.SERVICE_ACTION_IN_16, capacity.SA_READ_CAPACITY_16): Command(
        _pure(capacity.read_capacity_16), "9e 10 ffffffffffffffff ffffffff 01 00"),  # PMI
    (scsi.SERVICE_ACTION_IN_16, provisioning.SA_GET_LBA_STATUS): Command(
        provisioning.get_lba_status, "9e 12 ffffffffffffffff ffffffff 17 00",  # REPORT TYPE
        reads_medium=True),
}
# fmt: on


def _pr_commands() -> list[Offered]:
    """PERSISTENT RESERVE IN/OUT (per service action) and RESERVE/RELEASE (6)/(10) as the
    daemon's PR engine takes them: every service action it decodes, with the CDB bits it
    evaluates (SCOPE and TYPE only where SPC-4 defines them for that action; reserved bits
    and CONTROL are ignored there, so reported 0).  Never dispatched here."""
    rows = [Offered(scsi.PERSISTENT_RESERVE_IN, sa,
                    bytes.fromhex(f"5e {sa:02x} 00 00 00 00 00 ffff 00"), IO)
            for sa in range(pr_codes.READ_FULL_STATUS + 1)]  # fmt: skip
    for sa in range(pr_codes.REPLACE_LOST_RESERVATION + 1):
        scope_type = "ff" if sa in _PR_OUT_SCOPED else "00"
        usage = bytes.fromhex(f"5f {sa:02x} {scope_type} 00 00 ffffffff 00")
        rows.append(Offered(scsi.PERSISTENT_RESERVE_OUT, sa, usage, IO))
    for op, size in ((scsi.RESERVE_6, 6), (scsi.RELEASE_6, 6), (scsi.RESERVE_10, 10),
                     (scsi.RELEASE_10, 10)):  # fmt: skip
        rows.append(Offered(op, None, bytes([op]) + bytes(size - 1), IO))
    return rows


#: PR OUT service actions whose SCOPE and TYPE the engine evaluates (SPC-4 table "PERSISTENT
#: RESERVE OUT service actions and valid parameters").
_PR_OUT_SCOPED = frozenset({pr_codes.RESERVE, pr_codes.RELEASE, pr_codes.PREEMPT,
                            pr_codes.PREEMPT_AND_ABORT, pr_codes.REGISTER_AND_MOVE,
                            pr_codes.REPLACE_LOST_RESERVATION})  # fmt: skip


def fixed_usage(opcode: int) -> bytes:
    """The CDB USAGE DATA of a command whose accepted bits never depend on the device
    (READ/WRITE): what the ring loops may serve without asking the emulation."""
    usage = _COMMANDS[opcode].usage
    if not isinstance(usage, str):
        raise ValueError(f"opcode {opcode:#04x}: usage depends on the device")
    return bytes.fromhex(usage)


def offered(dev: DeviceInfo, backend: DataBackend) -> list[Offered]:
    """Every command ``dev`` answers on ``backend``, as REPORT SUPPORTED OPERATION CODES
    lists them."""
    rows = [(op, None, c) for op, c in _COMMANDS.items()]
    rows += [(op, sa, c) for (op, sa), c in _SERVICE_ACTIONS.items()]
    ours = [
        Offered(op, sa, c.usage_data(dev), c.timeout)
        for op, sa, c in rows
        if c.offered(dev, backend)
    ]
    return ours + (_pr_commands() if dev.persistent_reservations else [])


def _report_opcodes(dev: DeviceInfo, backend: DataBackend, cdb: bytes, _data: bytes) -> bytes:
    return misc.report_supported_opcodes(cdb, offered(dev, backend))


_SERVICE_ACTIONS[(scsi.MAINTENANCE_IN, misc.SA_REPORT_SUPPORTED_OPCODES)] = Command(
    _report_opcodes, "a3 0c 87 ff ffff ffffffff 00 00"  # RCTD, REPORTING OPTIONS
)
_SA_OPCODES = frozenset(op for op, _ in _SERVICE_ACTIONS)


def _lookup(dev: DeviceInfo, backend: DataBackend, cdb: bytes) -> tuple[Command, int | None]:
    """The command a CDB names and its service action; CheckCondition when not offered."""
    opcode = cdb[0]
    command = _COMMANDS.get(opcode)
    if command is not None:
        if not command.offered(dev, backend):
            raise CheckCondition(scsi.INVALID_COMMAND_OPERATION_CODE)
        return command, None
    if opcode in _SA_OPCODES:
        sa = cdb[1] & 0x1F
        command = _SERVICE_ACTIONS.get((opcode, sa))
        if command is None or not command.offered(dev, backend):
            # SPC-4: an unsupported service action of a supported opcode
            raise invalid_field((1, 4))
        return command, sa
    raise CheckCondition(scsi.INVALID_COMMAND_OPERATION_CODE)


class Emulator:
    """Answers one TCMU device's non-PR commands from its ``DeviceInfo`` and ``DataBackend``.

    Stateless apart from those two, so one instance may serve commands from several threads
    as long as the backend is thread safe (``FileDataBackend`` is).
    """

    def __init__(self, device: DeviceInfo, backend: DataBackend) -> None:
        self.device = device
        self.backend = backend

    def emulate(self, cdb: bytes, data_out: bytes = b"") -> Reply:
        """Execute ``cdb`` with its data-out; (status, sense bytes or None, data-in or None).

        Order: opcode (INVALID COMMAND OPERATION CODE), CDB length, service action, then
        every bit outside the usage mask (INVALID FIELD IN CDB with a field pointer), then
        the handler's own checks, and only then the medium.
        """
        command: Command | None = None
        try:
            if not cdb:
                raise invalid_field()
            length = cdb_length(cdb[0])
            if length is None:
                raise CheckCondition(scsi.INVALID_COMMAND_OPERATION_CODE)
            if len(cdb) < length:
                # Too short to hold its own opcode's fields; an unknown opcode still says so.
                if cdb[0] not in _COMMANDS and cdb[0] not in _SA_OPCODES:
                    raise CheckCondition(scsi.INVALID_COMMAND_OPERATION_CODE)
                raise invalid_field()
            cdb = bytes(cdb[:length])  # the ring may hand over a longer buffer
            command, sa = _lookup(self.device, self.backend, cdb)
            check_usage(cdb, enforced_mask(command.usage_data(self.device), sa))
            data_in = command.handler(self.device, self.backend, cdb, bytes(data_out))
        except CheckCondition as failed:
            return scsi.CHECK_CONDITION, failed.sense_bytes(), None
        except OSError:
            reading = command is not None and command.reads_medium
            sense = scsi.READ_ERROR if reading else scsi.WRITE_ERROR
            return scsi.CHECK_CONDITION, sense.to_bytes(), None
        return scsi.GOOD, None, data_in
