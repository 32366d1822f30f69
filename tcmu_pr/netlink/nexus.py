"""GET_NEXUS: what a ring entry's nexus handle names (the tcmu-pr kernel patch).

A patched target_core_user puts a handle in each ring entry; a handle names one I_T nexus
of the device for the device's whole lifetime, so the daemon asks once per handle and
caches the answer (devices.py).  The request goes out on a socket of its own, not joined
to the ``config`` group: device threads ask while the main thread serves the multicast
socket, and the kernel answers the asking port only.

The reply is checked as strictly as an ADDED_DEVICE: a reply that names another handle,
lacks a field, or whose names cannot form a nexus string is a :class:`NexusLookupError`,
and the device refuses PR for that nexus rather than act under a guessed identity.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from dataclasses import dataclass

from tcmu_pr.netlink.family import (
    NLMSG_ERROR,
    Attr,
    Cmd,
    Control,
    Message,
    MessageError,
    decode,
    encode,
    split,
)
from tcmu_pr.netlink.socket import Transport
from tcmu_pr.pr.nexus import PROTO_ISCSI, Nexus, NexusError

#: The ISID is 48 bits (SAM-5 iSCSI initiator port: 6 bytes).
ISID_MAX = (1 << 48) - 1
_REQUIRED = (Attr.NEXUS_HANDLE, Attr.NEXUS_PROTO, Attr.NEXUS_INITIATOR, Attr.NEXUS_TARGET,
             Attr.NEXUS_TPGT, Attr.NEXUS_RTPI, Attr.NEXUS_SESSIONS)  # fmt: skip


class NexusLookupError(Exception):
    """GET_NEXUS failed: ``errno`` from the kernel (ENOENT unknown handle, ENODEV unknown
    device), ETIMEDOUT, or EPROTO for a reply that cannot be trusted."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = code


@dataclass(frozen=True, slots=True)
class NexusInfo:
    """One handle's meaning, as the kernel reported it."""

    handle: int
    proto: int  # SCSI protocol identifier (iSCSI 5, SAS 6, FCP 0)
    initiator: str
    isid: int | None  # iSCSI only
    target: str
    tpgt: int
    rtpi: int | None  # None: the kernel reported 0 (a TPG without one, e.g. tcm_loop's)
    sessions: int  # sessions of this nexus logged in when asked (0: gone)

    @property
    def nexus(self) -> Nexus:
        """The nexus string the PR state uses: the real ISID for iSCSI, "0" without one
        (as tcmu_pr.lio.spec writes for tcm_loop), so ``ours`` and ``ours-nexus`` agree."""
        return Nexus.make(self.initiator, self.target, isid=self.isid or 0, tpgt=self.tpgt)


def request(device_id: int, handle: int, *, seq: int, port_id: int, family_id: int) -> bytes:
    """The GET_NEXUS request bytes."""
    msg = Message.make(Cmd.GET_NEXUS, {Attr.DEVICE_ID: device_id, Attr.NEXUS_HANDLE: handle},
                       seq=seq, port_id=port_id)  # fmt: skip
    return encode(msg, family_id=family_id)


def parse_reply(msg: Message, handle: int) -> NexusInfo:
    """A decoded GET_NEXUS reply, validated; NexusLookupError(EPROTO) when it is not one."""

    def bad(why: str) -> NexusLookupError:
        return NexusLookupError(errno.EPROTO, f"GET_NEXUS reply for handle {handle}: {why}")

    if msg.cmd != Cmd.GET_NEXUS:
        raise bad(f"unexpected {msg.command_name}")
    missing = [a.name for a in _REQUIRED if msg.get(a) is None]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    a = msg.attrs
    if a[Attr.NEXUS_HANDLE] != handle:
        raise bad(f"it names handle {a[Attr.NEXUS_HANDLE]}")
    proto = int(a[Attr.NEXUS_PROTO])
    isid = msg.get(Attr.NEXUS_ISID)
    if proto == PROTO_ISCSI and isid is None:
        raise bad("iSCSI nexus without an ISID")
    if isid is not None and not 0 <= int(isid) <= ISID_MAX:
        raise bad(f"ISID {int(isid):#x} is wider than 48 bits")
    # 0: the TPG has no relative port id (6.12 assigns one when a TPG is enabled; tcm_loop
    # TPGs are never enabled, so LIO itself reports 0 for them): unknown, not an error
    rtpi = int(a[Attr.NEXUS_RTPI]) or None
    info = NexusInfo(handle, proto, str(a[Attr.NEXUS_INITIATOR]),
                     None if isid is None else int(isid), str(a[Attr.NEXUS_TARGET]),
                     int(a[Attr.NEXUS_TPGT]), rtpi, int(a[Attr.NEXUS_SESSIONS]))  # fmt: skip
    try:
        info.nexus  # noqa: B018 - the names must form a nexus string
    except NexusError as err:
        raise bad(str(err)) from None
    return info


class NexusClient:
    """Asks the kernel what handles mean; one request at a time (threads share it)."""

    def __init__(self, transport: Transport, *, timeout: float = 2.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self._lock = threading.Lock()
        self._seq = itertools.count(1)

    @classmethod
    def connect(cls, *, timeout: float = 2.0) -> NexusClient:
        from tcmu_pr.netlink.socket import KernelTransport

        return cls(KernelTransport(group=None), timeout=timeout)

    def resolve(self, device_id: int, handle: int) -> NexusInfo:
        """GET_NEXUS for one handle of one device; NexusLookupError when it fails."""
        if not 0 < handle <= 0xFFFFFFFF:
            raise NexusLookupError(errno.EINVAL, f"handle {handle} is not a u32 > 0")
        with self._lock:
            seq = next(self._seq) & 0xFFFFFFFF
            t = self.transport
            t.send(request(device_id, handle, seq=seq, port_id=t.port_id, family_id=t.family_id))
            while True:
                datagram = t.recv(self.timeout)
                if datagram is None:
                    raise NexusLookupError(errno.ETIMEDOUT,
                                           f"no GET_NEXUS reply for handle {handle}")  # fmt: skip
                for chunk in split(datagram.data):
                    reply = self._match(chunk, seq, handle)
                    if reply is not None:
                        return reply

    def _match(self, chunk: bytes, seq: int, handle: int) -> NexusInfo | None:
        try:
            msg = decode(chunk, family_id=self.transport.family_id)
        except MessageError as err:
            if err.seq == seq:
                raise NexusLookupError(errno.EPROTO, f"GET_NEXUS reply: {err}") from None
            return None
        if msg.seq != seq:
            return None  # a late answer to an earlier request that timed out
        if isinstance(msg, Control):
            if msg.type == NLMSG_ERROR and msg.error:
                code = -msg.error
                raise NexusLookupError(code, f"GET_NEXUS for handle {handle}: "
                                             f"{os.strerror(code)}")  # fmt: skip
            return None  # an ack
        return parse_reply(msg, handle)

    def close(self) -> None:
        self.transport.close()
