"""Which I_T nexus a TCMU device serves, and which LU it belongs to.

Ring entries carry no initiator or target port, so with a stock kernel (pgr_support=0) each
I_T nexus of a LU is exported through its own TCMU device, and the daemon must be told whose
commands arrive on which device.  Two sources, both written by the layout tool:

1. ``nexus=`` / ``rtpi=`` options in the device's dev_config (the kernel hands them over
   with ADDED_DEVICE; limited to 255 characters in all);
2. the topology file (default /etc/tcmu-pr/topology.json), keyed by the configfs path of
   the backstore below ``core/`` (both defined in tcmu_pr/lio/topology_file.py)::

       {"devices": {"user_1/lu0_gw1": {"lu": "lu0", "store": "file:/srv/lu0.img",
                                       "nexus": "<init>,i,0x<isid>,<tport>,t,0x<tpgt>",
                                       "rtpi": 1}}}

   Optional fields: ``pr_store`` (when not the store), ``identity`` (the string the VPD
   serial/NAA are derived from; default: the store spec, as tcmu_pr.lio.plan does).  Fields
   this reader does not know are ignored, so the layout tool may add some.

If both name a nexus (or an rtpi) they must agree, and the file's ``store``/``pr_store``
must be the device's: a disagreement means a stale or wrong file, and serving PR with
someone else's identity is worse than refusing the device.  Not derived from configfs: the ISID of
an iSCSI nexus only exists once the initiator logged in, so configfs alone cannot name it.

The file is re-read on every lookup (one small read per ADDED_DEVICE), so the layout tool
can write it just before it creates the backstore, without signalling the daemon.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.lio.topology_file import device_key as device_key  # the key, defined once
from tcmu_pr.pr.nexus import Nexus, NexusError

_STRINGS = ("lu", "store", "pr_store", "identity", "nexus")


class TopologyError(ValueError):
    """The topology file (or its entry for a device) cannot be trusted: refuse the device."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one device sits: its LU and, when known, the I_T nexus it serves."""

    lu: str  # the LU's name, for the log
    identity: str  # what VPD 0x80/0x83 derive from: the same for every device of the LU
    nexus: Nexus | None  # None: PR commands are refused (docs/daemon.md)
    rtpi: int | None
    source: str  # where the nexus came from, for the log


@dataclass(frozen=True, slots=True)
class TopologyEntry:
    lu: str | None = None
    store: StoreSpec | None = None
    pr_store: StoreSpec | None = None
    identity: str | None = None
    nexus: Nexus | None = None
    rtpi: int | None = None


def parse(text: str, *, source: str = "<topology>") -> dict[str, TopologyEntry]:
    """Parse a topology document; TopologyError naming the entry and field at fault."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise TopologyError(f"{source}: not JSON: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), dict):
        raise TopologyError(f'{source}: expected {{"devices": {{...}}}}')
    return {
        key: _entry(f"{source}: devices[{key!r}]", body) for key, body in doc["devices"].items()
    }


def _entry(where: str, body: Any) -> TopologyEntry:
    if not isinstance(body, dict):
        raise TopologyError(f"{where} must be an object")
    for name in _STRINGS:
        value = body.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise TopologyError(f"{where}.{name} must be a non-empty string")
    nexus = None
    if body.get("nexus") is not None:
        try:
            nexus = Nexus.parse(body["nexus"])
        except NexusError as err:
            raise TopologyError(f"{where}.nexus: {err}") from err
    rtpi = body.get("rtpi")
    if rtpi is not None and (type(rtpi) is not int or not 1 <= rtpi <= 0xFFFF):
        raise TopologyError(f"{where}.rtpi must be an integer 1..65535")
    stores = {}
    for name in ("store", "pr_store"):
        try:
            stores[name] = StoreSpec.parse(body[name]) if body.get(name) else None
        except StoreSpecError as err:
            raise TopologyError(f"{where}.{name}: {err}") from err
    return TopologyEntry(
        body.get("lu"), stores["store"], stores["pr_store"], body.get("identity"), nexus, rtpi
    )


def load(path: Path) -> dict[str, TopologyEntry]:
    """The file's entries; an absent file is an empty topology (dev_config may suffice)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise TopologyError(f"{path}: cannot read: {err}") from err
    return parse(text, source=str(path))


def place(
    key: str,
    store: StoreSpec,
    pr_store: StoreSpec,
    config_nexus: Nexus | None,
    config_rtpi: int | None,
    entries: dict[str, TopologyEntry],
) -> Placement:
    """Combine the dev_config options with the file's entry for ``key`` (pure).

    The VPD identity is the file's ``identity``, else the store spec: every device of one
    image names the same store, so they agree without any configuration.
    """
    entry = entries.get(key, TopologyEntry())
    if entry.store is not None and entry.store != store:
        raise TopologyError(
            f"topology entry {key!r} is for store {entry.store}, but the device serves {store}"
        )
    if entry.pr_store is not None and entry.pr_store != pr_store:
        raise TopologyError(
            f"topology entry {key!r} has PR store {entry.pr_store}, the device {pr_store}"
        )
    if config_nexus is not None and entry.nexus is not None and config_nexus != entry.nexus:
        raise TopologyError(
            f"device {key!r}: dev_config nexus {config_nexus} disagrees with the "
            f"topology file's {entry.nexus}"
        )
    if config_rtpi is not None and entry.rtpi is not None and config_rtpi != entry.rtpi:
        raise TopologyError(
            f"device {key!r}: dev_config rtpi {config_rtpi} disagrees with the "
            f"topology file's {entry.rtpi}"
        )
    nexus = config_nexus or entry.nexus
    source = "dev_config" if config_nexus else ("topology file" if entry.nexus else "nowhere")
    rtpi = config_rtpi if config_rtpi is not None else entry.rtpi
    return Placement(entry.lu or str(store), entry.identity or str(store), nexus, rtpi, source)
