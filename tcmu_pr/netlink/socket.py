"""Transports that carry TCM-USER netlink bytes: the kernel's socket, or a test socket.

The service only sends and receives whole datagrams, so the transport is a three-method
protocol.  :class:`KernelTransport` is the real thing: a NETLINK_GENERIC socket bound to
family TCM-USER (resolved by name; ids change between boots) and joined to the ``config``
multicast group.  :class:`PacketTransport` carries the same bytes over any connected
SOCK_SEQPACKET/SOCK_DGRAM socket, e.g. one end of ``socket.socketpair``, for a test peer
that plays the kernel.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from dataclasses import dataclass
from typing import Protocol

from tcmu_pr.netlink.family import (
    FAMILY_NAME,
    GENL_HDR,
    MAX_MESSAGE_SIZE,
    MCAST_GROUP,
    NLA_HDR,
    NLA_TYPE_MASK,
    NLMSG_ERROR,
    NLMSG_HDR,
    split,
)


@dataclass(frozen=True, slots=True)
class Datagram:
    """One received datagram; ``sender`` is the netlink port id when the transport knows it."""

    data: bytes
    sender: int | None = None
    truncated: bool = False  # longer than MAX_MESSAGE_SIZE: the tail was cut


class Transport(Protocol):
    #: Generic netlink id of TCM-USER (nlmsg_type of its messages).
    family_id: int
    #: Our own netlink port id (nlmsg_pid of what we send).
    port_id: int

    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float | None = None) -> Datagram | None:
        """The next datagram, or None when ``timeout`` seconds pass without one."""
        ...

    def close(self) -> None: ...


class FamilyNotFound(RuntimeError):
    """The kernel has no TCM-USER family (or no ``config`` group)."""


def _recv(sock: socket.socket, timeout: float | None) -> Datagram | None:
    if timeout is not None:
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return None
    data, _, flags, addr = sock.recvmsg(MAX_MESSAGE_SIZE)
    sender = addr[0] if isinstance(addr, tuple) and addr else None
    return Datagram(data, sender, bool(flags & socket.MSG_TRUNC))


class PacketTransport:
    """Netlink bytes over a connected packet socket (no kernel involved)."""

    def __init__(self, sock: socket.socket, *, family_id: int, port_id: int = 4242) -> None:
        self.sock = sock
        self.family_id = family_id
        self.port_id = port_id

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout: float | None = None) -> Datagram | None:
        return _recv(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


class KernelTransport:
    """The TCM-USER family on a plain NETLINK_GENERIC socket.

    The family id and the ``config`` group id are resolved by name through the generic
    netlink controller (ids change between boots), then the socket joins the group.  Plain
    socket code rather than pyroute2: importing pyroute2 costs seconds on a slow CPU and
    the daemon needs three messages of it.  Datagrams are read from the socket directly,
    so the sender's port id (0 for the kernel) comes from the kernel's address.
    """

    def __init__(
        self, family: str = FAMILY_NAME, group: str | None = MCAST_GROUP, *,
        timeout: float = 5.0,
    ) -> None:
        """``group=None``: a socket for requests only (GET_NEXUS), deaf to the multicasts."""
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        try:
            self.sock.bind((0, 0))
            self.port_id: int = self.sock.getsockname()[0]
            self.family_id, groups = _resolve_family(self.sock, family, timeout)
            if group is None:
                return
            if group not in groups:
                raise FamilyNotFound(f"{family} family has no multicast group {group!r}")
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups[group])
        except BaseException:
            self.sock.close()
            raise

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (0, 0))

    def recv(self, timeout: float | None = None) -> Datagram | None:
        return _recv(self.sock, timeout)

    def close(self) -> None:
        self.sock.close()


NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
GENL_ID_CTRL = 0x10
CTRL_CMD_NEWFAMILY, CTRL_CMD_GETFAMILY = 1, 3
CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME, CTRL_ATTR_MCAST_GROUPS = 1, 2, 7
CTRL_ATTR_MCAST_GRP_NAME, CTRL_ATTR_MCAST_GRP_ID = 1, 2


def _resolve_family(sock: socket.socket, name: str, timeout: float) -> tuple[int, dict[str, int]]:
    """(family id, {group name: group id}) from the controller's CTRL_CMD_GETFAMILY reply."""
    seq = 1
    text = name.encode() + b"\0"
    nla = NLA_HDR.pack(NLA_HDR.size + len(text), CTRL_ATTR_FAMILY_NAME) + text
    body = GENL_HDR.pack(CTRL_CMD_GETFAMILY, 1, 0) + nla + bytes(-len(nla) % 4)
    header = NLMSG_HDR.pack(NLMSG_HDR.size + len(body), GENL_ID_CTRL, 1, seq, 0)
    sock.sendto(header + body, (0, 0))
    while True:
        datagram = _recv(sock, timeout)
        if datagram is None:
            raise OSError(errno.ETIMEDOUT, f"no answer from the netlink controller for {name}")
        for chunk in split(datagram.data):
            if len(chunk) < NLMSG_HDR.size:
                continue
            _, mtype, _, mseq, _ = NLMSG_HDR.unpack_from(chunk)
            if mseq != seq:
                continue  # e.g. a multicast that raced in
            if mtype == NLMSG_ERROR:
                code = -struct.unpack_from("=i", chunk, NLMSG_HDR.size)[0]
                if code == errno.ENOENT:
                    raise FamilyNotFound(f"{name} family not found: is target_core_user loaded?")
                raise OSError(code, f"resolving the {name} family: {os.strerror(code)}")
            if mtype == GENL_ID_CTRL:
                return _parse_family(chunk, name)


def _parse_family(chunk: bytes, name: str) -> tuple[int, dict[str, int]]:
    attrs = dict(_nlas(chunk, NLMSG_HDR.size + GENL_HDR.size))
    if CTRL_ATTR_FAMILY_ID not in attrs:
        raise OSError(errno.EPROTO, f"controller reply for {name} without a family id")
    groups = {}
    for _, nested in _nlas(attrs.get(CTRL_ATTR_MCAST_GROUPS, b""), 0):
        group = dict(_nlas(nested, 0))
        if CTRL_ATTR_MCAST_GRP_NAME in group and CTRL_ATTR_MCAST_GRP_ID in group:
            gname = group[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b"\0").decode(errors="replace")
            groups[gname] = struct.unpack_from("=I", group[CTRL_ATTR_MCAST_GRP_ID])[0]
    return struct.unpack_from("=H", attrs[CTRL_ATTR_FAMILY_ID])[0], groups


def _nlas(data: bytes, offset: int) -> list[tuple[int, bytes]]:
    """(type, payload) of each attribute from ``offset``; stops at a malformed one."""
    out = []
    while len(data) - offset >= NLA_HDR.size:
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size or offset + length > len(data):
            break
        out.append((kind & NLA_TYPE_MASK, data[offset + NLA_HDR.size : offset + length]))
        offset += (length + 3) & ~3
    return out
