"""Make LIO's configfs match a :class:`~tcmu_pr.lio.plan.Plan`, through rtslib-fb's public
objects (storage objects, targets, TPGs, LUNs, ACLs, mapped LUNs, portals, attributes).

Idempotent: re-running converges and never duplicates anything.  rtslib-fb is imported when
a :class:`LIOLayout` is made, so the pure modules run where it is not installed.

Three things rtslib-fb has no public call for, done by hand here and nowhere else:

- :func:`probe_nexus_handles`: whether the kernel gives a new TCMU backstore
  ``attrib/nexus_handles``.  The attribute exists only below a backstore, and rtslib's
  constructors enable a backstore at once (announcing it to the daemon); a bare directory,
  made and removed again, costs the kernel an allocation and tells user space nothing.
- :func:`_drop_loop_nexus`: rtslib gives every new tcm_loop TPG a random nexus and refuses to
  set another; tcm_loop drops one when ``NULL`` is written to ``nexus``.
- :func:`_free_hba_indexes` reads (never writes) the HBA directory names: the topology file
  must name a device's ``user_<N>`` before the device exists, so its index is chosen here
  and handed to rtslib's ``index=``, avoiding empty HBA directories rtslib does not list.
"""

from __future__ import annotations

import glob
import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tcmu_pr.lio.plan import PER_NEXUS_NAME, Device, Plan
from tcmu_pr.lio.spec import BACKENDS, Port, Spec
from tcmu_pr.netlink.devconfig import DeviceStringError, parse_dev_config

#: The patched target_core_user's per-backstore switch (docs/nexus-abi.md).
NEXUS_ATTRIBUTE = "nexus_handles"
#: configfs directory prefix of each backstore kind (``core/<prefix>_<index>/<name>``).
HBA_DIR = {"user": "user", "fileio": "fileio", "block": "iblock", "ramdisk": "rd_mcp"}
CONFIGFS = "/sys/kernel/config/target"


class LIOError(Exception):
    """LIO or the kernel refused a change; what was done before it stays (re-run apply)."""


@dataclass(slots=True)
class Applied:
    """What :meth:`LIOLayout.apply` did: each device's HBA directory, and warnings."""

    hba_of: dict[str, str]
    warnings: list[str] = field(default_factory=list)


def load_tcmu() -> None:
    """target_core_user must be loaded before a user backstore (or the probe) is made."""
    if not os.path.exists("/sys/module/target_core_user"):
        subprocess.run(["modprobe", "target_core_user"], check=False)


def probe_nexus_handles(configfs: str = CONFIGFS) -> bool:
    """Whether a TCMU backstore made now would have ``attrib/nexus_handles``.

    The exception to "rtslib only" explained in the module docstring: mkdir, look, rmdir."""
    hba = f"{configfs}/core/user_{next(_free_hba_indexes(configfs))}"
    probe = f"{hba}/tcmu-pr-probe"
    os.mkdir(hba)
    try:
        os.mkdir(probe)
        try:
            return os.path.exists(f"{probe}/attrib/{NEXUS_ATTRIBUTE}")
        finally:
            os.rmdir(probe)
    finally:
        os.rmdir(hba)


def _free_hba_indexes(configfs: str) -> Iterator[int]:
    """HBA indexes no backstore directory uses (rtslib numbers them across all plugins)."""
    used = set()
    for path in glob.glob(f"{configfs}/core/*_*"):
        tail = path.rpartition("_")[2]
        if tail.isdigit():
            used.add(int(tail))
    return (i for i in itertools.count() if i not in used)


def _drop_loop_nexus(tpg: Any) -> None:
    """tcm_loop's own way to drop a TPG's nexus (see the module docstring)."""
    with open(f"{tpg.path}/nexus", "w") as f:
        f.write("NULL")


def belongs_to(so_name: str, plugin: str, spec: Spec) -> bool:
    """Whether a storage object is one of ``spec``'s LU in either mode."""
    if so_name == spec.lu:
        return plugin in ("user", spec.kind)  # rtslib's plugin names are the kinds
    m = PER_NEXUS_NAME.fullmatch(so_name)
    return plugin == "user" and m is not None and m["lu"] == spec.lu


