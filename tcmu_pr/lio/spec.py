"""The layout spec: JSON in, a validated :class:`Spec` out, or a :class:`LayoutError` naming
the first bad field.  Pure: nothing here touches configfs.  Format: docs/layouts.md."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.lio.topology_file import DEFAULT_TOPOLOGY
from tcmu_pr.netlink.devconfig import DEV_CONFIG_MAX
from tcmu_pr.pr.nexus import Nexus, NexusError

#: backend name -> (kind, TCMU handler).  ``user`` kinds are served in user space (ours, or
#: tcmu-runner for comparison); the LIO kinds get one shared device and LIO's own PR
#: emulation (the reference to compare with).
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

#: How a tcmu-pr LU is laid out.  ``nexus``: one device per LU, the kernel names the I_T
#: nexus in every ring entry (patched target_core_user, attrib/nexus_handles).
#: ``per-nexus``: one device per (initiator, target port), for stock kernels.  ``auto``:
#: ``nexus`` when the kernel has the feature, else ``per-nexus``.
MODES = ("auto", "nexus", "per-nexus")

#: TCMU settings the kernel takes only before a device is enabled: they go through the
#: backstore's control string at creation (rtslib's ``control=``), not as attributes.
CONTROL_KEYS = frozenset({"max_data_area_mb", "data_pages_per_blk", "cmd_ring_size_mb",
                          "hw_block_size", "hw_max_sectors", "nl_reply_supported"})

_LU_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


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
    mode: str = "auto"

    @property
    def kind(self) -> str:
        return BACKENDS[self.backend][0]

    @property
    def path(self) -> str:
        """The image path for file stores ('' for rbd)."""
        return self.store.path

    @property
    def initiators_of(self) -> dict[Port, tuple[str, ...]]:
        """Who reaches the LU through each port."""
        return {p: (p.loop_initiator,) if p.loop_initiator else self.initiators
                for p in self.ports}


def load_spec(obj: Any, *, base: str | None = None) -> Spec:
    """Validate a decoded JSON spec; :class:`LayoutError` names the first bad field.

    ``base`` resolves relative file stores (the CLI passes its working directory)."""
    if not isinstance(obj, dict):
        raise LayoutError("spec must be a JSON object")
    known = {"lu", "store", "backend", "fabric", "targets", "initiators", "lun", "size",
             "pr_store", "identity", "topology", "attributes", "ceph_conf", "mode"}
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
    mode = obj.get("mode", "auto")
    if mode not in MODES:
        raise LayoutError(f"mode {mode!r}: one of {', '.join(MODES)}")
    if mode == "nexus" and backend != "tcmu-pr":
        raise LayoutError(f"mode nexus needs backend tcmu-pr, not {backend}")
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
                                  or not re.fullmatch(r"/[^;,:\s]*", ceph_conf)):  # fmt: skip
        raise LayoutError("ceph_conf must be an absolute path without ';', ',', ':' or spaces")
    if BACKENDS[backend][0] == "user":
        _check_user_config(store, pr_store)
    size = obj.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise LayoutError("size must be a positive number of bytes")
    if backend == "ramdisk" and size is None:
        raise LayoutError("backend ramdisk needs a size")
    lun = obj.get("lun", 0)
    if not isinstance(lun, int) or isinstance(lun, bool) or not 0 <= lun <= 255:
        raise LayoutError("lun must be 0..255")
    attributes = _attributes(obj.get("attributes", {}))
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
    topology = obj.get("topology", DEFAULT_TOPOLOGY)
    if not isinstance(topology, str) or not topology.startswith("/"):
        raise LayoutError("topology must be an absolute path")
    spec = Spec(
        lu=lu, store=store, backend=backend, fabric=fabric, ports=ports,
        initiators=initiators, lun=lun, size=size, pr_store=pr_store, ceph_conf=ceph_conf,
        identity=str(obj.get("identity") or str(store)), topology=topology,
        attributes=attributes, mode=mode,
    )
    for port, names in spec.initiators_of.items():  # valid now, not halfway through apply
        for name in names:
            nexus_of(spec, port, name)
    return spec


def _need(obj: dict[str, Any], key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or value == "":
        raise LayoutError(f"spec needs {key!r} ({kind.__name__})")
    return value


def _check_user_config(store: StoreSpec, pr_store: StoreSpec | None) -> None:
    """A TCMU config goes through the kernel's control string, which splits at ',', and
    rtslib refuses ':' in it: neither may appear in a store a user backstore names."""
    for what, spec in (("store", store), ("pr_store", pr_store)):
        if spec is not None and any(c in spec.slashed for c in ",:;\n"):
            raise LayoutError(f"{what} {spec}: a TCMU backstore's store cannot contain "
                              "',', ':', ';' or a newline")
    longest = len(store.slashed) + (len(pr_store.slashed) if pr_store else 0)
    if longest > DEV_CONFIG_MAX - len("tcmu-pr/;pr_store=;rtpi=65535"):
        raise LayoutError("store spec too long for a TCMU dev_config")


def _attributes(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-z_]+", k) for k in raw
    ):
        raise LayoutError("attributes must map attribute names to values")
    out = {k: str(v) for k, v in raw.items()}
    for k, v in out.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise LayoutError(f"attribute {k}: value {v!r} is not a plain word or number")
    return out


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
        for tag, text in enumerate(portals, 1):  # one TPG per portal: docs/layouts.md
            ports.append(Port(wwn, tag, len(ports) + 1, portal=_portal(where, text)))
    return tuple(ports)


def _portal(where: str, text: Any) -> tuple[str, int]:
    if not isinstance(text, str):
        raise LayoutError(f"{where}: portal must be 'IP:PORT'")
    ip, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not ip:
        raise LayoutError(f"{where}: portal {text!r} is not IP:PORT")
    return ip.strip("[]"), int(port)


def nexus_of(spec: Spec, port: Port, initiator: str) -> Nexus:
    """The nexus string LIO would write for this pair, in the form the blob stores.

    tcm_loop has no ISID: ``0``.  iSCSI: empty ("any ISID"), because a per-nexus device
    stands for an initiator name and cannot tell two ISIDs apart (docs/layouts.md).
    """
    isid = "0" if spec.fabric == "loopback" else ""
    try:
        return Nexus(initiator, isid, port.target, f"{port.tag:x}")
    except NexusError as err:
        raise LayoutError(f"cannot form a nexus for {initiator} via {port.target}: {err}") from None


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
