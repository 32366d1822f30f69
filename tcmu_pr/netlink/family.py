"""The TCM-USER generic-netlink family: commands and attributes, declared once as data.

Numbers follow include/uapi/linux/target_core_user.h (mainline: commands 0..7, attributes
0..9).  The PR commands and TCMU_ATTR_PR_INFO are *appended* after the mainline values, so
that no mainline number moves; docs/netlink.md explains why the PR series' numbering (PR
commands inserted after RECONFIG_DEVICE) would break every existing daemon.

Bytes are decoded here, once, into a plain :class:`Message`; handlers never see raw NLAs.
Decoding is strict where the kernel's policy is loose, because a daemon that guesses at a
half-valid message can reply for the wrong device.

Encoding and decoding are plain ``struct`` work: importing pyroute2 costs seconds under the
test VM's emulated CPU (its package imports every netlink family it knows), which delayed
the daemon's readiness.  pyroute2 stays the independent peer the tests check us against
(:data:`TcmuMsg`, built on first use).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import NamedTuple

FAMILY_NAME = "TCM-USER"
FAMILY_VERSION = 2
MCAST_GROUP = "config"

#: Largest datagram the service accepts; the kernel builds its messages in one
#: NLMSG_GOODSIZE skb (a few KiB), so anything near this is not from target_core_user.
MAX_MESSAGE_SIZE = 65536

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
GENL_HDR = struct.Struct("=BBH")  # cmd, version, reserved
NLA_HDR = struct.Struct("=HH")  # len, type
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLM_F_REQUEST = 0x1


class Cmd(IntEnum):
    """enum tcmu_genl_cmd; 8..11 are this project's PR extension, 12 its nexus-handle patch
    (appended, ABI-safe)."""

    UNSPEC = 0
    ADDED_DEVICE = 1
    REMOVED_DEVICE = 2
    RECONFIG_DEVICE = 3
    ADDED_DEVICE_DONE = 4
    REMOVED_DEVICE_DONE = 5
    RECONFIG_DEVICE_DONE = 6
    SET_FEATURES = 7
    GET_PR_INFO = 8
    GET_PR_INFO_DONE = 9
    SET_PR_INFO = 10
    SET_PR_INFO_DONE = 11
    GET_NEXUS = 12  # tcmu-pr kernel patch: userspace asks what a ring entry's handle names


class Attr(IntEnum):
    """enum tcmu_genl_attr; 10 (PR_INFO) is this project's PR extension, 11..18 the
    GET_NEXUS reply of its nexus-handle patch."""

    UNSPEC = 0
    DEVICE = 1
    MINOR = 2
    PAD = 3
    DEV_CFG = 4
    DEV_SIZE = 5
    WRITECACHE = 6
    CMD_STATUS = 7
    DEVICE_ID = 8
    SUPP_KERN_CMD_REPLY = 9
    PR_INFO = 10
    NEXUS_HANDLE = 11
    NEXUS_PROTO = 12
    NEXUS_INITIATOR = 13
    NEXUS_ISID = 14
    NEXUS_TARGET = 15
    NEXUS_TPGT = 16
    NEXUS_RTPI = 17
    NEXUS_SESSIONS = 18


class AttrSpec(NamedTuple):
    """One attribute: its pyroute2 NLA class and its exact payload format (None = string)."""

    attr: Attr
    nla_type: str
    fmt: str | None


#: The one table every encoder, decoder and handler uses.
ATTRIBUTES: tuple[AttrSpec, ...] = (
    AttrSpec(Attr.UNSPEC, "none", ""),
    AttrSpec(Attr.DEVICE, "asciiz", None),
    AttrSpec(Attr.MINOR, "uint32", "=I"),
    AttrSpec(Attr.PAD, "none", ""),  # alignment filler nla_put_u64_64bit may insert
    AttrSpec(Attr.DEV_CFG, "asciiz", None),
    AttrSpec(Attr.DEV_SIZE, "uint64", "=Q"),
    AttrSpec(Attr.WRITECACHE, "uint8", "=B"),
    AttrSpec(Attr.CMD_STATUS, "int32", "=i"),
    AttrSpec(Attr.DEVICE_ID, "uint32", "=I"),
    AttrSpec(Attr.SUPP_KERN_CMD_REPLY, "uint8", "=B"),
    AttrSpec(Attr.PR_INFO, "asciiz", None),
    AttrSpec(Attr.NEXUS_HANDLE, "uint32", "=I"),
    AttrSpec(Attr.NEXUS_PROTO, "uint8", "=B"),
    AttrSpec(Attr.NEXUS_INITIATOR, "asciiz", None),
    AttrSpec(Attr.NEXUS_ISID, "uint64", "=Q"),
    AttrSpec(Attr.NEXUS_TARGET, "asciiz", None),
    AttrSpec(Attr.NEXUS_TPGT, "uint16", "=H"),
    AttrSpec(Attr.NEXUS_RTPI, "uint16", "=H"),
    AttrSpec(Attr.NEXUS_SESSIONS, "uint32", "=I"),
)
_SPEC = {spec.attr: spec for spec in ATTRIBUTES}

#: Request -> the *_DONE the kernel waits for.
REPLY_OF = MappingProxyType(
    {
        Cmd.ADDED_DEVICE: Cmd.ADDED_DEVICE_DONE,
        Cmd.REMOVED_DEVICE: Cmd.REMOVED_DEVICE_DONE,
        Cmd.RECONFIG_DEVICE: Cmd.RECONFIG_DEVICE_DONE,
        Cmd.GET_PR_INFO: Cmd.GET_PR_INFO_DONE,
        Cmd.SET_PR_INFO: Cmd.SET_PR_INFO_DONE,
    }
)


def nla_name(attr: Attr) -> str:
    return f"TCMU_ATTR_{attr.name}"


def __getattr__(name: str) -> object:
    """``TcmuMsg``: pyroute2's message class for the family, nla_map from ATTRIBUTES.

    Built on first access only, so the daemon never imports pyroute2 (tests do).
    """
    if name != "TcmuMsg":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pyroute2.netlink import genlmsg

    cls = type(
        "TcmuMsg",
        (genlmsg,),
        {
            "__slots__": (),
            "__doc__": "pyroute2 message class for TCM-USER (tests' independent peer).",
            "nla_map": tuple(
                (spec.attr.value, nla_name(spec.attr), spec.nla_type) for spec in ATTRIBUTES
            ),
        },
    )
    globals()["TcmuMsg"] = cls
    return cls


Value = int | str


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded TCM-USER message: header fields plus typed attribute values."""

    cmd: int
    attrs: MappingProxyType[Attr, Value] = field(default_factory=lambda: MappingProxyType({}))
    seq: int = 0
    port_id: int = 0  # nlmsg_pid: 0 for the kernel
    version: int = FAMILY_VERSION
    flags: int = 0

    @classmethod
    def make(cls, cmd: int, attrs: dict[Attr, Value] | None = None, **header: int) -> Message:
        return cls(cmd, MappingProxyType(dict(attrs or {})), **header)

    def get(self, attr: Attr) -> Value | None:
        return self.attrs.get(attr)

    @property
    def command_name(self) -> str:
        try:
            return Cmd(self.cmd).name
        except ValueError:
            return f"command {self.cmd}"


