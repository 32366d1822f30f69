"""Lay out one LU in LIO: per-nexus TCMU devices, TPG LUNs, ACLs, and the daemon's topology.

A TCMU ring entry carries no I_T nexus, so our daemon cannot tell who sent a command.  The
way round it is to give every (initiator, target port) pair its *own* TCMU device on the same
image and to map that device only to that initiator through that port: the device then
*is* the nexus.  Laying that out by hand is error-prone (N initiators x M ports devices,
LUNs and ACL mappings), so this module does it from a small JSON spec, idempotently:
re-running ``apply`` converges to the spec and never duplicates anything.

The module has two halves.  :func:`load_spec` and :func:`plan` are pure (spec -> what must
exist); :class:`LIOLayout` makes configfs match a plan through rtslib-fb, imported lazily so
that the pure half runs anywhere.  The spec format is in docs/layouts.md.

Known limit: a device stands for one initiator *name* behind one TPG, so two sessions of one
initiator (two ISIDs) through one TPG share a device and collapse into one nexus.  That is why
every portal gets its own TPG, and why iSCSI nexuses are written with an empty ISID.
"""

from __future__ import annotations

import argparse
import glob
import itertools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcmu_pr.cli import CommandFailed, UsageError, command
from tcmu_pr.emulation.device import lu_serial
from tcmu_pr.netlink.devconfig import DEV_CONFIG_MAX
from tcmu_pr.nexus import Nexus, NexusError
from tcmu_pr.store_spec import StoreSpec, StoreSpecError

DEFAULT_TOPOLOGY = "/etc/tcmu-pr/topology.json"

#: backend name -> (kind, TCMU handler).  ``user`` kinds get one device per nexus; the LIO
#: kinds get one shared device and LIO's own PR emulation (the reference to compare with).
BACKENDS: dict[str, tuple[str, str | None]] = {
    "tcmu-pr": ("user", "tcmu-pr"),
    # tcmu-runner's qcow handler also serves raw images; an RBD store gets its rbd handler.
    "tcmu-runner": ("user", "qcow"),
    "fileio": ("fileio", None),
    # LIO iblock on a block device (e.g. a krbd-mapped /dev/rbdN: the in-kernel ceiling).
    "block": ("block", None),
    "ramdisk": ("ramdisk", None),
}
FABRICS = ("loopback", "iscsi")

#: configfs directory prefix of each backstore kind (``core/<prefix>_<index>/<name>``).
_HBA_DIR = {"user": "user", "fileio": "fileio", "block": "iblock", "ramdisk": "rd_mcp"}
_LU_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_DEVICE_NAME = re.compile(r"(?P<lu>[A-Za-z0-9][A-Za-z0-9_-]{0,31})\.p\d+\.i\d+")


class LayoutError(ValueError):
    """A spec that cannot be laid out; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Port:
    """One target port: a target WWN and one of its TPGs (one TPG per portal)."""

    target: str
    tag: int
    rtpi: int
    portal: tuple[str, int] | None = None  # iSCSI only
    loop_initiator: str | None = None  # tcm_loop only: the nexus WWN of the target's host


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated layout spec (see docs/layouts.md)."""

    lu: str
    store: StoreSpec
    backend: str
    fabric: str
    ports: tuple[Port, ...]
    initiators: tuple[str, ...]  # iSCSI ACL names; empty for loopback
    lun: int = 0
    size: int | None = None
    pr_store: StoreSpec | None = None
    identity: str = ""
    topology: str = DEFAULT_TOPOLOGY
    attributes: dict[str, str] = field(default_factory=dict)
    #: tcmu-runner on an RBD store: the ceph.conf its rbd handler reads (its conf= option).
    ceph_conf: str | None = None

    @property
    def kind(self) -> str:
        return BACKENDS[self.backend][0]

    @property
    def path(self) -> str:
        """The image path for file stores ('' for rbd)."""
        return self.store.path


@dataclass(frozen=True, slots=True)
class Device:
    """One storage object that must exist."""

    name: str
    kind: str  # user | fileio | block | ramdisk
    config: str  # TCMU dev_config, fileio file or block device path, '' for ramdisk
    serial: str  # VPD unit serial: the same on every device of one LU
    attributes: dict[str, str]


