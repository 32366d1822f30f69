"""From a :class:`Spec` to what must exist in LIO: devices, exports, topology rows (pure).

Two shapes for a tcmu-pr LU (docs/layouts.md):

- ``per-nexus`` (stock kernels): a TCMU ring entry names no I_T nexus, so every (initiator,
  target port) pair gets its own TCMU device on the same image, mapped only to that
  initiator through that port: the device *is* the nexus, and the topology file says which.
  N initiators x M ports devices per LU.
- ``nexus`` (patched target_core_user, docs/nexus-abi): the kernel puts a nexus handle in
  every entry, so one device per LU serves everyone — the configuration an administrator
  types in targetcli: one ``user:tcmu_pr`` backstore, a LUN in each TPG, ACLs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tcmu_pr.emulation.device import lu_serial
from tcmu_pr.lio.spec import BACKENDS, CONTROL_KEYS, Port, Spec, nexus_of
from tcmu_pr.lio.topology_file import device_key
from tcmu_pr.netlink.devconfig import DEV_CONFIG_MAX
from tcmu_pr.pr.nexus import Nexus

#: A per-nexus device's name; ``lu`` is its LU's.
PER_NEXUS_NAME = re.compile(r"(?P<lu>[A-Za-z0-9][A-Za-z0-9_-]{0,31})\.p\d+\.i\d+")


@dataclass(frozen=True, slots=True)
class Device:
    """One storage object that must exist."""

    name: str
    kind: str  # user | fileio | block | ramdisk
    config: str  # TCMU dev_config, fileio file or block device path, '' for ramdisk
    serial: str  # VPD unit serial: the same on every device of one LU
    attributes: dict[str, str]  # written through attrib/ once the device exists
    control: dict[str, str]  # TCMU settings given at creation (spec.CONTROL_KEYS)
    nexus_handles: bool = False  # nexus mode: write attrib/nexus_handles=1


@dataclass(frozen=True, slots=True)
class Export:
    """``device`` is mapped as LUN ``spec.lun`` to ``initiator`` through ``port``.

    ``nexus``: the nexus the device stands for (per-nexus mode); None in nexus mode, where
    the kernel names the nexus of each session itself (with its real ISID)."""

    device: str
    port: Port
    initiator: str
    nexus: Nexus | None


@dataclass(frozen=True, slots=True)
class Plan:
    spec: Spec
    mode: str  # nexus | per-nexus (LIO backends: per-nexus, meaning "no nexus handling")
    devices: tuple[Device, ...]
    exports: tuple[Export, ...]


def resolve_mode(spec: Spec, kernel_has_nexus_handles: bool) -> str:
    """The mode ``spec`` gets on a kernel with or without nexus handles."""
    if spec.backend != "tcmu-pr":
        return "per-nexus"
    if spec.mode == "auto":
        return "nexus" if kernel_has_nexus_handles else "per-nexus"
    return spec.mode


def device_name(spec: Spec, port: Port, initiator_index: int, mode: str) -> str:
    """Per-nexus device name ``<lu>.p<port>.i<initiator>`` (1-based); the LU name if shared."""
    if spec.kind != "user" or mode == "nexus":
        return spec.lu
    return f"{spec.lu}.p{port.rtpi}.i{initiator_index}"


def dev_config(spec: Spec, rtpi: int | None) -> str:
    """The TCMU dev_config of one device (tcmu_pr/netlink/devconfig.py grammar for ours).

    No ``nexus=``: it has commas, which the kernel's control string splits at, and colons,
    which rtslib refuses; the topology file names the nexus.  ``rtpi`` is None in nexus
    mode, where LIO's own relative port id of each LUN is the right one.
    """
    handler = BACKENDS[spec.backend][1]
    if handler == "qcow" and not spec.store.is_file:  # tcmu-runner's rbd handler
        conf = f";conf={spec.ceph_conf}" if spec.ceph_conf else ""
        return f"rbd/{spec.store.pool}/{spec.store.image}{conf}"
    if handler == "qcow":
        return f"qcow/{spec.path}"
    # The slash spelling (file//path, rbd/pool/image) is devconfig.py's canonical one: the
    # one targetcli can write too, since rtslib refuses ':' in a user backstore's config.
    config = f"tcmu-pr/{spec.store.slashed}"
    if spec.pr_store and spec.pr_store != spec.store:
        config += f";pr_store={spec.pr_store.slashed}"
    if rtpi is not None:
        config += f";rtpi={rtpi}"
    assert len(config) <= DEV_CONFIG_MAX  # spec.load_spec checked the stores' length
    return config


def plan(spec: Spec, mode: str = "per-nexus") -> Plan:
    """Everything that must exist for ``spec`` in ``mode`` (see :func:`resolve_mode`)."""
    if mode not in ("nexus", "per-nexus") or (mode == "nexus" and spec.backend != "tcmu-pr"):
        raise ValueError(f"mode {mode!r} for backend {spec.backend}")
    serial = lu_serial(spec.identity)
    control = {k: v for k, v in spec.attributes.items() if k in CONTROL_KEYS}
    attributes = {k: v for k, v in spec.attributes.items() if k not in CONTROL_KEYS}
    if spec.kind != "user":
        control, attributes = {}, dict(spec.attributes)
    if spec.backend == "tcmu-pr":
        # PR and ALUA CDBs go to our ring; LIO then enforces no reservation itself.
        attributes = {"pgr_support": "0", "alua_support": "0", **attributes}
    elif spec.backend == "tcmu-runner":
        attributes = {"pgr_support": "0", **attributes}
    devices: dict[str, Device] = {}
    exports: list[Export] = []
    for port, initiators in spec.initiators_of.items():
        for i, initiator in enumerate(initiators, 1):
            assert initiator is not None
            name = device_name(spec, port, i, mode)
            if spec.kind != "user":
                config = spec.path
            else:
                config = dev_config(spec, None if mode == "nexus" else port.rtpi)
            devices.setdefault(name, Device(name, spec.kind, config, serial, attributes,
                                            control, nexus_handles=mode == "nexus"))
            nexus = None if mode == "nexus" else nexus_of(spec, port, initiator)
            exports.append(Export(name, port, initiator, nexus))
    return Plan(spec, mode, tuple(devices.values()), tuple(exports))


def topology_rows(plan_: Plan, hba_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The topology file's rows for ``plan_``; ``hba_of`` maps device name -> ``user_N``.

    Per-nexus: one row per device with its nexus and rtpi.  Nexus mode: one row for the
    LU's device with its identity only (the kernel names nexus and rtpi per command)."""
    spec = plan_.spec
    if spec.backend != "tcmu-pr":  # the file is our daemon's; tcmu-runner has dev_config
        return {}
    common: dict[str, Any] = {
        "lu": spec.lu,
        "store": str(spec.store),
        **({"pr_store": str(spec.pr_store)} if spec.pr_store else {}),
        **({"identity": spec.identity} if spec.identity != str(spec.store) else {}),
    }
    rows: dict[str, dict[str, Any]] = {}
    for ex in plan_.exports:
        row = dict(common)
        if ex.nexus is not None:
            row.update(nexus=str(ex.nexus), rtpi=ex.port.rtpi)
        rows[device_key(hba_of[ex.device], ex.device)] = row
    return rows