class MessageError(ValueError):
    """A message that cannot be trusted as a whole.

    ``cmd``, ``device_id`` and ``port_id`` are what could be read before the damage, so the
    service can still answer a request the kernel is blocked on.
    """

    def __init__(
        self,
        reason: str,
        *,
        cmd: int | None = None,
        device_id: int | None = None,
        seq: int = 0,
        port_id: int | None = None,
        code: int = errno.EINVAL,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cmd = cmd
        self.device_id = device_id
        self.seq = seq
        self.port_id = port_id
        self.errno = code  # what the *_DONE reply carries, negated


@dataclass(frozen=True, slots=True)
class Control:
    """A netlink control message (NLMSG_ERROR ack/error, NLMSG_DONE, ...), not a command."""

    type: int
    error: int | None  # the errno an NLMSG_ERROR carries (0 = ack)
    seq: int
    port_id: int


def encode(msg: Message, *, family_id: int) -> bytes:
    """Wire bytes of ``msg``: nlmsghdr + genlmsghdr + NLAs, each padded to 4 bytes."""
    body = bytearray(GENL_HDR.pack(msg.cmd, msg.version, 0))
    for attr, value in msg.attrs.items():
        payload = _payload(_SPEC[Attr(attr)], value)
        body += NLA_HDR.pack(NLA_HDR.size + len(payload), attr) + payload
        body += bytes(-len(body) % 4)
    flags = msg.flags or NLM_F_REQUEST
    header = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), family_id, flags, msg.seq, msg.port_id)
    return header + bytes(body)


def _payload(spec: AttrSpec, value: Value) -> bytes:
    if spec.fmt is None:
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"{nla_name(spec.attr)} must be text without NUL, not {value!r}")
        return value.encode("utf-8") + b"\0"
    if not isinstance(value, int):
        raise ValueError(f"{nla_name(spec.attr)} must be an integer, not {value!r}")
    return struct.pack(spec.fmt, value) if spec.fmt else b""