@dataclass(frozen=True, slots=True)
class Export:
    """One nexus: ``device`` is mapped as LUN ``lun`` to ``initiator`` through ``port``."""

    device: str
    port: Port
    initiator: str
    nexus: Nexus


@dataclass(frozen=True, slots=True)
class Plan:
    spec: Spec
    devices: tuple[Device, ...]
    exports: tuple[Export, ...]


# -- the pure half ---------------------------------------------------------------------------


def load_spec(obj: Any, *, base: str | None = None) -> Spec:
    """Validate a decoded JSON spec; :class:`LayoutError` names the first bad field.

    ``base`` resolves relative file stores (the CLI passes its working directory)."""
    if not isinstance(obj, dict):
        raise LayoutError("spec must be a JSON object")
    known = {"lu", "store", "backend", "fabric", "targets", "initiators", "lun", "size",
             "pr_store", "identity", "topology", "attributes", "ceph_conf"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise LayoutError(f"unknown spec key(s): {', '.join(unknown)}")
    lu = _need(obj, "lu", str)
    if not _LU_NAME.fullmatch(lu):
        raise LayoutError(f"lu {lu!r}: 1-32 of [A-Za-z0-9_-], not starting with - or _")
    backend = obj.get("backend", "tcmu-pr")
    if backend not in BACKENDS:
        raise LayoutError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
    fabric = obj.get("fabric", "loopback")
    if fabric not in FABRICS:
        raise LayoutError(f"fabric {fabric!r}: one of {', '.join(FABRICS)}")
    try:
        store = StoreSpec.parse(_need(obj, "store", str), base=base)
        pr_text = obj.get("pr_store")
        pr_store = None if pr_text is None else StoreSpec.parse(pr_text, base=base)
    except StoreSpecError as err:
        raise LayoutError(str(err)) from None
    if backend not in ("tcmu-pr", "tcmu-runner") and not store.is_file:
        raise LayoutError(f"backend {backend} needs a file: store")
    ceph_conf = obj.get("ceph_conf")
    if ceph_conf is not None and (not isinstance(ceph_conf, str)
                                  or not re.fullmatch(r"/[^;,\s]*", ceph_conf)):  # fmt: skip
        raise LayoutError("ceph_conf must be an absolute path without ';', ',' or spaces")
    if backend == "tcmu-pr" and len(store.slashed) > DEV_CONFIG_MAX - len("tcmu-pr/;rtpi=65535"):
        raise LayoutError("store spec too long for a TCMU dev_config")
    size = obj.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise LayoutError("size must be a positive number of bytes")
    if backend == "ramdisk" and size is None:
        raise LayoutError("backend ramdisk needs a size")
    lun = obj.get("lun", 0)
    if not isinstance(lun, int) or isinstance(lun, bool) or not 0 <= lun <= 255:
        raise LayoutError("lun must be 0..255")
    attributes = obj.get("attributes", {})
    if not isinstance(attributes, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-z_]+", k) for k in attributes
    ):
        raise LayoutError("attributes must map attribute names to values")
    ports = _load_ports(obj, fabric)
    initiators: tuple[str, ...] = ()
    if fabric == "iscsi":
        raw = obj.get("initiators")
        if not isinstance(raw, list) or not raw or not all(isinstance(i, str) for i in raw):
            raise LayoutError("iscsi needs 'initiators': a non-empty list of IQNs")
        if len(set(raw)) != len(raw):
            raise LayoutError("initiators must be distinct")
        initiators = tuple(raw)
    elif "initiators" in obj:
        raise LayoutError("loopback takes one 'initiator' per target, not 'initiators'")
    spec = Spec(
        lu=lu, store=store, backend=backend, fabric=fabric, ports=ports,
        initiators=initiators, lun=lun, size=size, pr_store=pr_store, ceph_conf=ceph_conf,
        identity=str(obj.get("identity") or str(store)), topology=str(obj.get("topology",
                                                                         DEFAULT_TOPOLOGY)),
        attributes={k: str(v) for k, v in attributes.items()},
    )
    plan(spec)  # every nexus must be valid now, not halfway through apply
    return spec


