"""A backstore's configfs attributes: how the daemon chooses where PR runs for a device.

Three cases, decided once per device when it is opened (docs/daemon.md, "Where PR runs"):

- the topology (or dev_config) names the device's nexus: the per-nexus layout; nothing to
  change here (the layout set ``pgr_support=0``);
- the kernel has the tcmu-pr nexus patch (``attrib/nexus_handles`` exists): PR comes to us
  (``pgr_support=0``) and every ring entry names its nexus (``nexus_handles=1``): cluster PR
  for a plain targetcli backstore;
- neither: LIO's own PR (``pgr_support=1``, per node), with a warning that reservations are
  then not shared between gateways.

The configfs root is a parameter so tests run on a directory of plain files.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CONFIGFS_CORE = Path("/sys/kernel/config/target/core")


class PRMode(enum.Enum):
    """Where a device's persistent reservations are served."""

    TOPOLOGY = "topology"  # one device per nexus, named by the topology file or dev_config
    NEXUS = "nexus"  # the nexus from each ring entry (patched kernel): cluster PR
    LIO = "lio"  # LIO's in-kernel PR (pgr_support=1): per node, not shared
    NONE = "none"  # nothing worked: PR commands refused


@dataclass(frozen=True, slots=True)
class BackstoreAttribs:
    """``<root>/user_<hba>/<name>/attrib``."""

    root: Path = CONFIGFS_CORE

    def _path(self, hba: int, name: str, attr: str) -> Path:
        return self.root / f"user_{hba}" / name / "attrib" / attr

    def has(self, hba: int, name: str, attr: str) -> bool:
        return self._path(hba, name, attr).exists()

    def read(self, hba: int, name: str, attr: str) -> str:
        return self._path(hba, name, attr).read_text().strip()

    def write(self, hba: int, name: str, attr: str, value: str) -> None:
        self._path(hba, name, attr).write_text(f"{value}\n")


def choose(attribs: BackstoreAttribs, hba: int, name: str, *, has_nexus: bool) -> PRMode:
    """Decide (and configure) where PR runs for backstore ``user_<hba>/<name>``.

    Configfs errors never fail the device: data is served in any case, and the mode says
    what PR will do (NONE: refused, as for a device without a nexus before).
    """
    key = f"user_{hba}/{name}"
    if has_nexus:
        return PRMode.TOPOLOGY
    try:
        if attribs.has(hba, name, "nexus_handles"):
            attribs.write(hba, name, "pgr_support", "0")
            attribs.write(hba, name, "nexus_handles", "1")
            log.info("%s: nexus handles on: cluster PR for every initiator of this backstore",
                     key)  # fmt: skip
            return PRMode.NEXUS
        if attribs.read(hba, name, "pgr_support") != "1":
            attribs.write(hba, name, "pgr_support", "1")
    except OSError as err:
        log.error("%s: cannot configure PR through configfs (%s): PR commands will be refused",
                  key, err)  # fmt: skip
        return PRMode.NONE
    log.warning(
        "%s: no nexus known (no topology entry, kernel without the tcmu-pr nexus patch): "
        "LIO's own PR serves this backstore (pgr_support=1); reservations are per gateway, "
        "NOT shared with other gateways of the same LU",
        key,
    )
    return PRMode.LIO
