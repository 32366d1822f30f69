"""Transports that carry TCM-USER netlink bytes: the kernel's socket, or a test socket.

The service only sends and receives whole datagrams, so the transport is a three-method
protocol.  :class:`KernelTransport` is the real thing: a pyroute2 GenericNetlinkSocket bound
to family TCM-USER (resolved by name; ids change between boots) and joined to the ``config``
multicast group.  :class:`PacketTransport` carries the same bytes over any connected
SOCK_SEQPACKET/SOCK_DGRAM socket, e.g. one end of ``socket.socketpair``, for a test peer
that plays the kernel.
"""

from __future__ import annotations

import errno
import select
import socket
from dataclasses import dataclass
from typing import Protocol

from tcmu_pr.netlink.family import FAMILY_NAME, MAX_MESSAGE_SIZE, MCAST_GROUP, TcmuMsg


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
    """The TCM-USER family through a pyroute2 GenericNetlinkSocket.

    pyroute2 resolves the family and its multicast groups by name and joins the group; the
    datagrams themselves go through the bound socket directly, so the sender's port id (0 for
    the kernel) comes from the kernel's address rather than from the message.
    """

    def __init__(self, family: str = FAMILY_NAME, group: str = MCAST_GROUP) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.generic import GenericNetlinkSocket

        self._nl = GenericNetlinkSocket()
        try:
            try:
                self._nl.bind(family, TcmuMsg)
            except NetlinkError as exc:
                if exc.code == errno.ENOENT:
                    raise FamilyNotFound(
                        f"{family} family not found: is target_core_user loaded?"
                    ) from None
                raise
            if group not in self._nl.mcast_groups:
                raise FamilyNotFound(f"{family} family has no multicast group {group!r}")
            self._nl.add_membership(group)
        except BaseException:
            self._nl.close()
            raise
        self.family_id: int = self._nl.prid
        self.sock: socket.socket = self._nl.asyncore.socket
        self.port_id: int = self.sock.getsockname()[0]

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (0, 0))

    def recv(self, timeout: float | None = None) -> Datagram | None:
        return _recv(self.sock, timeout)

    def close(self) -> None:
        self._nl.close()
