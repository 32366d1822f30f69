"""Control commands on /dev/ublk-control: add, configure, start, stop, delete, recover.

Every call is one io_uring URING_CMD (native ``ublk_ctrl``) with the ioctl-encoded opcode
the 6.12 driver expects; the kernel's -errno becomes a :class:`UblkError` that names the
command.  Which optional flags a device gets is decided from GET_FEATURES, never assumed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcmu_pr.ublk.native import UblkError, load

CONTROL = "/dev/ublk-control"
#: UBLK_MAX_QUEUE_DEPTH of the uapi: ADD_DEV refuses a deeper queue.
MAX_DEPTH = 4096
STATE_NAMES = {0: "dead", 1: "live", 2: "quiesced"}


@dataclass(frozen=True, slots=True)
class DevInfo:
    dev_id: int
    nr_queues: int
    depth: int
    state: int
    max_io_bytes: int
    pid: int
    flags: int

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, f"state {self.state}")


@dataclass(frozen=True, slots=True)
class Params:
    """What SET_PARAMS tells the block layer; sizes in bytes."""

    size: int
    logical_block: int = 512
    physical_block: int = 4096
    max_io: int = 512 << 10
    discard_granularity: int = 4096
    max_discard: int = 1 << 30
    volatile_cache: bool = True


def _shift(value: int, what: str) -> int:
    if value <= 0 or value & (value - 1):
        raise UblkError(f"{what} {value} is not a power of two")
    return value.bit_length() - 1


class Control:
    """An open /dev/ublk-control (root only)."""

    def __init__(self, path: str = CONTROL) -> None:
        self._mod = load()
        if not os.path.exists(path):
            subprocess_modprobe()
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise UblkError(f"cannot open {path}: {err.strerror} (is ublk_drv loaded?)") from err

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Control:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cmd(self, nr: int, dev_id: int, buf: Any = None, size: int = 0, data0: int = 0,
             what: str = "") -> int:  # fmt: skip
        ffi, lib = self._mod.ffi, self._mod.lib
        rc = lib.ublk_ctrl(self.fd, nr, dev_id & 0xFFFFFFFF, ffi.NULL if buf is None else buf,
                           size, data0)  # fmt: skip
        if rc < 0:
            raise UblkError(f"{what}: {os.strerror(-rc)}", -rc)
        return int(rc)

    def features(self) -> int:
        ffi, lib = self._mod.ffi, self._mod.lib
        buf = ffi.new("uint64_t *")
        self._cmd(lib.UBLK_CTRL_GET_FEATURES, 0xFFFFFFFF, buf, 8, what="GET_FEATURES")
        return int(buf[0])

    def _info(self, raw: Any) -> DevInfo:
        return DevInfo(int(raw.dev_id), int(raw.nr_hw_queues), int(raw.queue_depth),
                       int(raw.state), int(raw.max_io_buf_bytes), int(raw.ublksrv_pid),
                       int(raw.flags))  # fmt: skip

    def add(self, nr_queues: int, depth: int, max_io: int, flags: int) -> DevInfo:
        ffi, lib = self._mod.ffi, self._mod.lib
        info = ffi.new("struct ublk_dev_info *")
        info.nr_hw_queues = nr_queues
        info.queue_depth = depth
        info.max_io_buf_bytes = max_io
        info.dev_id = 0xFFFFFFFF  # the kernel picks the number
        info.flags = flags
        self._cmd(lib.UBLK_CTRL_ADD_DEV, 0xFFFFFFFF, info, ffi.sizeof(info[0]), what="ADD_DEV")
        return self._info(info)

    def info(self, dev_id: int) -> DevInfo:
        ffi, lib = self._mod.ffi, self._mod.lib
        info = ffi.new("struct ublk_dev_info *")
        self._cmd(lib.UBLK_CTRL_GET_DEV_INFO, dev_id, info, ffi.sizeof(info[0]),
                  what=f"GET_DEV_INFO ublk{dev_id}")  # fmt: skip
        return self._info(info)

    def set_params(self, dev_id: int, p: Params) -> None:
        ffi, lib = self._mod.ffi, self._mod.lib
        params = ffi.new("struct ublk_params_ *")
        params.len = ffi.sizeof(params[0])
        params.types = lib.UBLK_PTYPE_BASIC | lib.UBLK_PTYPE_DISCARD
        b = params.basic
        b.attrs = lib.UBLK_ATTR_VOLATILE_CACHE_ if p.volatile_cache else 0
        b.logical_bs_shift = _shift(p.logical_block, "logical block size")
        b.physical_bs_shift = _shift(p.physical_block, "physical block size")
        b.io_min_shift = b.logical_bs_shift
        b.io_opt_shift = b.physical_bs_shift
        b.max_sectors = p.max_io >> 9
        b.dev_sectors = p.size >> 9
        d = params.discard
        d.discard_granularity = p.discard_granularity
        d.max_discard_sectors = p.max_discard >> 9
        d.max_write_zeroes_sectors = p.max_discard >> 9
        d.max_discard_segments = 1
        self._cmd(lib.UBLK_CTRL_SET_PARAMS, dev_id, params, ffi.sizeof(params[0]),
                  what=f"SET_PARAMS ublk{dev_id}")  # fmt: skip

    def start(self, dev_id: int, pid: int) -> None:
        """Blocks until every queue has its FETCH_REQs in (run the queues first)."""
        self._cmd(self._mod.lib.UBLK_CTRL_START_DEV, dev_id, data0=pid,
                  what=f"START_DEV ublk{dev_id}")  # fmt: skip

    def stop(self, dev_id: int) -> None:
        self._cmd(self._mod.lib.UBLK_CTRL_STOP_DEV, dev_id, what=f"STOP_DEV ublk{dev_id}")

    def delete(self, dev_id: int) -> None:
        """Returns once the device is gone: its server must have closed /dev/ublkcN."""
        self._cmd(self._mod.lib.UBLK_CTRL_DEL_DEV, dev_id, what=f"DEL_DEV ublk{dev_id}")

    def start_recovery(self, dev_id: int, timeout: float = 30.0) -> None:
        """START_USER_RECOVERY, retried while the old server is still being torn down
        (the kernel answers EBUSY until its /dev/ublkcN is closed and the queues quiesced)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._cmd(self._mod.lib.UBLK_CTRL_START_USER_RECOVERY, dev_id,
                          what=f"START_USER_RECOVERY ublk{dev_id}")  # fmt: skip
                return
            except UblkError as err:
                code = err.args[1] if len(err.args) > 1 else 0
                if code != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def end_recovery(self, dev_id: int, pid: int) -> None:
        self._cmd(self._mod.lib.UBLK_CTRL_END_USER_RECOVERY, dev_id, data0=pid,
                  what=f"END_USER_RECOVERY ublk{dev_id}")  # fmt: skip