def split(datagram: bytes) -> list[bytes]:
    """The netlink messages packed in one datagram (a datagram may carry several).

    A message whose length field overruns the datagram is returned as the cut-off tail, so
    :func:`decode` can report it (and salvage its device id) rather than lose it silently.
    """
    out = []
    offset = 0
    while len(datagram) - offset >= NLMSG_HDR.size:
        length = NLMSG_HDR.unpack_from(datagram, offset)[0]
        if length < NLMSG_HDR.size or offset + length > len(datagram):
            out.append(datagram[offset:])
            break
        out.append(datagram[offset : offset + length])
        offset += (length + 3) & ~3
    else:
        if offset < len(datagram):
            out.append(datagram[offset:])  # fewer bytes than a header
    return out


def decode(data: bytes, *, family_id: int) -> Message | Control:
    """Decode one netlink message of the family, strictly.

    Raises MessageError for anything truncated, oversized, wrongly typed or duplicated;
    attribute types this table does not know are skipped.
    """
    if len(data) < NLMSG_HDR.size:
        raise MessageError(f"truncated: {len(data)} bytes, shorter than a netlink header")
    length, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(data)
    if mtype != family_id:
        return _control(data, mtype, seq, pid)
    if len(data) < NLMSG_HDR.size + GENL_HDR.size:
        raise MessageError("truncated: no generic netlink header", seq=seq, port_id=pid)
    cmd, version, _ = GENL_HDR.unpack_from(data, NLMSG_HDR.size)
    problem, code = None, errno.EINVAL
    if length > MAX_MESSAGE_SIZE:
        problem = f"oversized: {length} bytes (limit {MAX_MESSAGE_SIZE})"
        code = errno.EMSGSIZE
    elif length != len(data):
        problem = f"truncated: header says {length} bytes, {len(data)} arrived"
    raw, walk_problem = _walk(data[: min(length, len(data))])
    problem = problem or walk_problem
    device_id = _salvage_device_id(raw)
    if problem is not None:
        raise MessageError(problem, cmd=cmd, device_id=device_id, seq=seq, port_id=pid, code=code)
    attrs: dict[Attr, Value] = {}
    for attr, payload in raw.items():
        spec = _SPEC[attr]
        if attr in (Attr.UNSPEC, Attr.PAD):
            continue
        if spec.fmt is not None:
            attrs[attr] = struct.unpack(spec.fmt, payload)[0]
            continue
        try:
            attrs[attr] = payload[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError(
                f"{nla_name(attr)} is not UTF-8 text",
                cmd=cmd,
                device_id=device_id,
                seq=seq,
                port_id=pid,
            ) from None
    return Message(cmd, MappingProxyType(attrs), seq=seq, port_id=pid, version=version, flags=flags)


def _walk(data: bytes) -> tuple[dict[Attr, bytes], str | None]:
    """Raw payload of each attribute, checked against ATTRIBUTES; stops at the first fault."""
    found: dict[Attr, bytes] = {}
    offset = NLMSG_HDR.size + GENL_HDR.size
    while offset < len(data):
        if len(data) - offset < NLA_HDR.size:
            return found, f"truncated attribute header at byte {offset}"
        nla_len, nla_type = NLA_HDR.unpack_from(data, offset)
        if nla_len < NLA_HDR.size or offset + nla_len > len(data):
            return found, f"attribute at byte {offset} claims {nla_len} bytes: truncated"
        offset_next = offset + ((nla_len + 3) & ~3)
        try:
            attr = Attr(nla_type & NLA_TYPE_MASK)
        except ValueError:
            # A newer kernel's attribute: skipped, as netlink receivers do, so that an
            # extension of ADDED_DEVICE does not make every device fail.
            offset = offset_next
            continue
        payload = data[offset + NLA_HDR.size : offset + nla_len]
        fault = _check_payload(_SPEC[attr], payload)
        if fault is None and attr in found and attr is not Attr.PAD:
            fault = "given twice"
        if fault is not None:
            return found, f"{nla_name(attr)}: {fault}"
        found[attr] = payload
        offset = offset_next
    return found, None


def _check_payload(spec: AttrSpec, payload: bytes) -> str | None:
    if spec.fmt is None:
        if not payload.endswith(b"\0"):
            return "string without a terminating NUL"
        if b"\0" in payload[:-1]:
            return "string with an embedded NUL"
        return None
    want = struct.calcsize(spec.fmt)
    if len(payload) != want:
        return f"{len(payload)}-byte payload, expected {want} ({spec.nla_type})"
    return None


def _salvage_device_id(raw: dict[Attr, bytes]) -> int | None:
    payload = raw.get(Attr.DEVICE_ID)
    if payload is None:
        return None
    return struct.unpack("=I", payload)[0]


def _control(data: bytes, mtype: int, seq: int, pid: int) -> Control:
    error = None
    if mtype == NLMSG_ERROR and len(data) >= NLMSG_HDR.size + 4:
        error = struct.unpack_from("=i", data, NLMSG_HDR.size)[0]
    return Control(mtype, error, seq, pid)
