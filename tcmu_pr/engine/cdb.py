"""CDB and parameter-list decoding for the PR commands: bytes in, typed values out.

Everything the service-action functions need is decoded here, once, so that they never
index into a byte string.  A malformed command raises :class:`tcmu_pr.scsi.CheckCondition`
carrying the sense the initiator gets; nothing here looks at the PR state.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcmu_pr import scsi
from tcmu_pr.pr.state import PR_TYPES
from tcmu_pr.pr.transport_id import TransportID, TransportIDError, parse_transport_ids
from tcmu_pr.scsi import CheckCondition

# PERSISTENT RESERVE OUT service actions (SPC-4 §6.16.2).
REGISTER = 0x00
RESERVE = 0x01
RELEASE = 0x02
CLEAR = 0x03
PREEMPT = 0x04
PREEMPT_AND_ABORT = 0x05
REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
REGISTER_AND_MOVE = 0x07
REPLACE_LOST_RESERVATION = 0x08

# PERSISTENT RESERVE IN service actions (SPC-4 §6.15.1).
READ_KEYS = 0x00
READ_RESERVATION = 0x01
REPORT_CAPABILITIES = 0x02
READ_FULL_STATUS = 0x03

LU_SCOPE = 0x0

#: Basic parameter list length (SPC-4 §6.16.3) and its SPEC_I_PT extension header.
BASIC_LIST_LEN = 24
SPEC_I_PT_HEADER_LEN = 28
#: REGISTER AND MOVE header before the TransportID (SPC-4 §6.16.4).
MOVE_HEADER_LEN = 24


@dataclass(frozen=True, slots=True)
class ProutCdb:
    """PERSISTENT RESERVE OUT CDB fields (SPC-4 §6.16.1)."""

    service_action: int
    scope: int
    type: int
    parameter_list_length: int


@dataclass(frozen=True, slots=True)
class BasicParams:
    """The basic parameter list (SPC-4 §6.16.3), TransportIDs decoded when SPEC_I_PT=1."""

    key: int
    sa_key: int
    spec_i_pt: bool
    all_tg_pt: bool
    aptpl: bool
    transport_ids: tuple[TransportID, ...] = ()


@dataclass(frozen=True, slots=True)
class MoveParams:
    """The REGISTER AND MOVE parameter list (SPC-4 §6.16.4)."""

    key: int
    sa_key: int
    unreg: bool
    aptpl: bool
    rtpi: int
    transport_id: TransportID


@dataclass(frozen=True, slots=True)
class PrinCdb:
    """PERSISTENT RESERVE IN CDB fields (SPC-4 §6.15.1)."""

    service_action: int
    allocation_length: int


def _need(cdb: bytes, length: int) -> None:
    if len(cdb) < length:
        raise CheckCondition(scsi.INVALID_FIELD_IN_CDB, f"CDB is {len(cdb)} bytes, needs {length}")


def decode_prout_cdb(cdb: bytes) -> ProutCdb:
    _need(cdb, 10)
    sa = cdb[1] & 0x1F
    if sa > REPLACE_LOST_RESERVATION:
        raise CheckCondition(scsi.INVALID_FIELD_IN_CDB, f"unknown PR OUT service action {sa:#x}")
    return ProutCdb(sa, cdb[2] >> 4, cdb[2] & 0x0F, int.from_bytes(cdb[5:9], "big"))


def parameter_list(cmd: ProutCdb, data: bytes) -> bytes:
    """The PARAMETER LIST LENGTH bytes of data-out; a shorter transfer is a length error."""
    plen = cmd.parameter_list_length
    if plen < BASIC_LIST_LEN or len(data) < plen:
        raise CheckCondition(
            scsi.PARAMETER_LIST_LENGTH_ERROR,
            f"parameter list length {plen}, {len(data)} bytes sent; at least 24 needed",
        )
    return data[:plen]


def _tids(buf: bytes) -> tuple[TransportID, ...]:
    try:
        return tuple(parse_transport_ids(buf))
    except (TransportIDError, ValueError) as exc:
        raise CheckCondition(
            scsi.INVALID_FIELD_IN_PARAMETER_LIST, f"bad TransportID: {exc}"
        ) from exc


def decode_basic(sa: int, plist: bytes) -> BasicParams:
    """SPC-4 §6.16.3: the 24-byte list, plus the TransportID list when SPEC_I_PT=1."""
    flags = plist[20]
    spec_i_pt, all_tg_pt, aptpl = bool(flags & 0x08), bool(flags & 0x04), bool(flags & 0x01)
    if spec_i_pt and sa != REGISTER:
        raise CheckCondition(
            scsi.INVALID_FIELD_IN_PARAMETER_LIST, "SPEC_I_PT is valid only on REGISTER"
        )
    tids: tuple[TransportID, ...] = ()
    if not spec_i_pt:
        if len(plist) != BASIC_LIST_LEN:
            raise CheckCondition(
                scsi.PARAMETER_LIST_LENGTH_ERROR, f"list is {len(plist)} bytes, needs 24"
            )
    else:
        if len(plist) < SPEC_I_PT_HEADER_LEN:
            raise CheckCondition(
                scsi.PARAMETER_LIST_LENGTH_ERROR, "SPEC_I_PT=1 needs at least 28 bytes"
            )
        tpdl = int.from_bytes(plist[24:28], "big")
        if SPEC_I_PT_HEADER_LEN + tpdl != len(plist):
            raise CheckCondition(
                scsi.PARAMETER_LIST_LENGTH_ERROR,
                f"TRANSPORTID PARAMETER DATA LENGTH {tpdl} + 28 != list length {len(plist)}",
            )
        tids = _tids(plist[28:])
    return BasicParams(
        key=int.from_bytes(plist[0:8], "big"),
        sa_key=int.from_bytes(plist[8:16], "big"),
        spec_i_pt=spec_i_pt,
        all_tg_pt=all_tg_pt,
        aptpl=aptpl,
        transport_ids=tids,
    )


def decode_move(plist: bytes) -> MoveParams:
    """SPC-4 §6.16.4: keys, UNREG/APTPL, RELATIVE TARGET PORT IDENTIFIER, one TransportID.

    Byte 17 bits 2-7 are reserved; a set bit there (e.g. an ALL_TG_PT written at its basic-
    list position) is refused rather than silently ignored: REGISTER AND MOVE has no ALL_TG_PT.
    """
    if plist[16] or plist[17] & 0xFC:
        raise CheckCondition(
            scsi.INVALID_FIELD_IN_PARAMETER_LIST, "reserved bits (e.g. ALL_TG_PT) in MOVE list"
        )
    tid_len = int.from_bytes(plist[20:24], "big")
    if MOVE_HEADER_LEN + tid_len != len(plist):
        raise CheckCondition(
            scsi.PARAMETER_LIST_LENGTH_ERROR,
            f"TRANSPORTID LENGTH {tid_len} + 24 != list length {len(plist)}",
        )
    tids = _tids(plist[24:])
    if len(tids) != 1:
        raise CheckCondition(
            scsi.INVALID_FIELD_IN_PARAMETER_LIST, f"MOVE needs one TransportID, got {len(tids)}"
        )
    return MoveParams(
        key=int.from_bytes(plist[0:8], "big"),
        sa_key=int.from_bytes(plist[8:16], "big"),
        unreg=bool(plist[17] & 0x02),
        aptpl=bool(plist[17] & 0x01),
        rtpi=int.from_bytes(plist[18:20], "big"),
        transport_id=tids[0],
    )


def decode_prin_cdb(cdb: bytes) -> PrinCdb:
    _need(cdb, 10)
    sa = cdb[1] & 0x1F
    if sa > READ_FULL_STATUS:
        raise CheckCondition(scsi.INVALID_FIELD_IN_CDB, f"unknown PR IN service action {sa:#x}")
    return PrinCdb(sa, int.from_bytes(cdb[7:9], "big"))


def check_scope_type(cmd: ProutCdb) -> None:
    """SPC-4 §6.16.2: the actions that create a reservation need LU_SCOPE and a known type."""
    if cmd.scope != LU_SCOPE:
        raise CheckCondition(scsi.INVALID_FIELD_IN_CDB, f"scope {cmd.scope:#x} is not LU_SCOPE")
    if cmd.type not in PR_TYPES:
        raise CheckCondition(
            scsi.INVALID_FIELD_IN_CDB, f"reservation type {cmd.type:#x} unsupported"
        )


def decode_scsi2(cdb: bytes) -> None:
    """RESERVE/RELEASE(6)/(10) (SPC-2 §7.21/§7.22): only whole-LU, first-party forms.

    Byte 1 carries the SCSI-2 extent bit (0), LONGID (1) and 3RDPTY (4) bits; any of them
    asks for something this device does not do.
    """
    _need(cdb, 10 if cdb[:1] in (b"\x56", b"\x57") else 6)
    if cdb[1] & 0x13:
        raise CheckCondition(
            scsi.INVALID_FIELD_IN_CDB, "extent/third-party reservations unsupported"
        )
