"""A test peer that plays target_core_user's side of TCM-USER over a socket pair.

It builds and parses messages with pyroute2's genlmsg class (the family's nla_map), not with
the service's own decoder, so the two sides only agree through the wire format.  The PR
peer drives the PR engine the way the TCMU PR series' kernel does: GET_PR_INFO, decode,
execute, encode with seq + 1, SET_PR_INFO, and on a refused SET re-GET and retry.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from pyroute2.netlink import NLM_F_REQUEST

from tcmu_pr.netlink.family import Attr, Cmd, TcmuMsg, nla_name
from tcmu_pr.netlink.service import NetlinkService
from tcmu_pr.netlink.socket import PacketTransport

#: A made-up generic netlink id, as the kernel would assign one at boot.
FAMILY_ID = 0x1F
DAEMON_PORT = 4242


def build(
    cmd: int,
    attrs: dict[Attr, int | str],
    *,
    pid: int = 0,
    seq: int = 0,
    family_id: int = FAMILY_ID,
) -> bytes:
    """A kernel-style message (genlmsg_put(skb, 0, 0, ...)) encoded by pyroute2."""
    msg = TcmuMsg()
    msg["cmd"] = cmd
    msg["version"] = 2
    msg["attrs"] = [[nla_name(a), v] for a, v in attrs.items()]
    msg["header"]["type"] = family_id
    msg["header"]["flags"] = NLM_F_REQUEST
    msg["header"]["sequence_number"] = seq
    msg["header"]["pid"] = pid
    msg.encode()
    return bytes(msg.data)


def raw(
    cmd: int,
    attrs: list[tuple[int, bytes]],
    *,
    pid: int = 0,
    family_id: int = FAMILY_ID,
    length: int | None = None,
) -> bytes:
    """A message assembled byte by byte, for the malformed ones pyroute2 would not build."""
    body = struct.pack("=BBH", cmd, 2, 0)
    for nla_type, payload in attrs:
        nla = struct.pack("=HH", 4 + len(payload), nla_type) + payload
        body += nla + b"\0" * (-len(nla) % 4)
    total = 16 + len(body)
    return struct.pack("=IHHII", total if length is None else length, family_id, 0, 0, pid) + body


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def parse(data: bytes) -> TcmuMsg:
    msg = TcmuMsg(data)
    msg.decode()
    return msg


@dataclass
class Reply:
    cmd: int
    status: int
    device_id: int
    pr_info: str | None
    port_id: int


class KernelPeer:
    """The kernel's end of a socket pair: sends commands, waits for *_DONE replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout: float = 10) -> TcmuMsg | None:
        self.sock.settimeout(timeout)
        try:
            return parse(self.sock.recv(1 << 17))
        except TimeoutError:
            return None

    def reply(self, timeout: float = 10) -> Reply:
        msg = self.recv(timeout)
        assert msg is not None, "no reply from the service"
        assert msg["header"]["type"] == FAMILY_ID
        assert msg["header"]["flags"] & NLM_F_REQUEST  # else the kernel's genl ignores it
        assert msg["version"] == 2
        return Reply(
            msg["cmd"],
            msg.get_attr("TCMU_ATTR_CMD_STATUS"),
            msg.get_attr("TCMU_ATTR_DEVICE_ID"),
            msg.get_attr("TCMU_ATTR_PR_INFO"),
            msg["header"]["pid"],
        )

    def request(
        self,
        cmd: Cmd,
        device_id: int,
        attrs: dict[Attr, int | str] | None = None,
        *,
        minor: int = 0,
        device: str = "tcm-user/1/lu",
    ) -> Reply:
        """What tcmu_netlink_event_init sends (DEVICE, MINOR, DEVICE_ID) plus ``attrs``."""
        base: dict[Attr, int | str] = {
            Attr.DEVICE: device,
            Attr.MINOR: minor,
            Attr.DEVICE_ID: device_id,
        }
        self.send(build(cmd, base | (attrs or {})))
        reply = self.reply()
        assert reply.device_id == device_id
        return reply

    def add_device(
        self, device_id: int, dev_config: str, *, name: str = "lu", minor: int = 0
    ) -> int:
        device = f"tcm-user/1/{name}/{dev_config}" if dev_config else f"tcm-user/1/{name}"
        reply = self.request(Cmd.ADDED_DEVICE, device_id, minor=minor, device=device)
        assert reply.cmd == Cmd.ADDED_DEVICE_DONE
        return reply.status

    def remove_device(self, device_id: int) -> int:
        reply = self.request(Cmd.REMOVED_DEVICE, device_id)
        assert reply.cmd == Cmd.REMOVED_DEVICE_DONE
        return reply.status

    def reconfig(self, device_id: int, attrs: dict[Attr, int | str]) -> int:
        reply = self.request(Cmd.RECONFIG_DEVICE, device_id, attrs)
        assert reply.cmd == Cmd.RECONFIG_DEVICE_DONE
        return reply.status

    def get_pr_info(self, device_id: int) -> tuple[int, str | None]:
        reply = self.request(Cmd.GET_PR_INFO, device_id)
        assert reply.cmd == Cmd.GET_PR_INFO_DONE
        return reply.status, reply.pr_info

    def set_pr_info(self, device_id: int, blob: str) -> int:
        reply = self.request(Cmd.SET_PR_INFO, device_id, {Attr.PR_INFO: blob})
        assert reply.cmd == Cmd.SET_PR_INFO_DONE
        return reply.status


