"""May this I_T nexus run this CDB under this PR state?  SPC's conflict tables, as data.

Persistent reservations: SPC-4 §5.12.x "SPC commands that are allowed in the presence of
various reservations" and SBC-3 §4.17 (its block-command counterpart).  Every opcode (and
service action where it matters) is put in an *access class*; the class's row of
:data:`_TABLE` then gives the answer per reservation type and per "is the nexus registered".
The reservation holder may run everything, so the table only speaks for non-holders.  The
shape follows LIO's core_scsi3_pr_seq_non_holder, with these deliberate differences:

- LIO decides the commands its switch does not name by their data direction, which a CDB
  alone does not carry.  We name every SPC-4/SBC-3 opcode a block device answers; anything
  else (vendor, obsolete, unknown service action, empty or truncated CDB) is treated like a
  WRITE, LIO's data-out branch: a fenced initiator gets RESERVATION CONFLICT for it before
  the handler looks at the CDB, as in LIO, where the reservation check precedes parsing.
- MODE SENSE, SECURITY PROTOCOL IN etc. follow SPC (a READ-like row, so conflict for a
  registered non-holder under Exclusive Access); LIO lets every registrant run them.
- A PERSISTENT RESERVE OUT service action LIO does not know is a conflict there; here it is
  allowed, so that the engine answers it with INVALID FIELD IN CDB.
- RESERVE/RELEASE(6/10) under a persistent reservation: SPC-4 §5.12.3 (exceptions to SPC-2
  RESERVE and RELEASE) makes them a GOOD no-op from the holder or, under a registrants-only
  or all-registrants type, from a registrant, and otherwise SPC-2 behaviour, i.e. RESERVATION
  CONFLICT since registrations exist.  That is exactly a WRITE row; LIO defers to its
  RESERVE/RELEASE handlers instead.

Scope: only conflicts caused by the *presence* of a reservation are answered here.  Rules
of the PR commands themselves that hold without one (a PR OUT other than REGISTER from an
unregistered nexus, RESERVE(6) while registrations exist) belong to the engine.

SCSI-2 reservations (RESERVE(6)/(10), SPC-2 §5.5.1 and its annex B tables): held by another
I_T nexus, every command conflicts except INQUIRY, REQUEST SENSE, REPORT LUNS, LOG SENSE,
READ CAPACITY(10)/(16), RELEASE(6)/(10) (GOOD, nothing released), PREVENT ALLOW MEDIUM
REMOVAL with PREVENT 0 and START STOP UNIT with START 1 and POWER CONDITION 0.  PERSISTENT
RESERVE IN/OUT conflict too (SPC-2 §7.11/§7.12).  LIO exempts only INQUIRY and RELEASE.

:func:`verdict` packs the READ(10)/WRITE(10) answers into the word the native ring loop
reads per device.  READ(6/12/16/32) and WRITE(6/12/16/32) are in the same rows as READ(10)
and WRITE(10), so one bit stands for each whole family.
"""

from __future__ import annotations

from tcmu_pr import scsi
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import (
    ALL_REGISTRANTS_TYPES,
    EXCLUSIVE_ACCESS,
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS,
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY,
    WRITE_EXCLUSIVE,
    WRITE_EXCLUSIVE_ALL_REGISTRANTS,
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    PRState,
)
from tcmu_pr.ring.abi import VERDICT_READ, VERDICT_UA, VERDICT_WRITE

# Access classes: which row of the table a command is in.
ALWAYS = 0  # allowed from every I_T nexus (INQUIRY, REPORT LUNS, PR IN, ...)
READ = 1  # reads data or LU state: "reads shared" under the write-exclusive types
WRITE = 2  # writes data or LU state, and anything unknown
REGISTERED = 3  # PR OUT CLEAR/PREEMPT/PREEMPT AND ABORT/RELEASE: registrants only
HOLDER_ONLY = 4  # PR OUT RESERVE and REGISTER AND MOVE: conflict for every non-holder

A, C = True, False  # Allowed, Conflict: the table's two words

