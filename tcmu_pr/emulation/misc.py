"""TEST UNIT READY, REQUEST SENSE and REPORT SUPPORTED OPERATION CODES (SPC-4 §6.47, §6.39, §6.35).

The emulator keeps no deferred sense: TCMU returns sense with the failing command
(autosense), so REQUEST SENSE always reports NO SENSE.  Pending unit attentions belong to
the PR core, which answers them before a command reaches the emulator.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from tcmu_pr.emulation.cdb import NO_ADDITIONAL_SENSE, invalid_field, u
from tcmu_pr.emulation.registry import Offered

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


def _timeouts(command: Offered) -> bytes:
    """Command timeouts descriptor (SPC-4 §6.35.4): DESCRIPTOR LENGTH 0Ah, no command-specific
    data, NOMINAL COMMAND PROCESSING TIMEOUT 0 (not specified: it depends on the store),
    RECOMMENDED COMMAND TIMEOUT from the dispatch table."""
    return struct.pack(">HxBII", 0x0A, 0, 0, command.timeout)


def _all_commands(commands: list[Offered], rctd: bool) -> bytes:
    """REPORTING OPTIONS 000b: one command descriptor per command (SPC-4 §6.35.2)."""
    descriptors = b"".join(
        struct.pack(
            ">BxHxBH",
            c.opcode,
            c.service_action or 0,
            (0x02 if rctd else 0) | (0x01 if c.service_action is not None else 0),  # CTDP, SERVACTV
            len(c.usage),
        )
        + (_timeouts(c) if rctd else b"")
        for c in commands
    )
    return struct.pack(">I", len(descriptors)) + descriptors


def _one_command(command: Offered | None, rctd: bool) -> bytes:
    """The one_command parameter data (SPC-4 §6.35.3): SUPPORT 011b with the CDB USAGE DATA,
    or SUPPORT 001b (not supported) and nothing else."""
    if command is None:
        return struct.pack(">BBH", 0, 0x01, 0)
    ctdp = 0x80 if rctd else 0
    data = struct.pack(">BBH", 0, ctdp | 0x03, len(command.usage)) + command.usage
    return data + (_timeouts(command) if rctd else b"")


def _find(commands: list[Offered], options: int, opcode: int, sa: int) -> Offered | None:
    """The command REPORTING OPTIONS 001b/010b/011b ask about (SPC-4 §6.35.1 table).

    001b is for an opcode without service actions and 010b for one with them: asking the
    other way round about an opcode we answer is INVALID FIELD IN CDB.  011b takes either;
    for an opcode without service actions it ignores REQUESTED SERVICE ACTION.  An opcode
    we do not answer is "not supported" under every option.
    """
    same_opcode = [c for c in commands if c.opcode == opcode]
    has_sa = any(c.service_action is not None for c in same_opcode)
    if same_opcode and ((options == 1 and has_sa) or (options == 2 and not has_sa)):
        raise invalid_field()
    if has_sa:
        return next((c for c in same_opcode if c.service_action == sa), None)
    return same_opcode[0] if same_opcode else None


def report_supported_opcodes(cdb: bytes, offered: Iterable[Offered]) -> bytes:
    """REPORT SUPPORTED OPERATION CODES, every REPORTING OPTIONS value SPC-4 defines, with
    command timeouts descriptors when RCTD is set; cut to ALLOCATION LENGTH."""
    commands = sorted(
        offered, key=lambda c: (c.opcode, -1 if c.service_action is None else c.service_action)
    )
    rctd = bool(cdb[2] & 0x80)
    options, opcode, sa = cdb[2] & 0x07, cdb[3], u(cdb, 4, 2)
    if options == 0:
        data = _all_commands(commands, rctd)
    elif options <= 3:
        data = _one_command(_find(commands, options, opcode, sa), rctd)
    else:  # 100b-111b are reserved
        raise invalid_field((2, 2))
    return data[: u(cdb, 6, 4)]
