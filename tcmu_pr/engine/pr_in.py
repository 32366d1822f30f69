"""PERSISTENT RESERVE IN (SPC-4 §6.15): the four reports, built from the state.

PR IN never changes anything: every answer carries the very state object it was given.
Each report is built whole, then cut to the ALLOCATION LENGTH, so its length fields
always describe the full list (§4.2.5.6).  One registration record is one entry, also when
it spans every target port (ALL_TG_PT): READ FULL STATUS then reports it once, with
ALL_TG_PT=1, on the port it was made through.
"""

from __future__ import annotations

from collections.abc import Callable

from tcmu_pr import scsi
from tcmu_pr.engine.cdb import (
    LU_SCOPE,
    READ_FULL_STATUS,
    READ_KEYS,
    READ_RESERVATION,
    REPORT_CAPABILITIES,
    decode_prin_cdb,
)
from tcmu_pr.engine.scsi2 import is_scsi2_holder
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import ALL_REGISTRANTS_TYPES, PRState, Registration
from tcmu_pr.pr.transport_id import TransportIDError, encode_transport_id
from tcmu_pr.scsi import CheckCondition, Outcome

# REPORT CAPABILITIES (§6.15.4) byte 2 and byte 3 bits.
_CRH, _SIP_C, _ATP_C, _PTPL_C = 0x10, 0x08, 0x04, 0x01
_TMV, _PTPL_A = 0x80, 0x01
#: ALLOW COMMANDS 011b, what conflict.py enforces: TEST UNIT READY passes Write Exclusive and
#: Exclusive Access reservations; MODE SENSE, READ ATTRIBUTE, READ BUFFER, RECEIVE
#: DIAGNOSTIC RESULTS, REPORT SUPPORTED OPERATION CODES / TASK MANAGEMENT FUNCTIONS and READ
#: DEFECT DATA pass Write Exclusive ones; RECEIVE COPY RESULTS passes neither.
_ALLOW_COMMANDS = 0x3 << 4
#: A registration whose nexus no TransportID can express (e.g. a name over 223 bytes, which
#: no real iSCSI initiator has, put in through the CLI): the report cannot be built.
#: PERSISTENT RESERVATION TYPE MASK: WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX | EX_AC_AR.
_TYPE_MASK = bytes([0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01])


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def read_keys(state: PRState, nexus: Nexus) -> bytes:
    """§6.15.2: PRGENERATION, ADDITIONAL LENGTH, one key per registration."""
    keys = b"".join(reg.key.to_bytes(8, "big") for reg in state.registrations)
    return _u32(state.generation) + _u32(len(keys)) + keys


def read_reservation(state: PRState, nexus: Nexus) -> bytes:
    """§6.15.3: PRGENERATION and the reservation, if any (key 0 for all-registrants)."""
    res = state.reservation
    if res is None:
        return _u32(state.generation) + _u32(0)
    key = 0 if res.type in ALL_REGISTRANTS_TYPES else res.key
    body = key.to_bytes(8, "big") + bytes(5) + bytes([LU_SCOPE << 4 | res.type]) + bytes(2)
    return _u32(state.generation) + _u32(len(body)) + body


def report_capabilities(state: PRState, nexus: Nexus) -> bytes:
    """§6.15.4: CRH, SIP_C, ATP_C, PTPL_C, TMV and the six types; RLR_C=0 (never lost)."""
    byte3 = _TMV | _ALLOW_COMMANDS | (_PTPL_A if state.aptpl else 0)
    return bytes([0, 8, _CRH | _SIP_C | _ATP_C | _PTPL_C, byte3]) + _TYPE_MASK + bytes(2)


def _full_status_descriptor(state: PRState, reg: Registration) -> bytes:
    """§6.15.5 full status descriptor: key, ALL_TG_PT/R_HOLDER, type, RTPI, TransportID."""
    res = state.reservation
    holder = res is not None and state.is_holder(reg.nexus)
    flags = (0x02 if reg.all_tg_pt else 0) | (0x01 if holder else 0)
    scope_type = (LU_SCOPE << 4 | res.type) if holder and res is not None else 0
    rtpi = reg.rtpi if reg.rtpi is not None else reg.nexus.tpgt_value
    tid = encode_transport_id(reg.nexus)
    return (
        reg.key.to_bytes(8, "big")
        + bytes(4)
        + bytes([flags, scope_type])
        + bytes(4)
        + (rtpi & 0xFFFF).to_bytes(2, "big")
        + _u32(len(tid))
        + tid
    )


def read_full_status(state: PRState, nexus: Nexus) -> bytes:
    """§6.15.5: PRGENERATION, ADDITIONAL LENGTH, one descriptor per registration."""
    body = b"".join(_full_status_descriptor(state, reg) for reg in state.registrations)
    return _u32(state.generation) + _u32(len(body)) + body


_REPORTS: dict[int, Callable[[PRState, Nexus], bytes]] = {
    READ_KEYS: read_keys,
    READ_RESERVATION: read_reservation,
    REPORT_CAPABILITIES: report_capabilities,
    READ_FULL_STATUS: read_full_status,
}


def execute(state: PRState, nexus: Nexus, cdb: bytes) -> Outcome:
    """Decode a PERSISTENT RESERVE IN and build its report.

    Under a SCSI-2 reservation held by another I_T nexus it conflicts (SPC-2 §5.5.1); the
    holder itself may read, as conflict.py allows it.
    """
    if state.scsi2_holder is not None and not is_scsi2_holder(state, nexus):
        return Outcome.conflict(state)
    try:
        cmd = decode_prin_cdb(cdb)
    except CheckCondition as exc:
        return Outcome.refused(state, exc)
    try:
        data = _REPORTS[cmd.service_action](state, nexus)
    except TransportIDError:
        return Outcome.check(state, scsi.INTERNAL_TARGET_FAILURE)
    return Outcome.good(state, scsi.allocation_truncate(data, cmd.allocation_length))