# Persistent reservation held by another I_T nexus; columns are (registered, not registered)
# per type, WE = Write Exclusive, EA = Exclusive Access, RO = registrants only, AR = all
# registrants (under AR a registrant is a holder, so its "reg" cell is never consulted).
#                 WE     EA     WE-RO  EA-RO  WE-AR  EA-AR
#                 r  n   r  n   r  n   r  n   r  n   r  n   (r: registered, n: not)
# fmt: off
_TABLE: dict[int, tuple[bool, ...]] = {
    ALWAYS:      (A, A,  A, A,  A, A,  A, A,  A, A,  A, A),
    READ:        (A, A,  C, C,  A, A,  A, C,  A, A,  A, C),
    WRITE:       (C, C,  C, C,  A, C,  A, C,  A, C,  A, C),
    REGISTERED:  (A, C,  A, C,  A, C,  A, C,  A, C,  A, C),
    HOLDER_ONLY: (C, C,  C, C,  C, C,  C, C,  C, C,  C, C),
}
# fmt: on

_TYPE_COLUMN = {
    WRITE_EXCLUSIVE: 0,
    EXCLUSIVE_ACCESS: 2,
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY: 4,
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY: 6,
    WRITE_EXCLUSIVE_ALL_REGISTRANTS: 8,
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS: 10,
}
# A type outside SPC's six (a corrupt or future blob) is treated as Exclusive Access, the
# strictest; LIO answers it with a conflict for everything.
_UNKNOWN_TYPE_COLUMN = _TYPE_COLUMN[EXCLUSIVE_ACCESS]

# A command's row packed in one int: access class, plus this bit when a SCSI-2 reservation
# held by another I_T nexus does not block it.
_SCSI2_OK = 8


def _rows(access: int, *opcodes: int) -> dict[int, int]:
    return dict.fromkeys(opcodes, access)


# Opcodes whose row does not depend on other CDB bytes (SPC-4 / SBC-3 opcode names).
_OPCODE_ROWS: dict[int, int] = {
    **_rows(
        ALWAYS,
        0x00,  # TEST UNIT READY (SPC-4: allowed; SPC-2 devices may conflict: we don't)
        0x5E,  # PERSISTENT RESERVE IN
        0x86,  # ACCESS CONTROL IN
        0x87,  # ACCESS CONTROL OUT
        0xAB,  # SERVICE ACTION IN(12): READ MEDIA SERIAL NUMBER
    ),
    **_rows(
        ALWAYS | _SCSI2_OK,
        0x03,  # REQUEST SENSE
        0x12,  # INQUIRY
        0x25,  # READ CAPACITY(10)
        0x4D,  # LOG SENSE
        0xA0,  # REPORT LUNS
    ),
    **_rows(
        READ,
        0x08,  # READ(6)
        0x28,  # READ(10)
        0xA8,  # READ(12)
        0x88,  # READ(16)
        0x1A,  # MODE SENSE(6)
        0x5A,  # MODE SENSE(10)
        0x1C,  # RECEIVE DIAGNOSTIC RESULTS
        0x3C,  # READ BUFFER
        0x8C,  # READ ATTRIBUTE
        0xA2,  # SECURITY PROTOCOL IN
        0x2F,  # VERIFY(10)
        0xAF,  # VERIFY(12)
        0x8F,  # VERIFY(16)
        0x34,  # PRE-FETCH(10)
        0x90,  # PRE-FETCH(16)
        0x37,  # READ DEFECT DATA(10)
        0xB7,  # READ DEFECT DATA(12)
        0x3E,  # READ LONG(10)
        0x52,  # XDREAD(10)
    ),
    **_rows(
        WRITE,
        0x0A,  # WRITE(6)
        0x2A,  # WRITE(10)
        0xAA,  # WRITE(12)
        0x8A,  # WRITE(16)
        0x2E,  # WRITE AND VERIFY(10)
        0xAE,  # WRITE AND VERIFY(12)
        0x8E,  # WRITE AND VERIFY(16)
        0x41,  # WRITE SAME(10)
        0x93,  # WRITE SAME(16)
        0x89,  # COMPARE AND WRITE
        0x8B,  # ORWRITE(16)
        0x9C,  # WRITE ATOMIC(16)
        0x3F,  # WRITE LONG(10)
        0x42,  # UNMAP
        0x35,  # SYNCHRONIZE CACHE(10)
        0x91,  # SYNCHRONIZE CACHE(16)
        0x04,  # FORMAT UNIT
        0x07,  # REASSIGN BLOCKS
        0x48,  # SANITIZE
        0x15,  # MODE SELECT(6)
        0x55,  # MODE SELECT(10)
        0x4C,  # LOG SELECT
        0x1D,  # SEND DIAGNOSTIC
        0x3B,  # WRITE BUFFER
        0x8D,  # WRITE ATTRIBUTE
        0xB5,  # SECURITY PROTOCOL OUT
        0x50,  # XDWRITE(10)
        0x51,  # XPWRITE(10)
        0x53,  # XDWRITEREAD(10)
        0x83,  # EXTENDED COPY / POPULATE TOKEN / WRITE USING TOKEN
        0x84,  # RECEIVE COPY RESULTS / RECEIVE ROD TOKEN INFORMATION
        0xA4,  # MAINTENANCE OUT: SET TARGET PORT GROUPS, SET TIMESTAMP, ...
        0x9F,  # SERVICE ACTION OUT(16): WRITE LONG(16)
        0x16,  # RESERVE(6)   (see the module docstring)
        0x56,  # RESERVE(10)
    ),
    **_rows(
        WRITE | _SCSI2_OK,
        0x17,  # RELEASE(6): from a non-holder GOOD without releasing (SPC-2)
        0x57,  # RELEASE(10)
    ),
}
_OPCODE_TABLE: tuple[int, ...] = tuple(_OPCODE_ROWS.get(op, WRITE) for op in range(256))

