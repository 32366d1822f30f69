"""Where a device's command ring comes from: the kernel's uio device, or a test's simulator.

The daemon only needs four things of a ring: the shared mapping, an fd to wait on, an fd to
kick, and how many bytes one wake-up read takes (a uio fd accepts exactly 4, an eventfd
exactly 8).  :class:`UioRingSource` opens /dev/uio<minor> as ADDED_DEVICE names it; tests
pass any other :class:`RingSource` (see tests/test_daemon_flow.py), which is the seam that
lets the whole daemon run against tcmu_pr.ring.simulator without a kernel.
"""

from __future__ import annotations

import errno
import logging
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tcmu_pr.netlink.devconfig import DeviceInfo
from tcmu_pr.ring import uio
from tcmu_pr.ring.loop import RingError, RingLoop

if TYPE_CHECKING:
    from tcmu_pr.cbt.mapfile import CbtMap
    from tcmu_pr.ring.rbd_backend import RbdRingBackend

log = logging.getLogger(__name__)

UIO_EVENT_SIZE = 4  # uio_read() wants exactly one s32
EVENTFD_EVENT_SIZE = 8


@dataclass(slots=True)
class RingEndpoint:
    """An opened ring: hand ``mm`` and ``kick_fd`` to a ring loop, wait on ``wait_fd``."""

    mm: mmap.mmap
    wait_fd: int
    kick_fd: int
    event_size: int
    close: Callable[[], None]


class RingSource(Protocol):
    def open(self, info: DeviceInfo) -> RingEndpoint:
        """Map the ring of ``info``; raise OSError (or UioError) when it cannot be."""
        ...


@dataclass(frozen=True, slots=True)
class UioRingSource:
    """The real thing: /sys/class/uio/uio<minor>, checked against the device's name."""

    sysfs: Path = uio.SYSFS_UIO
    dev_dir: str = "/dev"

    def open(self, info: DeviceInfo) -> RingEndpoint:
        found = uio.describe(self.sysfs / f"uio{info.minor}")
        # The minor is the kernel's word, but a stale message after a remove/re-add could name
        # a uio that now belongs to another device: check the name before mapping it.
        if found is None or found.name != info.name or found.hba != str(info.hba):
            raise uio.UioError(f"uio{info.minor} is not the ring of {info.uio_name}")
        mapping = uio.open_ring(found, self.dev_dir)
        return RingEndpoint(mapping.mm, mapping.fd, mapping.fd, UIO_EVENT_SIZE, mapping.close)


def make_ring(
    kind: str, mm: mmap.mmap, kick_fd: int, backend: int | RbdRingBackend, size: int,
    block_size: int, *, max_transfer: int = 0, write_through: bool = False,
    cbt: CbtMap | None = None,
) -> RingLoop:
    """The ring loop of ``kind`` ("native", "python", "auto": native when it is built).

    ``backend`` is a file descriptor, or an RBD image's ring backend, which only the native
    loop can drive.  ``max_transfer`` (blocks) and ``write_through`` are what the loop must
    honour of the device's Block Limits and Caching pages (see NativeRing); ``cbt`` the
    image's change-block map, which the loop marks before every write (docs/cbt.md).
    """
    options: dict[str, Any] = {
        "max_transfer": max_transfer, "write_through": write_through, "cbt": cbt,
    }  # fmt: skip
    if kind in ("native", "auto"):
        try:
            from tcmu_pr.ring.native import NativeRing, load

            load()
        except ImportError:
            if kind == "native":
                raise
            log.warning("native ring loop not built: serving rings in Python (slower)")
        else:
            return NativeRing(mm, kick_fd, backend, size, block_size, **options)
    if not isinstance(backend, int):
        raise RingError(-errno.EOPNOTSUPP, "RBD data needs the native ring loop (not built)")
    from tcmu_pr.ring.pyloop import PyRing

    return PyRing(mm, kick_fd, backend, size, block_size, **options)