def _need(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or value == "":
        raise LayoutError(f"spec needs {key!r} ({kind.__name__})")
    return value


def _load_ports(obj: dict[str, Any], fabric: str) -> tuple[Port, ...]:
    targets = obj.get("targets")
    if not isinstance(targets, list) or not targets:
        raise LayoutError("spec needs 'targets': a non-empty list")
    ports: list[Port] = []
    seen_wwn: set[str] = set()
    for n, t in enumerate(targets, 1):
        where = f"targets[{n - 1}]"
        if not isinstance(t, dict) or not isinstance(t.get("wwn"), str):
            raise LayoutError(f"{where} needs a 'wwn'")
        wwn = t["wwn"]
        if wwn in seen_wwn:
            raise LayoutError(f"{where}: target {wwn} listed twice")
        seen_wwn.add(wwn)
        if fabric == "loopback":
            if not wwn.startswith("naa.") or not isinstance(t.get("initiator"), str):
                raise LayoutError(f"{where}: loopback needs an naa. 'wwn' and an 'initiator'")
            ports.append(Port(wwn, 1, len(ports) + 1, loop_initiator=t["initiator"]))
            continue
        portals = t.get("portals")
        if not isinstance(portals, list) or not portals:
            raise LayoutError(f"{where}: iscsi needs 'portals': [\"IP:PORT\", ...]")
        for tag, text in enumerate(portals, 1):  # one TPG per portal, see module docstring
            ports.append(Port(wwn, tag, len(ports) + 1, portal=_portal(where, text)))
    return tuple(ports)


def _portal(where: str, text: Any) -> tuple[str, int]:
    if not isinstance(text, str):
        raise LayoutError(f"{where}: portal must be 'IP:PORT'")
    ip, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not ip:
        raise LayoutError(f"{where}: portal {text!r} is not IP:PORT")
    return ip.strip("[]"), int(port)


def device_name(spec: Spec, port: Port, initiator_index: int) -> str:
    """Per-nexus device name ``<lu>.p<port>.i<initiator>`` (1-based); the LU name if shared."""
    if spec.kind != "user":
        return spec.lu
    return f"{spec.lu}.p{port.rtpi}.i{initiator_index}"


def nexus_of(spec: Spec, port: Port, initiator: str) -> Nexus:
    """The nexus string LIO would write for this pair, in the form the blob stores.

    tcm_loop has no ISID: ``0``.  iSCSI: empty, because one device per initiator name cannot
    tell two ISIDs apart (see the module docstring).
    """
    isid = "0" if spec.fabric == "loopback" else ""
    try:
        return Nexus(initiator, isid, port.target, f"{port.tag:x}")
    except NexusError as err:
        raise LayoutError(f"cannot form a nexus for {initiator} via {port.target}: {err}") from None


def dev_config(spec: Spec, rtpi: int, nexus: Nexus) -> str:
    """The TCMU dev_config of one device (tcmu_pr/netlink/devconfig.py grammar for ours).

    The nexus goes in only when it fits the kernel's 255 characters; the topology file always
    carries it, so the daemon never depends on it being there.
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
    config += f";rtpi={rtpi}"
    with_nexus = f"{config};nexus={nexus}"
    return with_nexus if len(with_nexus) <= DEV_CONFIG_MAX else config


def plan(spec: Spec) -> Plan:
    """Everything that must exist for ``spec``: devices, and one export per nexus."""
    serial = lu_serial(spec.identity)
    attributes = dict(spec.attributes)
    if spec.backend == "tcmu-pr":
        # PR and ALUA CDBs go to our ring; LIO then enforces no reservation itself.
        attributes = {"pgr_support": "0", "alua_support": "0", **attributes}
    elif spec.backend == "tcmu-runner":
        attributes = {"pgr_support": "0", **attributes}
    devices: dict[str, Device] = {}
    exports: list[Export] = []
    for port in spec.ports:
        initiators = (port.loop_initiator,) if port.loop_initiator else spec.initiators
        for i, initiator in enumerate(initiators, 1):
            assert initiator is not None
            nexus = nexus_of(spec, port, initiator)
            name = device_name(spec, port, i)
            config = dev_config(spec, port.rtpi, nexus) if spec.kind == "user" else spec.path
            devices.setdefault(name, Device(name, spec.kind, config, serial, attributes))
            exports.append(Export(name, port, initiator, nexus))
    return Plan(spec, tuple(devices.values()), tuple(exports))


def topology_entries(plan_: Plan, hba_of: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Topology rows for the per-nexus devices; ``hba_of`` maps device name -> ``user_N``."""
    rows: dict[str, dict[str, Any]] = {}
    if plan_.spec.backend != "tcmu-pr":  # the file is our daemon's; tcmu-runner has dev_config
        return rows
    for ex in plan_.exports:
        rows[f"{hba_of[ex.device]}/{ex.device}"] = {
            "lu": plan_.spec.lu,
            "store": str(plan_.spec.store),
            **({"pr_store": str(plan_.spec.pr_store)} if plan_.spec.pr_store else {}),
            **({"identity": plan_.spec.identity} if plan_.spec.identity != str(plan_.spec.store)
               else {}),
            "nexus": str(ex.nexus),
            "rtpi": ex.port.rtpi,
        }
    return rows


def merge_topology(existing: dict[str, Any], lu: str,
                   rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``existing`` with every row of ``lu`` replaced by ``rows`` (other LUs untouched)."""
    devices = existing.get("devices", {}) if isinstance(existing, dict) else {}
    kept = {k: v for k, v in devices.items() if not (isinstance(v, dict) and v.get("lu") == lu)}
    return {**(existing if isinstance(existing, dict) else {}), "devices": {**kept, **rows}}


# -- the configfs half (rtslib-fb) -----------------------------------------------------------


class LIOLayout:
    """Makes LIO's configfs match a :class:`Plan`, one rtslib object per configfs object."""

    def __init__(self) -> None:
        try:
            import rtslib_fb
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise CommandFailed("rtslib-fb is not installed (python3-rtslib-fb)") from err
        self.rts = rtslib_fb
        self.root = rtslib_fb.RTSRoot()  # loads target_core_mod and mounts configfs if needed

    # storage objects

    def _find_so(self, name: str, kind: str) -> Any:
        for so in self.root.storage_objects:
            if so.name == name and so.plugin == kind:
                return so
        return None

    def _so_matches(self, so: Any, dev: Device, size: int) -> bool:
        if not so.is_configured() or so.size != size or so.wwn != dev.serial:
            return False
        if dev.kind == "user":
            return _read(f"{so.path}/attrib/dev_config") == dev.config
        if dev.kind in ("fileio", "block"):
            return bool(so.udev_path == dev.config)
        return True

    def _create_so(self, dev: Device, size: int, index: int) -> Any:
        rts = self.rts
        if dev.kind == "fileio":
            return rts.FileIOStorageObject(dev.name, dev=dev.config, size=size, wwn=dev.serial,
                                           write_back=False, index=index)
        if dev.kind == "block":  # its size is the device's
            return rts.BlockStorageObject(dev.name, dev=dev.config, wwn=dev.serial, index=index)
        if dev.kind == "ramdisk":
            return rts.RDMCPStorageObject(dev.name, size=size, wwn=dev.serial, index=index)
        try:
            return _create_user_so(rts, dev, size, index)
        except OSError as err:  # the daemon answered ADDED_DEVICE with this errno
            raise CommandFailed(
                f"{dev.name}: the kernel refused the TCMU device ({err.strerror}); is the "
                f"daemon for {dev.config.partition('/')[0]!r} running?") from err

    # fabric objects

    def _tpg(self, port: Port, fabric: str) -> Any:
        rts = self.rts
        target = rts.Target(rts.FabricModule(fabric), port.target, mode="any")
        tpg = rts.TPG(target, port.tag, mode="any")
        if fabric == "loopback":
            # rtslib gives a new loopback TPG a random nexus; ours must be the spec's.
            if tpg.nexus != port.loop_initiator:
                if list(tpg.luns):
                    raise CommandFailed(f"{port.target}: tcm_loop nexus is {tpg.nexus}, "
                                        f"spec says {port.loop_initiator}; destroy it first")
                if tpg.nexus:
                    _write(f"{tpg.path}/nexus", "NULL")  # tcm_loop's way to drop a nexus
                tpg.nexus = port.loop_initiator
        else:
            for name, value in (("generate_node_acls", "0"), ("authentication", "0"),
                                ("demo_mode_write_protect", "0")):
                if tpg.get_attribute(name) != value:
                    tpg.set_attribute(name, value)
            assert port.portal is not None
            rts.NetworkPortal(tpg, port.portal[0], port.portal[1], mode="any")
            tpg.enable = True
        return tpg

    def _tpg_lun(self, tpg: Any, so: Any, preferred: int) -> Any:
        """The TPG LUN backed by ``so`` (reused, or made at ``preferred`` or the next free)."""
        used = {}
        for lun in tpg.luns:
            used[lun.lun] = lun
            if lun.storage_object.path == so.path:
                return lun
        index = preferred
        while index in used:
            index += 1
        return self.rts.LUN(tpg, index, storage_object=so)

    def _map(self, tpg: Any, initiator: str, mapped: int, lun: Any) -> None:
        acl = self.rts.NodeACL(tpg, initiator, mode="any")
        for mlun in acl.mapped_luns:
            if mlun.mapped_lun == mapped:
                if mlun.tpg_lun.path == lun.path:
                    return
                mlun.delete()
        self.rts.MappedLUN(acl, mapped, lun)

    # public

    def apply(self, plan_: Plan, size: int,
              placed: Callable[[dict[str, str]], None] | None = None) -> dict[str, str]:
        """Converge configfs to ``plan_``; returns device name -> HBA dir (``user_3``).

        ``placed`` is called with that mapping *before* any device is created: the daemon
        looks a device up in the topology file when the kernel announces it, so the file
        must already name the device's ``user_<N>`` directory, which we therefore choose.
        """
        spec = plan_.spec
        if spec.kind == "user" and not os.path.exists("/sys/module/target_core_user"):
            subprocess.run(["modprobe", "target_core_user"], check=False)
        # LIO writes its PR (APTPL) file under <dbroot>/pr on every PR OUT and fails the
        # command if it cannot; rtslib moves dbroot to /etc/rtslib-fb-target.
        os.makedirs(f"{self.root.dbroot}/pr", exist_ok=True)
        wanted = {d.name for d in plan_.devices}
        for so in list(self.root.storage_objects):  # per-nexus devices no longer in the spec
            m = _DEVICE_NAME.fullmatch(so.name)
            if so.plugin == "user" and m and m["lu"] == spec.lu and so.name not in wanted:
                so.delete()
        kept: dict[str, Any] = {}
        for dev in plan_.devices:
            so = self._find_so(dev.name, dev.kind)
            if so is not None and not self._so_matches(so, dev, size):
                so.delete()  # also removes its LUNs and mapped LUNs
                so = None
            if so is not None:
                kept[dev.name] = so
        hba_of = {name: so.path.split("/")[-2] for name, so in kept.items()}
        free = _free_hba_indexes(self.root.path)
        for dev in plan_.devices:
            if dev.name not in kept:
                hba_of[dev.name] = f"{_HBA_DIR[dev.kind]}_{next(free)}"
        if placed is not None:
            placed(hba_of)
        sos = {}
        for dev in plan_.devices:
            so = kept.get(dev.name)
            if so is None:
                so = self._create_so(dev, size, int(hba_of[dev.name].rpartition("_")[2]))
            for name, value in dev.attributes.items():
                if so.get_attribute(name) != value:
                    so.set_attribute(name, value)
            sos[dev.name] = so
        for ex in plan_.exports:
            tpg = self._tpg(ex.port, spec.fabric)
            lun = self._tpg_lun(tpg, sos[ex.device], spec.lun)
            if spec.fabric == "iscsi":
                self._map(tpg, ex.initiator, spec.lun, lun)
        return hba_of

    def destroy(self, plan_: Plan) -> list[str]:
        """Remove the LU's devices, then ACLs/TPGs/targets the spec named that became empty."""
        removed = []
        for dev in plan_.devices:
            so = self._find_so(dev.name, dev.kind)
            if so is not None:
                removed.append(so.path)
                so.delete()
        for port in plan_.spec.ports:
            target = self._find_target(port.target)
            if target is None:
                continue
            for tpg in list(target.tpgs):
                if tpg.tag != port.tag:
                    continue
                for acl in list(tpg.node_acls):
                    if acl.node_wwn in plan_.spec.initiators and not list(acl.mapped_luns):
                        acl.delete()
                if not list(tpg.luns) and not list(tpg.node_acls):
                    tpg.delete()
            if not list(target.tpgs):
                target.delete()
        return removed

    def _find_target(self, wwn: str) -> Any:
        for target in self.root.targets:
            if target.wwn == wwn:
                return target
        return None

    def show(self) -> dict[str, Any]:
        """The live LIO objects a person checks a layout against, as plain data."""
        storage = []
        for so in self.root.storage_objects:
            row: dict[str, Any] = {"path": so.path.split("/core/")[-1], "plugin": so.plugin,
                                   "status": so.status, "serial": _wwn(so)}
            if so.plugin == "user":
                row["config"] = _read(f"{so.path}/attrib/dev_config")
                for a in ("pgr_support", "alua_support"):
                    row[a] = so.get_attribute(a)
            elif so.plugin == "fileio":
                row["file"] = so.udev_path
            elif so.plugin == "block":
                row["device"] = so.udev_path
            storage.append(row)
        targets = []
        for target in self.root.targets:
            tpgs = []
            for tpg in target.tpgs:
                t: dict[str, Any] = {
                    "tag": tpg.tag,
                    "luns": {str(lun.lun): lun.storage_object.path.split("/core/")[-1]
                             for lun in tpg.luns},
                }
                if tpg.has_feature("nexus"):
                    t["nexus"] = tpg.nexus
                if tpg.has_feature("acls"):
                    t["acls"] = {acl.node_wwn: {str(m.mapped_lun): m.tpg_lun.lun
                                                for m in acl.mapped_luns}
                                 for acl in tpg.node_acls}
                if tpg.has_feature("nps"):
                    t["portals"] = [f"{p.ip_address}:{p.port}" for p in tpg.network_portals]
                tpgs.append(t)
            targets.append({"fabric": target.fabric_module.name, "wwn": target.wwn,
                            "tpgs": tpgs})
        return {"storage": storage, "targets": targets}


def _create_user_so(rts: Any, dev: Device, size: int, index: int) -> Any:
    """A TCMU storage object whose dev_config may hold ``:`` and ``,``.

    rtslib's own constructor refuses ``:`` and writes the config through ``control``, which
    the kernel splits at commas (our nexus has commas); ``attrib/dev_config`` takes it whole.
    Attributes are written before ``enable``: from then on the daemon may be serving it.
    """

    class _UserSO(rts.UserBackedStorageObject):  # type: ignore[misc,name-defined]
        def _configure(self, config: str, size: int, wwn: str, hw_max_sectors: Any,
                       control: Any) -> None:
            self._check_self()
            self._control(f"dev_size={size}")
            _write(f"{self.path}/attrib/dev_config", config)
            for name, value in dev.attributes.items():
                _write(f"{self.path}/attrib/{name}", value)
            self._enable()
            rts.tcm.StorageObject._configure(self, wwn)

    # rtslib looks its backstore parameters up by class: the subclass shares the parent's.
    rts.tcm.bs_params.setdefault(_UserSO, rts.tcm.bs_params[rts.UserBackedStorageObject])
    _UserSO(dev.name, config=dev.config, size=size, wwn=dev.serial, index=index)
    # Look it up again as the plain class, so later code sees what rtslib would.
    return rts.UserBackedStorageObject(dev.name, index=index)


def _free_hba_indexes(configfs: str) -> Iterator[int]:
    """HBA indexes no backstore directory uses (rtslib numbers them across all plugins)."""
    used = set()
    for path in glob.glob(f"{configfs}/core/*_*"):
        tail = path.rpartition("_")[2]
        if tail.isdigit():
            used.add(int(tail))
    return (i for i in itertools.count() if i not in used)


def _wwn(so: Any) -> str | None:
    try:
        return str(so.wwn)
    except Exception:  # an unconfigured object has none
        return None


def _read(path: str) -> str:
    return Path(path).read_text().strip()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def store_size(spec: Spec) -> int:
    """The exported size: the spec's, else the image file's or block device's (an empty one
    is an error).  A block backstore always exports the whole device: a 'size' must match."""
    if spec.size is not None and spec.backend != "block":
        return spec.size
    if not spec.path:
        raise LayoutError("an rbd store needs 'size' in the spec")
    try:
        with open(spec.path, "rb") as f:  # seek: st_size is 0 for a block device
            size = f.seek(0, os.SEEK_END)
    except OSError as err:
        raise LayoutError(f"{spec.path}: {err.strerror}") from None
    if size < 4096:
        raise LayoutError(f"{spec.path}: image is {size} bytes; give 'size' or grow it")
    if spec.backend == "block" and spec.size not in (None, size):
        raise LayoutError(f"{spec.path}: the device has {size} bytes, the spec says {spec.size}")
    return size


def read_topology(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        return {"devices": {}}
    except (OSError, ValueError) as err:
        raise CommandFailed(f"{path}: unreadable topology: {err}") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("devices", {}), dict):
        raise CommandFailed(f"{path}: topology is not {{\"devices\": {{...}}}}")
    return obj


def write_topology(path: str, obj: dict[str, Any]) -> None:
    """Atomic replace: a daemon reading it never sees half a file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".topology.", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# -- tcmu-pr layout ... ----------------------------------------------------------------------


def _spec_from_file(name: str) -> Spec:
    try:
        with open(name) as f:
            obj = json.load(f)
    except OSError as err:
        raise UsageError(f"cannot open {name}: {err.strerror}") from err
    except ValueError as err:
        raise UsageError(f"{name}: not JSON: {err}") from err
    try:
        return load_spec(obj, base=os.getcwd())
    except LayoutError as err:
        raise UsageError(f"{name}: {err}") from err


def _configure_spec(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", metavar="SPEC.json", help="the layout spec (docs/layouts.md)")


@command("layout", "apply", help="create or converge a LU's LIO layout", configure=_configure_spec)
def _layout_apply(args: argparse.Namespace) -> int:
    spec = _spec_from_file(args.spec)
    try:
        size = store_size(spec)
    except LayoutError as err:
        raise UsageError(str(err)) from err
    the_plan = plan(spec)

    def placed(hba_of: dict[str, str]) -> None:
        if spec.backend == "tcmu-pr":
            rows = topology_entries(the_plan, hba_of)
            write_topology(spec.topology, merge_topology(read_topology(spec.topology), spec.lu,
                                                         rows))

    hba_of = LIOLayout().apply(the_plan, size, placed)
    for ex in the_plan.exports:
        where = f"{hba_of[ex.device]}/{ex.device}"
        print(f"{where} rtpi={ex.port.rtpi} nexus={ex.nexus}")
    return 0


@command("layout", "destroy", help="remove a LU's LIO layout", configure=_configure_spec)
def _layout_destroy(args: argparse.Namespace) -> int:
    spec = _spec_from_file(args.spec)
    the_plan = plan(spec)
    for path in LIOLayout().destroy(the_plan):
        print(f"removed {path.split('/core/')[-1]}")
    if spec.backend == "tcmu-pr" and os.path.exists(spec.topology):
        write_topology(spec.topology, merge_topology(read_topology(spec.topology), spec.lu, {}))
    return 0


def _configure_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", default=DEFAULT_TOPOLOGY, metavar="FILE")


@command("layout", "show", help="LIO objects and the topology file, as JSON",
         configure=_configure_show)
def _layout_show(args: argparse.Namespace) -> int:
    out = LIOLayout().show()
    out["topology"] = read_topology(args.topology).get("devices", {})
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0