def subprocess_modprobe() -> None:
    """Load ublk_drv if /dev/ublk-control is missing (quietly: open() reports the failure)."""
    import subprocess

    subprocess.run(["modprobe", "ublk_drv"], check=False, capture_output=True)


def wait_node(name: str, sysfs: Path, timeout: float = 5.0) -> str:
    """/dev/NAME once it exists: udev makes it; without udev we make it from sysfs' dev."""
    path = f"/dev/{name}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return path
        time.sleep(0.02)
    try:
        major, minor = (int(x) for x in (sysfs / "dev").read_text().split(":"))
    except (OSError, ValueError) as err:
        raise UblkError(f"{path} did not appear and {sysfs}/dev is unreadable: {err}") from err
    import stat

    kind = stat.S_IFBLK if "block" in str(sysfs) else stat.S_IFCHR
    with contextlib.suppress(FileExistsError):
        os.mknod(path, kind | 0o600, os.makedev(major, minor))
    return path


def char_node(dev_id: int) -> str:
    return wait_node(f"ublkc{dev_id}", Path(f"/sys/class/ublk-char/ublkc{dev_id}"))


def block_node(dev_id: int) -> str:
    return wait_node(f"ublkb{dev_id}", Path(f"/sys/block/ublkb{dev_id}"))
