"""The TCM-USER service: answers the kernel's device and PR-info commands.

One command at a time: the kernel keeps at most one netlink command outstanding per device
and waits for its ``*_DONE``, so serial handling is both sufficient and what keeps a
device's add/reconfig/remove in order.  Everything the kernel sends is decoded once by
:mod:`tcmu_pr.netlink.family`; :meth:`NetlinkService.dispatch` works on the typed message
and never raises, because an exception here would leave the kernel blocked on a reply.

The device side (ring, data backend, the LU and its PR state) belongs to the daemon; it
plugs in as a :class:`DeviceManager`.  GET/SET_PR_INFO are answered by the device's LU
through the manager, so they share its store connection and its confirmation rule; this
module only moves the blob between netlink attributes and bytes.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tcmu_pr.netlink.devconfig import (
    DevConfig,
    DeviceInfo,
    DeviceStringError,
    parse_dev_config,
    split_uio_name,
)
from tcmu_pr.netlink.family import (
    FAMILY_VERSION,
    NLMSG_ERROR,
    REPLY_OF,
    Attr,
    Cmd,
    Control,
    Message,
    MessageError,
    decode,
    encode,
    split,
)
from tcmu_pr.netlink.socket import Datagram, Transport

log = logging.getLogger(__name__)

SEQ_MOD = 2**32
#: CMD_STATUS of a SET_PR_INFO that did not land because the stored blob moved on
#: (stale seq or lost compare-and-swap): the kernel must GET_PR_INFO and re-apply.
STATUS_RETRY = -errno.EAGAIN
#: nla_len is 16 bits: a string attribute holds at most this many bytes, NUL included.
MAX_STRING_ATTR = 0xFFFF - 4


class DeviceError(Exception):
    """A device manager's refusal; ``errno`` (positive) goes back to the kernel negated."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.errno = code


@dataclass(frozen=True, slots=True)
class Reconfig:
    """What one RECONFIG_DEVICE asks to change (the kernel sends one item at a time)."""

    config: DevConfig | None = None
    size: int | None = None
    writecache: bool | None = None


class DeviceManager(Protocol):
    """The daemon's device side: ring, data backend, SCSI emulation, PR state."""

    def open_device(self, info: DeviceInfo) -> None:
        """Start serving ``info``'s ring; raise DeviceError (or OSError) to refuse."""
        ...

    def close_device(self, device_id: int) -> None: ...

    def reconfig_device(self, device_id: int, changes: Reconfig) -> None:
        """Apply ``changes``; raise DeviceError (or OSError) to refuse, changing nothing."""
        ...

    def get_pr_info(self, device_id: int) -> bytes:
        """The device's stored ``pr_info`` blob; DeviceError when it cannot be read."""
        ...

    def set_pr_info(self, device_id: int, blob: bytes) -> None:
        """Store the kernel's blob; DeviceError(EAGAIN) when stale (the kernel re-reads)."""
        ...


