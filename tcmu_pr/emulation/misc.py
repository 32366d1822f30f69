"""TEST UNIT READY, REQUEST SENSE and REPORT SUPPORTED OPERATION CODES (SPC-4 §6.47, §6.39, §6.35).

The emulator keeps no deferred sense: TCMU returns sense with the failing command
(autosense), so REQUEST SENSE always reports NO SENSE.  Pending unit attentions belong to
the PR core, which answers them before a command reaches the emulator.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from tcmu_pr.emulation.cdb import NO_ADDITIONAL_SENSE, cdb_length, invalid_field, u

#: MAINTENANCE IN service action of REPORT SUPPORTED OPERATION CODES.
SA_REPORT_SUPPORTED_OPCODES = 0x0C


def request_sense(cdb: bytes) -> bytes:
    """NO SENSE, in fixed (DESC=0) or descriptor (DESC=1) format; cut to ALLOCATION LENGTH."""
    if cdb[1] & 0x01:
        s = NO_ADDITIONAL_SENSE
        data = bytes([0x72, s.key, s.asc, s.ascq, 0, 0, 0, 0])
    else:
        data = NO_ADDITIONAL_SENSE.to_bytes()
    return data[: cdb[4]]


def _usage_mask(opcode: int, service_action: int | None) -> bytes:
    """A CDB USAGE DATA mask: every bit the CDB may carry (we do not narrow it per field)."""
    length = cdb_length(opcode) or 16
    mask = bytearray(b"\xff" * length)
    mask[0] = opcode
    if service_action is not None:
        mask[1] = (mask[1] & 0xE0) | service_action
    return bytes(mask)


def report_supported_opcodes(cdb: bytes, supported: Iterable[tuple[int, int | None]]) -> bytes:
    """REPORTING OPTIONS 0 (all), 1 (opcode without SA), 2 (opcode + SA); RCTD not supported."""
    commands = sorted(set(supported), key=lambda c: (c[0], -1 if c[1] is None else c[1]))
    options, opcode, sa = cdb[2] & 0x07, cdb[3], u(cdb, 4, 2)
    if cdb[2] & 0x80:  # RCTD: no timeouts descriptors
        raise invalid_field()
    if options == 0:
        descriptors = b"".join(
            struct.pack(
                ">BxHxBH", op, sa_ or 0, 0x01 if sa_ is not None else 0, cdb_length(op) or 16
            )
            for op, sa_ in commands
        )
        data = struct.pack(">I", len(descriptors)) + descriptors
    elif options in (1, 2):
        with_sa = {op for op, s in commands if s is not None}
        if (options == 1) == (opcode in with_sa):  # option 1 is for opcodes without SAs
            raise invalid_field()
        wanted = (opcode, sa if options == 2 else None)
        if wanted in commands:
            mask = _usage_mask(*wanted)
            data = struct.pack(">BBH", 0, 0x03, len(mask)) + mask  # SUPPORT 011b: as per standard
        else:
            data = struct.pack(">BBH", 0, 0x01, 0)  # SUPPORT 001b: not supported
    else:
        raise invalid_field()
    return data[: u(cdb, 6, 4)]