# PERSISTENT RESERVE OUT service actions (SPC-4 table "PERSISTENT RESERVE OUT service
# actions that are allowed in the presence of various reservations").
_PR_OUT_ROWS = {
    0x00: ALWAYS,  # REGISTER
    0x01: HOLDER_ONLY,  # RESERVE
    0x02: REGISTERED,  # RELEASE
    0x03: REGISTERED,  # CLEAR
    0x04: REGISTERED,  # PREEMPT
    0x05: REGISTERED,  # PREEMPT AND ABORT
    0x06: ALWAYS,  # REGISTER AND IGNORE EXISTING KEY
    0x07: HOLDER_ONLY,  # REGISTER AND MOVE
}
_MAINTENANCE_IN_ROWS = {
    0x05: ALWAYS,  # REPORT IDENTIFYING INFORMATION
    0x0A: ALWAYS,  # REPORT TARGET PORT GROUPS
    0x0B: ALWAYS,  # REPORT ALIASES
    0x0C: READ,  # REPORT SUPPORTED OPERATION CODES
    0x0D: READ,  # REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
    0x0E: ALWAYS,  # REPORT PRIORITY
    0x0F: ALWAYS,  # REPORT TIMESTAMP
    0x10: READ,  # MANAGEMENT PROTOCOL IN
}
_SERVICE_ACTION_IN_16_ROWS = {
    0x10: ALWAYS | _SCSI2_OK,  # READ CAPACITY(16)
    0x11: READ,  # READ LONG(16)
    0x12: READ,  # GET LBA STATUS
    0x13: READ,  # REPORT REFERRALS
}
_VARIABLE_LENGTH_ROWS = {  # opcode 7Fh, service action in bytes 8-9
    0x0009: READ,  # READ(32)
    0x000A: READ,  # VERIFY(32)
    0x000B: WRITE,  # WRITE(32)
    0x000C: WRITE,  # WRITE AND VERIFY(32)
    0x000D: WRITE,  # WRITE SAME(32)
    0x000E: WRITE,  # ORWRITE(32)
    0x000F: WRITE,  # WRITE ATOMIC(32)
}