class LIOLayout:
    """Makes LIO's configfs match a :class:`Plan`, one rtslib object per configfs object."""

    def __init__(self) -> None:
        try:
            import rtslib_fb
        except ImportError as err:  # pragma: no cover - depends on the machine
            raise LIOError("rtslib-fb is not installed (python3-rtslib-fb)") from err
        self.rts = rtslib_fb
        try:
            self.root = rtslib_fb.RTSRoot()  # loads target_core_mod, mounts configfs
        except rtslib_fb.RTSLibError as err:
            raise LIOError(str(err)) from err

    # -- the kernel ---------------------------------------------------------------------

    def kernel_has_nexus_handles(self) -> bool:
        """Any existing TCMU backstore tells; else a probe (docs/layouts.md)."""
        load_tcmu()
        for so in self.root.storage_objects:
            if so.plugin == "user":
                return NEXUS_ATTRIBUTE in so.list_attributes()
        try:
            return probe_nexus_handles(self.root.path)
        except OSError as err:
            raise LIOError(f"cannot probe target_core_user: {err}") from err

    # -- storage objects ----------------------------------------------------------------

    def _find_so(self, name: str, kind: str) -> Any:
        for so in self.root.storage_objects:
            if so.name == name and so.plugin == kind:
                return so
        return None

    def _so_matches(self, so: Any, dev: Device, size: int) -> bool:
        """Whether ``so`` can stay.  A TCMU device's LIO serial is not compared: INQUIRY
        goes to user space, which derives VPD from the LU's identity, and LIO refuses to
        change a serial while the device is exported (a targetcli-made backstore keeps
        its random one)."""
        if not so.is_configured() or so.size != size:
            return False
        if dev.kind == "user":
            present = set(so.list_attributes())
            return _same_config(so.get_attribute("dev_config"), dev.config) and all(
                so.get_attribute(k) == v for k, v in dev.control.items() if k in present)
        if so.wwn != dev.serial:
            return False
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
        control = ",".join(f"{k}={v}" for k, v in dev.control.items()) or None
        try:
            return rts.UserBackedStorageObject(dev.name, config=dev.config, size=size,
                                               wwn=dev.serial, control=control, index=index)
        except OSError as err:  # the daemon answered ADDED_DEVICE with this errno
            raise LIOError(
                f"{dev.name}: the kernel refused the TCMU device ({err.strerror}); is the "
                f"daemon for {dev.config.partition('/')[0]!r} running?") from err

    def _set_attributes(self, so: Any, dev: Device, warnings: list[str]) -> None:
        attributes = dict(dev.attributes)
        if dev.nexus_handles:
            if NEXUS_ATTRIBUTE in so.list_attributes():
                attributes[NEXUS_ATTRIBUTE] = "1"  # the daemon writes it too: same value
            else:
                # A stock module: the device is a plain backstore whose ring names no nexus,
                # and the daemon gives it LIO's own PR (pgr_support=1); leave that be.
                attributes.pop("pgr_support", None)
                warnings.append(f"{dev.name}: target_core_user has no {NEXUS_ATTRIBUTE} "
                                "(stock module): ring entries name no nexus, so PR is LIO's "
                                "own (per gateway, not shared) or refused")
        for name, value in attributes.items():
            if so.get_attribute(name) != value:
                so.set_attribute(name, value)

    # -- fabric objects -----------------------------------------------------------------

    def _tpg(self, port: Port, fabric: str) -> Any:
        rts = self.rts
        target = rts.Target(rts.FabricModule(fabric), port.target, mode="any")
        tpg = rts.TPG(target, port.tag, mode="any")
        if fabric == "loopback":
            if tpg.nexus != port.loop_initiator:
                if list(tpg.luns):
                    raise LIOError(f"{port.target}: tcm_loop nexus is {tpg.nexus}, "
                                   f"spec says {port.loop_initiator}; destroy it first")
                if tpg.nexus:
                    _drop_loop_nexus(tpg)
                tpg.nexus = port.loop_initiator
            return tpg
        for name, value in (("generate_node_acls", "0"), ("authentication", "0"),
                            ("demo_mode_write_protect", "0")):
            if tpg.get_attribute(name) != value:
                tpg.set_attribute(name, value)
        assert port.portal is not None
        rts.NetworkPortal(tpg, port.portal[0], port.portal[1], mode="any")
        if not tpg.enable:
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

    # -- public -------------------------------------------------------------------------

    def apply(self, plan_: Plan, size: int,
              placed: Callable[[dict[str, str]], None] | None = None) -> Applied:
        """Converge configfs to ``plan_``.

        ``placed`` is called with device name -> HBA dir (``user_3``) *before* any device
        is created: the daemon looks a device up in the topology file when the kernel
        announces it, so the file must already name the device's directory, which is
        therefore chosen here.
        """
        try:
            return self._apply(plan_, size, placed)
        except self.rts.RTSLibError as err:
            raise LIOError(str(err)) from err

    def _apply(self, plan_: Plan, size: int,
               placed: Callable[[dict[str, str]], None] | None) -> Applied:
        spec = plan_.spec
        if spec.kind == "user":
            load_tcmu()
        # LIO writes its PR (APTPL) file under <dbroot>/pr on every PR OUT and fails the
        # command if it cannot; rtslib moves dbroot to /etc/rtslib-fb-target.
        os.makedirs(f"{self.root.dbroot}/pr", exist_ok=True)
        wanted = {d.name for d in plan_.devices}
        for so in list(self.root.storage_objects):  # the other mode's, a dropped initiator's
            if so.name not in wanted and so.plugin == "user" and belongs_to(so.name, "user",
                                                                            spec):
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
                hba_of[dev.name] = f"{HBA_DIR[dev.kind]}_{next(free)}"
        if placed is not None:
            placed(hba_of)
        done = Applied(hba_of)
        sos = {}
        for dev in plan_.devices:
            so = kept.get(dev.name)
            if so is None:
                so = self._create_so(dev, size, int(hba_of[dev.name].rpartition("_")[2]))
            self._set_attributes(so, dev, done.warnings)
            sos[dev.name] = so
        tpgs: dict[Port, Any] = {}
        for ex in plan_.exports:
            if ex.port not in tpgs:
                tpgs[ex.port] = self._tpg(ex.port, spec.fabric)
            lun = self._tpg_lun(tpgs[ex.port], sos[ex.device], spec.lun)
            if spec.fabric == "iscsi":
                self._map(tpgs[ex.port], ex.initiator, spec.lun, lun)
        return done

    def destroy(self, spec: Spec) -> list[str]:
        """Remove the LU's devices (either mode), then the ACLs/TPGs/targets the spec named
        that became empty."""
        try:
            return self._destroy(spec)
        except self.rts.RTSLibError as err:
            raise LIOError(str(err)) from err

    def _destroy(self, spec: Spec) -> list[str]:
        removed = []
        for so in list(self.root.storage_objects):
            if belongs_to(so.name, so.plugin, spec):
                removed.append(so.path)
                so.delete()
        for port in spec.ports:
            target = self._find_target(port.target)
            if target is None:
                continue
            for tpg in list(target.tpgs):
                if tpg.tag != port.tag:
                    continue
                for acl in list(tpg.node_acls):
                    if acl.node_wwn in spec.initiators and not list(acl.mapped_luns):
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
                present = set(so.list_attributes())
                row["config"] = so.get_attribute("dev_config")
                for a in ("pgr_support", "alua_support", NEXUS_ATTRIBUTE):
                    if a in present:
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


def _same_config(live: str, wanted: str) -> bool:
    """Equal TCMU configs, ours compared by meaning: targetcli spells the handler
    ``tcmu_pr`` (D-Bus names allow no '-'), and either store spelling is the same store."""
    if live == wanted:
        return True
    try:
        a, b = parse_dev_config(live), parse_dev_config(wanted)
    except DeviceStringError:
        return False
    return (a.store, a.pr_store, a.nexus, a.rtpi) == (b.store, b.pr_store, b.nexus, b.rtpi)


def _wwn(so: Any) -> str | None:
    try:
        return str(so.wwn)
    except Exception:  # an unconfigured object has none
        return None


assert set(HBA_DIR) == {kind for kind, _ in BACKENDS.values()}
