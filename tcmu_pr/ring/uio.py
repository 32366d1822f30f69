"""Find and map the uio device of a TCMU device.

target_core_user registers one uio device per TCMU backstore, named
``tcm-user/<hba>/<name>/<dev_config>``; its single map (maps/map0) is the whole ring area:
mailbox, command ring and data area.  The netlink ADDED_DEVICE message carries the uio
minor too; looking the name up in sysfs is what works when only the backstore is known.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from tcmu_pr.ring import layout as L

SYSFS_UIO = Path("/sys/class/uio")
UIO_PREFIX = "tcm-user/"


class UioError(OSError):
    """No such TCMU uio device, or its mapping is not a version-2 TCMU mailbox."""


@dataclass(frozen=True, slots=True)
class UioDevice:
    """One ``/sys/class/uio/uioN`` that belongs to a TCMU backstore."""

    minor: int
    hba: str
    name: str
    config: str
    map_size: int

    @property
    def dev_path(self) -> str:
        return f"/dev/uio{self.minor}"


def parse_name(text: str) -> tuple[str, str, str]:
    """``tcm-user/<hba>/<name>/<cfg>`` -> (hba, name, cfg); cfg may itself contain '/'."""
    if not text.startswith(UIO_PREFIX):
        raise UioError(f"not a TCMU uio device name: {text!r}")
    parts = text[len(UIO_PREFIX) :].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UioError(f"TCMU uio name without hba/name: {text!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def _read(path: Path) -> str:
    return path.read_text().strip()


def describe(uio_dir: Path) -> UioDevice | None:
    """The TCMU device behind one sysfs uio directory, or None if it is not TCMU's."""
    try:
        name = _read(uio_dir / "name")
    except OSError:
        return None
    if not name.startswith(UIO_PREFIX) or not uio_dir.name.startswith("uio"):
        return None
    hba, dev, cfg = parse_name(name)
    try:
        size = int(_read(uio_dir / "maps" / "map0" / "size"), 0)
        minor = int(uio_dir.name[3:])
    except (OSError, ValueError) as exc:
        raise UioError(f"{uio_dir}: unreadable map0 size: {exc}") from exc
    return UioDevice(minor, hba, dev, cfg, size)


def find(name: str, hba: str | None = None, sysfs: Path = SYSFS_UIO) -> UioDevice:
    """The uio device of backstore ``name`` (in ``hba`` if given, e.g. ``user_1``)."""
    found = []
    for entry in sorted(sysfs.iterdir()) if sysfs.is_dir() else []:
        dev = describe(entry)
        if dev and dev.name == name and (hba is None or dev.hba == hba):
            found.append(dev)
    if not found:
        raise UioError(f"no TCMU uio device for {name!r}")
    if len(found) > 1:
        raise UioError(f"{name!r} is in several HBAs ({', '.join(d.hba for d in found)})")
    return found[0]


@dataclass
class RingMapping:
    """An open, mapped, checked uio device: hand ``fd`` and ``mm`` to a ring loop."""

    fd: int
    mm: mmap.mmap
    flags: int  # TCMU_MAILBOX_FLAG_CAP_* the kernel offers

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


def check_mailbox(mm: mmap.mmap) -> int:
    """Version 2 and a command ring inside the mapping; returns the mailbox flags."""
    if len(mm) < L.MAILBOX_SIZE:
        raise UioError("mapping smaller than the mailbox")
    version = L.U16.unpack_from(mm, L.MB_VERSION)[0]
    if version != L.MAILBOX_VERSION:
        raise UioError(f"mailbox version {version}, expected {L.MAILBOX_VERSION}")
    off = L.U32.unpack_from(mm, L.MB_CMDR_OFF)[0]
    size = L.U32.unpack_from(mm, L.MB_CMDR_SIZE)[0]
    if off < L.MAILBOX_SIZE or not size or off + size > len(mm):
        raise UioError(f"command ring {off}+{size} outside the {len(mm)}-byte mapping")
    return L.U16.unpack_from(mm, L.MB_FLAGS)[0]


def open_ring(dev: UioDevice, dev_dir: str = "/dev") -> RingMapping:
    """Open /dev/uioN read-write and map its whole ring area shared.

    Non-blocking: the native serve loop takes an event that arrived during a batch with one
    read() instead of poll() + read() (a busy ring never sleeps), and only polls on EAGAIN.
    """
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(os.path.join(dev_dir, f"uio{dev.minor}"), flags)
    try:
        mm = mmap.mmap(fd, dev.map_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError:
        os.close(fd)
        raise
    try:
        flags = check_mailbox(mm)
    except UioError:
        mm.close()
        os.close(fd)
        raise
    return RingMapping(fd, mm, flags)
