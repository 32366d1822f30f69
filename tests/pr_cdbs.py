"""Builders for PR CDBs, parameter lists and iSCSI TransportIDs, written from SPC-4 tables.

Deliberately independent of tcmu_pr.engine.cdb and tcmu_pr.pr.transport_id: the tests build
bytes the way an initiator (sg_persist) would, and check what the engine makes of them.
Service-action codes are the engine's names (tcmu_pr.engine.cdb, one definition), pinned to
SPC-4's numbers by tests/test_engine_pr_out.py.
"""

from __future__ import annotations


def prout_cdb(sa: int, type_: int = 0, scope: int = 0, plen: int = 24) -> bytes:
    return bytes([0x5F, sa, (scope << 4) | type_, 0, 0]) + plen.to_bytes(4, "big") + b"\0"


def prin_cdb(sa: int, alloc: int = 8192) -> bytes:
    return bytes([0x5E, sa, 0, 0, 0, 0, 0]) + alloc.to_bytes(2, "big") + b"\0"


def basic_list(
    key: int = 0,
    sa_key: int = 0,
    *,
    spec_i_pt: bool = False,
    all_tg_pt: bool = False,
    aptpl: bool = False,
    tids: bytes | None = None,
) -> bytes:
    flags = (8 if spec_i_pt else 0) | (4 if all_tg_pt else 0) | (1 if aptpl else 0)
    out = key.to_bytes(8, "big") + sa_key.to_bytes(8, "big") + bytes(4) + bytes([flags, 0, 0, 0])
    if tids is not None:
        out += len(tids).to_bytes(4, "big") + tids
    return out


def move_list(
    key: int, sa_key: int, rtpi: int, tid: bytes, *, unreg: bool = False, aptpl: bool = False
) -> bytes:
    flags = (2 if unreg else 0) | (1 if aptpl else 0)
    return (
        key.to_bytes(8, "big")
        + sa_key.to_bytes(8, "big")
        + bytes([0, flags])
        + rtpi.to_bytes(2, "big")
        + len(tid).to_bytes(4, "big")
        + tid
    )


def iscsi_tid(name: str, isid: int | None = None) -> bytes:
    """SPC-4 §7.6.4.6: format 00b (name) or 01b (name,i,0x<12 hex ISID>), NUL-padded."""
    text = name if isid is None else f"{name},i,0x{isid:012x}"
    body = text.encode() + b"\0"
    body += bytes(-len(body) % 4)
    body += bytes(max(0, 20 - len(body)))
    fmt = 0x00 if isid is None else 0x40
    return bytes([fmt | 0x05, 0]) + len(body).to_bytes(2, "big") + body


def prout(sa: int, params: bytes, type_: int = 0, scope: int = 0) -> tuple[bytes, bytes]:
    """(CDB, data) with PARAMETER LIST LENGTH = len(params)."""
    return prout_cdb(sa, type_, scope, len(params)), params


def sense_code(sense: bytes | None) -> tuple[int, int, int] | None:
    """(key, ASC, ASCQ) of fixed-format sense bytes."""
    if sense is None:
        return None
    return sense[2] & 0x0F, sense[12], sense[13]