def _row(cdb: bytes) -> int:
    """The packed row of ``cdb``; unknown or truncated CDBs get the WRITE row."""
    if not cdb:
        return WRITE
    op = cdb[0]
    if op == scsi.PERSISTENT_RESERVE_OUT:
        # An unknown service action is left to the engine (INVALID FIELD IN CDB).
        return _PR_OUT_ROWS.get(cdb[1] & 0x1F, ALWAYS) if len(cdb) > 1 else WRITE
    if op == scsi.MAINTENANCE_IN:
        return _MAINTENANCE_IN_ROWS.get(cdb[1] & 0x1F, WRITE) if len(cdb) > 1 else WRITE
    if op == scsi.SERVICE_ACTION_IN_16:
        return _SERVICE_ACTION_IN_16_ROWS.get(cdb[1] & 0x1F, WRITE) if len(cdb) > 1 else WRITE
    if op == 0x7F:
        return _VARIABLE_LENGTH_ROWS.get(int.from_bytes(cdb[8:10], "big"), WRITE)
    if op == scsi.START_STOP_UNIT:
        # SBC-3: START 1 with POWER CONDITION 0 is harmless; stopping or power changes write.
        if len(cdb) > 4 and (cdb[4] & 0xF1) == 0x01:
            return ALWAYS | _SCSI2_OK
        return WRITE
    if op == 0x1E:  # PREVENT ALLOW MEDIUM REMOVAL: only allowing removal is harmless
        return (ALWAYS | _SCSI2_OK) if len(cdb) > 4 and (cdb[4] & 0x03) == 0 else WRITE
    return _OPCODE_TABLE[op]


def _standing(state: PRState, nexus: Nexus) -> tuple[bool, bool, int]:
    """(SCSI-2 blocked, unrestricted by PR, table column) of ``nexus`` for every lookup.

    One pass over the registrations, plus one to find the holder's when ``nexus`` is
    registered under a single-holder type; PRState.is_holder's rule, reusing ``reg``.
    """
    s2 = state.scsi2_holder
    blocked = s2 is not None and not (s2.same_initiator_port(nexus) and s2.same_target_port(nexus))
    res = state.reservation
    if res is None:
        return blocked, True, 0
    reg = state.registration_of(nexus)
    holder = reg is not None and (
        res.type in ALL_REGISTRANTS_TYPES or reg == state.holder_registration()
    )
    column = _TYPE_COLUMN.get(res.type, _UNKNOWN_TYPE_COLUMN) + (reg is None)
    return blocked, holder, column


def _decide(standing: tuple[bool, bool, int], row: int) -> bool:
    """The table lookup shared by allowed() and verdict()."""
    blocked, holder, column = standing
    if blocked and not row & _SCSI2_OK:
        return False
    return holder or _TABLE[row & 7][column]


def allowed(state: PRState, nexus: Nexus, cdb: bytes) -> bool:
    """Whether ``nexus`` may run ``cdb`` now, or must get RESERVATION CONFLICT.

    O(registrations), no I/O, never raises for any byte string (see the module docstring
    for how unknown, empty and truncated CDBs are classed).
    """
    return _decide(_standing(state, nexus), _row(cdb))


_READ_10_ROW = _OPCODE_TABLE[scsi.READ_10]
_WRITE_10_ROW = _OPCODE_TABLE[scsi.WRITE_10]


def verdict(state: PRState, nexus: Nexus) -> int:
    """The per-nexus word the native ring loop consults before running READ/WRITE itself.

    VERDICT_READ / VERDICT_WRITE say whether any READ / WRITE (6/10/12/16/32) may run,
    VERDICT_UA that a unit attention waits for ``nexus``, so every command must go to
    Python, which delivers it.  Recomputed on every state change: O(registrations).
    """
    standing = _standing(state, nexus)
    word = 0
    if _decide(standing, _READ_10_ROW):
        word |= VERDICT_READ
    if _decide(standing, _WRITE_10_ROW):
        word |= VERDICT_WRITE
    if any(ua.addresses(nexus) for ua in state.unit_attentions):
        word |= VERDICT_UA
    return word