@dataclass
class PRPeer:
    """The PR series' kernel: every PR command is GET -> engine -> SET(seq + 1), retried."""

    kernel: KernelPeer
    device_id: int
    retries: int = 0
    writes: int = 0
    statuses: list[int] = field(default_factory=list)

    def execute(self, nexus, cdb: bytes, data: bytes = b""):
        from tcmu_pr.engine import execute
        from tcmu_pr.pr import codec
        from tcmu_pr.pr.state import PRState

        while True:
            status, text = self.kernel.get_pr_info(self.device_id)
            assert status == 0, f"GET_PR_INFO failed: {status}"
            state = codec.decode(text.encode()) if text else PRState()
            outcome = execute(state, nexus, cdb, data)
            if outcome.state is state:
                return outcome
            new = replace(outcome.state, seq=(state.seq + 1) % 2**32)
            blob = codec.encode(new)[:-1].decode("ascii")  # nla_put_string adds the NUL
            status = self.kernel.set_pr_info(self.device_id, blob)
            self.statuses.append(status)
            if status == 0:
                self.writes += 1
                return outcome
            assert status == -errno.EAGAIN, f"SET_PR_INFO failed: {status}"
            self.retries += 1


class RecordingManager:
    """A DeviceManager that records calls and refuses what it is told to refuse.

    The PR side is real: each device gets a LogicalUnit on its real PR store (a participant,
    as in the daemon), so GET/SET_PR_INFO are answered exactly as the daemon answers them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse: OSError | None = None
        self.lus: dict[int, tuple] = {}

    def open_device(self, info) -> None:
        from tcmu_pr.backends import open_store
        from tcmu_pr.unit.lu import LogicalUnit

        if self.refuse is not None:
            raise self.refuse
        store = open_store(info.config.pr_store)
        self.lus[info.device_id] = (store, LogicalUnit(store))
        self.calls.append(("open", info))

    def close_device(self, device_id: int) -> None:
        store, lu = self.lus.pop(device_id, (None, None))
        if lu is not None:
            lu.close()
            store.close()
        self.calls.append(("close", device_id))

    def reconfig_device(self, device_id: int, changes) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append(("reconfig", device_id, changes))

    def get_pr_info(self, device_id: int) -> bytes:
        return self._pr(lambda lu: lu.get_pr_info(), device_id)

    def set_pr_info(self, device_id: int, blob: bytes) -> None:
        self._pr(lambda lu: lu.set_pr_info(blob), device_id)

    def _pr(self, call, device_id: int):
        from tcmu_pr.netlink.service import DeviceError
        from tcmu_pr.unit.lu import PRInfoRefused

        try:
            return call(self.lus[device_id][1])
        except PRInfoRefused as err:
            raise DeviceError(err.errno, str(err)) from err


@contextmanager
def running_service(manager=None, **service_kw) -> Iterator[tuple[KernelPeer, NetlinkService]]:
    """A NetlinkService on one end of a SOCK_SEQPACKET pair, served by a thread."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    transport = PacketTransport(ours, family_id=FAMILY_ID, port_id=DAEMON_PORT)
    service = NetlinkService(transport, manager or RecordingManager(), **service_kw)
    stop = threading.Event()
    thread = threading.Thread(target=service.serve_forever, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        yield KernelPeer(theirs), service
    finally:
        stop.set()
        thread.join(5)
        service.close()
        transport.close()
        theirs.close()
        assert not thread.is_alive()


def nexus_attrs(handle: int, initiator: str, target: str, *, isid: int | None = 0x23D000001,
                tpgt: int = 1, rtpi: int = 1, proto: int = 5, sessions: int = 1) -> dict:
    """The attributes of a GET_NEXUS reply, as the patched kernel fills them."""
    attrs: dict[Attr, int | str] = {
        Attr.NEXUS_HANDLE: handle, Attr.NEXUS_PROTO: proto, Attr.NEXUS_INITIATOR: initiator,
        Attr.NEXUS_TARGET: target, Attr.NEXUS_TPGT: tpgt, Attr.NEXUS_RTPI: rtpi,
        Attr.NEXUS_SESSIONS: sessions,
    }  # fmt: skip
    if isid is not None:
        attrs[Attr.NEXUS_ISID] = isid
    return attrs


def netlink_error(code: int, seq: int, *, pid: int = DAEMON_PORT) -> bytes:
    """An NLMSG_ERROR carrying -code, as genl answers a failed doit."""
    return struct.pack("=IHHIIi", 20, 2, 0, seq, pid, -code)


class NexusKernel:
    """The patched kernel's GET_NEXUS, on a socket pair: ``table`` maps (device id, handle)
    to reply attributes, an errno (answered as a netlink error) or raw reply bytes (for
    malformed replies); everything else is ENOENT. Requests are recorded."""

    def __init__(self) -> None:
        from tcmu_pr.netlink.socket import PacketTransport

        ours, self._sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.transport = PacketTransport(ours, family_id=FAMILY_ID, port_id=DAEMON_PORT)
        self.table: dict[tuple[int, int], dict | int | bytes] = {}
        self.requests: list[tuple[int, int]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            msg = parse(data)
            assert msg["cmd"] == Cmd.GET_NEXUS and msg["header"]["flags"] & NLM_F_REQUEST
            seq = msg["header"]["sequence_number"]
            key = (msg.get_attr("TCMU_ATTR_DEVICE_ID"), msg.get_attr("TCMU_ATTR_NEXUS_HANDLE"))
            self.requests.append(key)
            answer = self.table.get(key, errno.ENOENT)
            if isinstance(answer, int):
                out = netlink_error(answer, seq)
            elif isinstance(answer, bytes):
                out = answer
            else:
                out = build(Cmd.GET_NEXUS, answer, seq=seq, pid=DAEMON_PORT)
            try:
                self._sock.send(out)
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()
        self.transport.close()
        self._thread.join(5)