class NetlinkService:
    """Serves TCM-USER for one daemon over a :class:`Transport`."""

    def __init__(self, transport: Transport, devices: DeviceManager) -> None:
        self.transport = transport
        self.manager = devices
        self._owns_transport = False
        self._devices: dict[int, DeviceInfo] = {}
        self._seq = 0
        self.acked: set[int] = set()
        self.last_announce: int | None = None  # seq of the SET_FEATURES connect() sent
        self.refused: dict[int, int] = {}  # seq -> errno
        self._handlers: dict[Cmd, Callable[[int, Message], tuple[int, dict]]] = {
            Cmd.ADDED_DEVICE: self._added,
            Cmd.REMOVED_DEVICE: self._removed,
            Cmd.RECONFIG_DEVICE: self._reconfig,
            Cmd.GET_PR_INFO: self._get_pr_info,
            Cmd.SET_PR_INFO: self._set_pr_info,
        }

    @classmethod
    def connect(cls, devices: DeviceManager) -> NetlinkService:
        """Bind to the kernel's TCM-USER family and announce; raises FamilyNotFound."""
        from tcmu_pr.netlink.socket import KernelTransport

        service = cls(KernelTransport(), devices)
        service._owns_transport = True
        service.last_announce = service.announce()
        return service

    # ------------------------------------------------------------------ loop

    def announce(self, reply: bool = True) -> int:
        """SET_FEATURES(SUPP_KERN_CMD_REPLY): whether the kernel waits for our *_DONE.

        The kernel applies it while we send (genetlink runs the command in our context);
        the ack that follows only confirms it, or says EPERM.  Returns the message's seq:
        :attr:`acked` holds the seqs the kernel acknowledged, :attr:`refused` the others.
        The setting is global and outlives us, so the daemon turns it off when it stops:
        otherwise a backstore enabled while no daemon runs blocks until one answers.
        """
        self._seq = (self._seq + 1) % SEQ_MOD
        msg = Message.make(
            Cmd.SET_FEATURES,
            {Attr.SUPP_KERN_CMD_REPLY: int(reply)},
            seq=self._seq,
            port_id=self.transport.port_id,
            flags=0x1 | 0x4,  # NLM_F_REQUEST | NLM_F_ACK: the kernel confirms (or EPERM)
        )
        self.transport.send(encode(msg, family_id=self.transport.family_id))
        return self._seq

    def serve_forever(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Handle commands until ``stop`` is set (checked every ``poll_interval`` s)."""
        while not stop.is_set():
            self.handle_one(timeout=poll_interval)

    def handle_one(self, timeout: float | None = None) -> bool:
        """Receive one datagram and answer what it asks; False when none came in time."""
        try:
            datagram = self.transport.recv(timeout)
        except OSError as exc:
            # ENOBUFS: the socket overflowed and kernel commands were lost; nothing to answer.
            log.error("receiving from the kernel failed: %s", exc)
            return False
        if datagram is None:
            return False
        for reply in self.handle_datagram(datagram):
            try:
                self.transport.send(reply)
            except OSError as exc:
                log.error("cannot send reply to the kernel: %s", exc)
        return True

    def handle_datagram(self, datagram: Datagram) -> list[bytes]:
        """Replies (wire bytes) to the messages in ``datagram``; never raises."""
        if datagram.sender not in (None, 0):
            log.warning(
                "dropped a datagram from port %d: only the kernel (port 0) may send",
                datagram.sender,
            )
            return []
        replies = []
        for chunk in split(datagram.data):
            reply = self._handle_bytes(chunk, datagram.truncated)
            if reply is None:
                continue
            try:
                replies.append(encode(reply, family_id=self.transport.family_id))
            except Exception:  # a reply we cannot build must not stop the loop
                log.exception("cannot encode %s", reply.command_name)
        return replies

    def _handle_bytes(self, data: bytes, truncated: bool) -> Message | None:
        try:
            msg = decode(data, family_id=self.transport.family_id)
        except MessageError as exc:
            if truncated:
                exc.reason = f"oversized datagram cut at {len(data)} bytes"
                exc.errno = errno.EMSGSIZE
            return self._reply_malformed(exc)
        if isinstance(msg, Control):
            self._note_control(msg)
            return None
        if truncated:  # cut exactly at a message boundary: still not the whole datagram
            exc = MessageError(
                f"oversized datagram cut at {len(data)} bytes",
                cmd=msg.cmd,
                device_id=_int(msg.get(Attr.DEVICE_ID)),
                port_id=msg.port_id,
                code=errno.EMSGSIZE,
            )
            return self._reply_malformed(exc)
        return self.dispatch(msg)

    def _reply_malformed(self, exc: MessageError) -> Message | None:
        if exc.port_id not in (None, 0):
            log.warning("dropped a malformed message from port %d (%s)", exc.port_id, exc.reason)
            return None
        reply_cmd = REPLY_OF.get(exc.cmd) if exc.cmd is not None else None
        if reply_cmd is None or exc.device_id is None:
            log.error("dropped a malformed message (%s): no request to answer", exc.reason)
            return None
        log.error("malformed %s for device %d: %s", Cmd(exc.cmd).name, exc.device_id, exc.reason)
        return self._reply(reply_cmd, exc.device_id, -exc.errno)

    def _note_control(self, msg: Control) -> None:
        if msg.type == NLMSG_ERROR and msg.error == 0:
            log.debug("kernel acknowledged seq %d", msg.seq)
            self.acked.add(msg.seq)
        elif msg.type == NLMSG_ERROR:
            name = errno.errorcode.get(-(msg.error or 0), str(msg.error))
            log.error("kernel refused our message seq %d: %s", msg.seq, name)
            self.refused[msg.seq] = -(msg.error or 0)
        else:
            log.debug("ignored netlink message type %d", msg.type)

    # ------------------------------------------------------------------ dispatch

    def dispatch(self, msg: Message) -> Message | None:
        """The reply to one decoded message, or None when none is due.  Never raises."""
        if msg.port_id != 0:
            log.warning(
                "dropped %s from port %d: only the kernel may send commands",
                msg.command_name,
                msg.port_id,
            )
            return None
        reply_cmd = REPLY_OF.get(msg.cmd)
        if reply_cmd is None:
            log.error("dropped %s: not a command the daemon answers", msg.command_name)
            return None
        device_id = msg.get(Attr.DEVICE_ID)
        if not isinstance(device_id, int):
            log.error(
                "dropped %s without TCMU_ATTR_DEVICE_ID: no way to address a reply",
                msg.command_name,
            )
            return None
        handler = self._handlers[Cmd(msg.cmd)]
        try:
            status, extra = handler(device_id, msg)
        except Exception:  # a bug must not leave the kernel waiting forever
            log.exception("%s for device %d failed", msg.command_name, device_id)
            status, extra = -errno.EIO, {}
        return self._reply(reply_cmd, device_id, status, extra)

    def _reply(
        self, cmd: Cmd, device_id: int, status: int, extra: dict[Attr, int | str] | None = None
    ) -> Message:
        self._seq = (self._seq + 1) % SEQ_MOD
        attrs: dict[Attr, int | str] = {Attr.CMD_STATUS: status, Attr.DEVICE_ID: device_id}
        attrs.update(extra or {})
        return Message.make(
            cmd, attrs, seq=self._seq, port_id=self.transport.port_id, version=FAMILY_VERSION
        )

    # ------------------------------------------------------------------ devices

    def device(self, device_id: int) -> DeviceInfo | None:
        return self._devices.get(device_id)

    def adopt(self, device_id: int, minor: int, uio_name: str, *, pending: bool) -> int:
        """Serve a device that existed before we joined, as if its ADDED_DEVICE had come.

        ``pending``: the kernel still waits for that ADDED_DEVICE's reply (its configfs
        ``enable`` reads 0), so send it the ADDED_DEVICE_DONE it waits for.  Returns the
        status (0 or -errno).
        """
        status = self._add(device_id, uio_name, minor)
        if status == 0:
            log.info("adopted existing device %d: %s (uio%d)", device_id, uio_name, minor)
        if pending:
            reply = self._reply(Cmd.ADDED_DEVICE_DONE, device_id, status)
            try:
                self.transport.send(encode(reply, family_id=self.transport.family_id))
            except OSError as exc:
                log.error("cannot send ADDED_DEVICE_DONE for device %d: %s", device_id, exc)
        return status

    def _added(self, device_id: int, msg: Message) -> tuple[int, dict]:
        uio_name, minor = msg.get(Attr.DEVICE), msg.get(Attr.MINOR)
        if not isinstance(uio_name, str) or not isinstance(minor, int):
            log.error("ADDED_DEVICE %d: TCMU_ATTR_DEVICE or TCMU_ATTR_MINOR missing", device_id)
            return -errno.EINVAL, {}
        return self._add(device_id, uio_name, minor), {}

    def _add(self, device_id: int, uio_name: str, minor: int) -> int:
        known = self._devices.get(device_id)
        if known is not None and (known.uio_name, known.minor) == (uio_name, minor):
            # Adopted at start while its ADDED_DEVICE was still queued for us: same device.
            log.debug("ADDED_DEVICE %d: already serving %s", device_id, uio_name)
            return 0
        if known is not None:
            log.error("ADDED_DEVICE %d: already serving %s", device_id, known.uio_name)
            return -errno.EEXIST
        try:
            hba, name, dev_config = split_uio_name(uio_name)
            config = parse_dev_config(dev_config)
        except DeviceStringError as exc:
            log.error("ADDED_DEVICE %d (%s): %s", device_id, uio_name, exc)
            return -exc.errno
        info = DeviceInfo(device_id, minor, hba, name, config, uio_name)
        try:
            self.manager.open_device(info)
        except Exception as exc:
            log.error("ADDED_DEVICE %d (%s): device refused: %s", device_id, uio_name, exc)
            return -_errno_of(exc)
        self._devices[device_id] = info
        log.info("serving device %d: %s (uio%d)", device_id, uio_name, minor)
        return 0

    def _removed(self, device_id: int, msg: Message) -> tuple[int, dict]:
        info = self._devices.pop(device_id, None)
        if info is None:
            log.warning("REMOVED_DEVICE %d: not a device this daemon serves", device_id)
            return -errno.ENODEV, {}
        self.manager.close_device(device_id)
        log.info("stopped serving device %d: %s", device_id, info.uio_name)
        return 0, {}

    def _reconfig(self, device_id: int, msg: Message) -> tuple[int, dict]:
        info = self._devices.get(device_id)
        if info is None:
            log.error("RECONFIG_DEVICE %d: unknown device", device_id)
            return -errno.ENODEV, {}
        cfg_text, size, wc = (
            msg.get(Attr.DEV_CFG),
            msg.get(Attr.DEV_SIZE),
            msg.get(Attr.WRITECACHE),
        )
        if cfg_text is None and size is None and wc is None:
            log.error(
                "RECONFIG_DEVICE %d: nothing to change (no DEV_CFG/DEV_SIZE/WRITECACHE)", device_id
            )
            return -errno.EINVAL, {}
        config = None
        if isinstance(cfg_text, str):
            try:
                config = parse_dev_config(cfg_text)
            except DeviceStringError as exc:
                log.error("RECONFIG_DEVICE %d: %s", device_id, exc)
                return -exc.errno, {}
        if wc is not None and wc not in (0, 1):
            log.error("RECONFIG_DEVICE %d: WRITECACHE %d is not 0 or 1", device_id, wc)
            return -errno.EINVAL, {}
        changes = Reconfig(config, _int(size), None if wc is None else bool(wc))
        try:
            self.manager.reconfig_device(device_id, changes)
        except Exception as exc:
            log.error("RECONFIG_DEVICE %d: refused: %s", device_id, exc)
            return -_errno_of(exc), {}
        if config is not None:
            self._devices[device_id] = _with_config(info, config)
        log.info("reconfigured device %d: %s", device_id, changes)
        return 0, {}

    # ------------------------------------------------------------------ PR info

    def _get_pr_info(self, device_id: int, msg: Message) -> tuple[int, dict]:
        if device_id not in self._devices:
            log.error("GET_PR_INFO %d: unknown device", device_id)
            return -errno.ENODEV, {}
        try:
            blob = self.manager.get_pr_info(device_id)
        except Exception as exc:
            log.error("GET_PR_INFO %d: %s", device_id, exc)
            return -_errno_of(exc), {}
        text = blob[:-1] if blob.endswith(b"\0") else blob
        try:
            value = text.decode("ascii")
            if "\0" in value:
                raise ValueError("NUL inside")
        except ValueError:
            log.error("GET_PR_INFO %d: stored blob is not a NUL-free ASCII string", device_id)
            return -errno.EIO, {}
        if len(value) + 1 > MAX_STRING_ATTR:
            log.error(
                "GET_PR_INFO %d: the %d-byte blob does not fit one netlink attribute",
                device_id,
                len(value) + 1,
            )
            return -errno.EMSGSIZE, {}
        return 0, {Attr.PR_INFO: value}

    def _set_pr_info(self, device_id: int, msg: Message) -> tuple[int, dict]:
        if device_id not in self._devices:
            log.error("SET_PR_INFO %d: unknown device", device_id)
            return -errno.ENODEV, {}
        text = msg.get(Attr.PR_INFO)
        if not isinstance(text, str):
            log.error("SET_PR_INFO %d: no TCMU_ATTR_PR_INFO", device_id)
            return -errno.EINVAL, {}
        try:
            self.manager.set_pr_info(device_id, text.encode("utf-8"))
        except Exception as exc:
            code = _errno_of(exc)
            level = logging.INFO if code == errno.EAGAIN else logging.ERROR
            log.log(level, "SET_PR_INFO %d: %s", device_id, exc)
            return (STATUS_RETRY if code == errno.EAGAIN else -code), {}
        return 0, {}

    def close(self) -> None:
        """Stop serving every device (the daemon is exiting); the transport too if ours."""
        for device_id in list(self._devices):
            self._devices.pop(device_id)
            try:
                self.manager.close_device(device_id)
            except Exception:
                log.exception("closing device %d failed", device_id)
        if self._owns_transport:
            self.transport.close()


def _errno_of(exc: BaseException) -> int:
    """Positive errno for a refusal: the exception's own, else EINVAL for bad input, EIO."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return code
    if isinstance(exc, ValueError):
        return errno.EINVAL
    return errno.EIO


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _with_config(info: DeviceInfo, config: DevConfig) -> DeviceInfo:
    uio_name = f"tcm-user/{info.hba}/{info.name}/{config.raw}"
    return DeviceInfo(info.device_id, info.minor, info.hba, info.name, config, uio_name)
