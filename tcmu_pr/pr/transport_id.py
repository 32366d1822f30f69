"""TransportIDs (SPC-4 §7.6.4): how PR commands name an initiator port in their data.

A TransportID arrives in PERSISTENT RESERVE OUT parameter data (the SPEC_I_PT list, and the
single TransportID of REGISTER AND MOVE) and leaves in READ FULL STATUS.  It is decoded here
once into a :class:`TransportID` whose ``name`` is spelled the way LIO, and hence our
:class:`~tcmu_pr.pr.nexus.Nexus`, spells that protocol's initiator names, so that a registration
made through a TransportID compares equal to one made on the initiator's own nexus:

- FC (protocol 0h, §7.6.4.2): 24 bytes, N_PORT_NAME at bytes 8-15; name ``21:00:...:48``
  (colon-separated lowercase WWPN, as qla2xxx/tcm_fc ACLs are named).
- SAS (6h, §7.6.4.7): 24 bytes, SAS ADDRESS at bytes 4-11; name ``naa.`` + 16 lowercase hex
  digits (as tcm_loop and the SAS fabrics name initiators).
- iSCSI (5h, §7.6.4.6): byte 0 = FORMAT CODE << 6 | 5, ADDITIONAL LENGTH (big-endian) at
  bytes 2-3, then the NUL-terminated name padded with NULs; the length is a multiple of 4
  and at least 20.  The name is kept verbatim.

(Section numbers as in SPC-4 r37; byte 0 is FORMAT CODE << 6 | PROTOCOL IDENTIFIER.)

iSCSI format 00b names the initiator device (any ISID); format 01b adds ``,i,0x<ISID>`` and
names one initiator port.  Reserved bits (byte 0 bits 5-4, reserved bytes) are ignored, as
SPC lets a recipient do; everything else that is off is a :class:`TransportIDError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tcmu_pr.pr.nexus import PROTO_FC, PROTO_ISCSI, PROTO_SAS, Nexus

PROTOCOL_NAMES = {PROTO_FC: "FC", PROTO_SAS: "SAS", PROTO_ISCSI: "iSCSI"}

FORMAT_DEVICE = 0  # 00b: iSCSI name only (every ISID); the only format FC and SAS have
FORMAT_PORT = 1  # 01b: iSCSI name + ",i,0x" + ISID

_FIXED_LEN = 24  # FC and SAS TransportIDs
_ISCSI_MIN_ADDITIONAL = 20  # SPC-4 §7.6.4.6: ADDITIONAL LENGTH at least 20, multiple of 4
_ISCSI_NAME_MAX = 223  # RFC 3720 §3.2.6.1: an iSCSI name is at most 223 bytes
_ISID_MAX_DIGITS = 12  # an ISID is 6 bytes
_SEPARATOR = ",i,0x"

# What a Nexus accepts as an initiator name: printable ASCII, no space, no comma.  LIO
# checks nothing more (iqn./eui./naa. is a convention), and Nexus.protocol treats any
# other name as iSCSI, so a stricter rule would refuse TransportIDs we encode ourselves.
_ISCSI_NAME = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,223}")
_ISID_TEXT = re.compile(r"[0-9a-fA-F]{1,12}")


class TransportIDError(ValueError):
    """A TransportID that is malformed; the message names the byte offset and the fault."""


@dataclass(frozen=True, slots=True)
class TransportID:
    """One decoded TransportID.

    ``isid`` holds the ISID as lowercase hex without leading zeros (the kernel's ``%llx``,
    as in Nexus) for iSCSI format 01b, and is None for format 00b, FC and SAS.
    """

    protocol: int
    name: str
    isid: str | None = None


def parse_transport_id(buf: bytes, offset: int = 0) -> tuple[TransportID, int]:
    """Decode the TransportID at ``buf[offset:]``; returns it and the bytes it occupies."""
    if offset >= len(buf):
        raise TransportIDError(f"offset {offset}: no TransportID (buffer is {len(buf)} bytes)")
    head = buf[offset]
    fmt, proto = head >> 6, head & 0x0F
    if proto not in PROTOCOL_NAMES:
        raise TransportIDError(f"offset {offset}: unsupported protocol identifier {proto:#x}")
    if proto == PROTO_ISCSI:
        return _parse_iscsi(buf, offset, fmt)
    if fmt != FORMAT_DEVICE:
        raise TransportIDError(
            f"offset {offset}: reserved format code {fmt} for {PROTOCOL_NAMES[proto]}"
        )
    if offset + _FIXED_LEN > len(buf):
        raise TransportIDError(
            f"offset {offset}: truncated {PROTOCOL_NAMES[proto]} TransportID "
            f"({len(buf) - offset} of {_FIXED_LEN} bytes)"
        )
    if proto == PROTO_FC:
        wwn = buf[offset + 8 : offset + 16]
        name = ":".join(f"{b:02x}" for b in wwn)
    else:
        wwn = buf[offset + 4 : offset + 12]
        name = "naa." + wwn.hex()
    return TransportID(proto, name, None), _FIXED_LEN


def _parse_iscsi(buf: bytes, offset: int, fmt: int) -> tuple[TransportID, int]:
    """iSCSI TransportID, SPC-4 §7.6.4.6 (format 00b) and its ISID form (format 01b)."""
    if fmt not in (FORMAT_DEVICE, FORMAT_PORT):
        raise TransportIDError(f"offset {offset}: reserved format code {fmt} for iSCSI")
    if offset + 4 > len(buf):
        raise TransportIDError(f"offset {offset}: truncated iSCSI TransportID header")
    additional = int.from_bytes(buf[offset + 2 : offset + 4], "big")
    if additional % 4 or additional < _ISCSI_MIN_ADDITIONAL:
        raise TransportIDError(
            f"offset {offset + 2}: iSCSI ADDITIONAL LENGTH {additional} must be a multiple "
            f"of 4 and at least {_ISCSI_MIN_ADDITIONAL}"
        )
    total = 4 + additional
    if offset + total > len(buf):
        raise TransportIDError(
            f"offset {offset + 2}: iSCSI ADDITIONAL LENGTH {additional} overruns the buffer "
            f"({len(buf) - offset - 4} bytes left)"
        )
    field = buf[offset + 4 : offset + total]
    nul = field.find(0)
    if nul < 0:
        raise TransportIDError(f"offset {offset + 4}: iSCSI name is not NUL-terminated")
    if any(field[nul:]):
        raise TransportIDError(
            f"offset {offset + 4 + nul}: non-NUL bytes in the iSCSI name's padding"
        )
    try:
        text = field[:nul].decode("ascii")
    except UnicodeDecodeError:
        raise TransportIDError(f"offset {offset + 4}: iSCSI name is not ASCII") from None
    isid: str | None = None
    if fmt == FORMAT_PORT:
        name, sep, isid_text = text.partition(_SEPARATOR)
        if not sep:
            raise TransportIDError(
                f"offset {offset + 4}: format 01b iSCSI name lacks the {_SEPARATOR!r} separator"
            )
        if not _ISID_TEXT.fullmatch(isid_text):
            raise TransportIDError(
                f"offset {offset + 4 + len(name) + len(sep)}: ISID {isid_text!r} is not "
                f"1-{_ISID_MAX_DIGITS} hex digits"
            )
        isid = f"{int(isid_text, 16):x}"
    else:
        name = text
    if not _ISCSI_NAME.fullmatch(name):
        raise TransportIDError(
            f"offset {offset + 4}: iSCSI name {name[:60]!r} must be 1-{_ISCSI_NAME_MAX} "
            "printable characters without space or comma"
        )
    return TransportID(PROTO_ISCSI, name, isid), total


def parse_transport_ids(buf: bytes) -> list[TransportID]:
    """Decode a concatenation of TransportIDs that must fill ``buf`` exactly."""
    tids: list[TransportID] = []
    offset = 0
    while offset < len(buf):
        tid, used = parse_transport_id(buf, offset)
        tids.append(tid)
        offset += used
    return tids


def encode_transport_id(nexus: Nexus) -> bytes:
    """The TransportID of ``nexus``'s initiator port, for READ FULL STATUS.

    iSCSI uses format 01b when the nexus carries an ISID and 00b when it does not.  The
    protocol comes from :attr:`Nexus.protocol` (inferred from the name's form).
    """
    proto = nexus.protocol
    if proto == PROTO_FC:
        out = bytearray(_FIXED_LEN)
        out[8:16] = bytes.fromhex(nexus.initiator.replace(":", ""))
        return bytes(out)
    if proto == PROTO_SAS:
        out = bytearray(_FIXED_LEN)
        out[0] = PROTO_SAS
        out[4:12] = bytes.fromhex(nexus.initiator[4:])
        return bytes(out)
    text = nexus.initiator
    if len(text) > _ISCSI_NAME_MAX:
        raise TransportIDError(f"iSCSI name of {nexus} is longer than {_ISCSI_NAME_MAX} bytes")
    fmt = FORMAT_DEVICE
    if nexus.isid:
        if nexus.isid_value >> 48:
            raise TransportIDError(f"ISID 0x{nexus.isid} of {nexus} is wider than 48 bits")
        text += f"{_SEPARATOR}{nexus.isid_value:012x}"
        fmt = FORMAT_PORT
    field = text.encode("ascii") + b"\0"
    field += bytes(-len(field) % 4)
    field += bytes(max(0, _ISCSI_MIN_ADDITIONAL - len(field)))
    header = bytes([fmt << 6 | PROTO_ISCSI, 0]) + len(field).to_bytes(2, "big")
    return header + field


def tid_to_nexus(tid: TransportID, receiving: Nexus) -> Nexus:
    """The I_T nexus of ``tid``'s initiator port on ``receiving``'s target port.

    The ISID is "" for iSCSI format 00b (any ISID, see Nexus) and "0" for FC and SAS, the
    kernel's ``%llx`` of their zero ISID, so the result equals the nexus LIO would report.
    """
    if tid.protocol != PROTO_ISCSI:
        return Nexus(tid.name, "0", receiving.target, receiving.tpgt)
    return Nexus(tid.name, tid.isid or "", receiving.target, receiving.tpgt)


def matches(tid: TransportID, nexus: Nexus) -> bool:
    """Whether ``tid`` designates ``nexus``'s initiator port (SPC-4 §5.12.3)."""
    if tid.protocol == PROTO_ISCSI:
        if tid.name != nexus.initiator:
            return False
        return tid.isid is None or int(tid.isid, 16) == nexus.isid_value
    # FC/SAS names are hex values: compare them case-insensitively; such ports have no ISID.
    return tid.name.lower() == nexus.initiator.lower() and nexus.isid_value == 0
