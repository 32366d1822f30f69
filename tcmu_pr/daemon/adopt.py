"""TCMU devices that exist before the daemon starts: find them so the daemon can serve them.

The kernel announces a device once, by multicast, when its backstore is enabled.  A device
enabled while no daemon listened (never started yet, restarting, crashed) is never announced
again, so at start the daemon looks for them itself, as tcmu-runner does: every
``/sys/class/uio/uio*`` named ``tcm-user/<hba>/<name>/<dev_config>`` with our handler, its
device id (the ``DEVICE_ID`` every later netlink message carries) from the backstore's
configfs ``statistics/scsi_dev/indx``.

``enable`` tells whether the kernel finished configuring the device.  It reads 0 while the
kernel still waits for an ADDED_DEVICE_DONE, which happens when the device was enabled after
an earlier daemon had turned command replies on and before we joined the group: the
ADDED_DEVICE went to no one, and only our reply lets the configfs write return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tcmu_pr.netlink.devconfig import HANDLER, HANDLER_ALIAS
from tcmu_pr.ring import uio

CONFIGFS_CORE = Path("/sys/kernel/config/target/core")


@dataclass(frozen=True, slots=True)
class Existing:
    """One TCMU device of our handler, as ADDED_DEVICE would have described it."""

    device_id: int
    minor: int
    uio_name: str  # tcm-user/<hba>/<name>/<dev_config>, what TCMU_ATTR_DEVICE carries
    configured: bool  # False: the kernel is still waiting for ADDED_DEVICE_DONE


def ours(dev_config: str) -> bool:
    """True when ``dev_config`` names this handler (either spelling)."""
    return dev_config.split("/", 1)[0] in (HANDLER, HANDLER_ALIAS)


def scan(
    sysfs_uio: Path = uio.SYSFS_UIO, configfs_core: Path = CONFIGFS_CORE
) -> tuple[list[Existing], list[str]]:
    """Our existing devices (by uio minor), and one line per device that could not be read.

    Devices of other handlers (tcmu-runner's) are skipped silently.
    """
    found: list[Existing] = []
    problems: list[str] = []
    entries = sorted(sysfs_uio.iterdir(), key=_minor_key) if sysfs_uio.is_dir() else []
    for entry in entries:
        try:
            dev = uio.describe(entry)
        except uio.UioError as err:
            problems.append(str(err))
            continue
        if dev is None or not ours(dev.config):
            continue
        backstore = configfs_core / f"user_{dev.hba}" / dev.name
        try:
            device_id = int(_read(backstore / "statistics" / "scsi_dev" / "indx"))
            configured = _read(backstore / "enable") == "1"
        except (OSError, ValueError) as err:
            problems.append(f"{entry.name} ({dev.hba}/{dev.name}): no usable configfs entry: {err}")
            continue
        name = f"{uio.UIO_PREFIX}{dev.hba}/{dev.name}" + (f"/{dev.config}" if dev.config else "")
        found.append(Existing(device_id, dev.minor, name, configured))
    return found, problems


def _read(path: Path) -> str:
    return path.read_text().strip()


def _minor_key(entry: Path) -> tuple[int, str]:
    digits = entry.name[3:]
    return (int(digits) if digits.isdigit() else -1, entry.name)
