"""The daemon's own configuration file: TOML, every key optional, unknown keys refused.

Why TOML: Python reads it without a dependency (``tomllib``) and it allows comments, so
the shipped example (tcmu_pr/system/tcmu-pr.conf) can document itself.  A missing file at the
default path means "all defaults", because a gateway that only exports LUs listed in the
topology file needs no settings at all; a path given on the command line must exist.
Every error names the file, the key and what was expected, and nothing starts on a bad file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcmu_pr.backends.base import DEFAULT_ACK_TIMEOUT, StoreOptions
from tcmu_pr.lio import topology_file

DEFAULT_PATH = Path("/etc/tcmu-pr/tcmu-pr.conf")
DEFAULT_TOPOLOGY = Path(topology_file.DEFAULT_TOPOLOGY)
LOG_LEVELS = ("debug", "info", "warning", "error")
RING_KINDS = ("auto", "native", "python")
BLOCK_SIZES = (512, 4096)


class DaemonConfigError(ValueError):
    """The configuration file cannot be used; the message names file and key."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Settings of one ``tcmu-pr daemon`` process (section.key in the file)."""

    #: [daemon] topology: which I_T nexus each TCMU device serves (docs/daemon.md).
    topology: Path = DEFAULT_TOPOLOGY
    #: [daemon] log_level
    log_level: str = "info"
    #: [daemon] ring: "native" (C loop), "python", or "auto" (native when built).
    ring: str = "auto"
    #: [daemon] block_size: logical block size of every device (LIO's hw_block_size).
    block_size: int = 512
    #: [daemon] ring_poll_ms: longest a device thread sleeps before checking for shutdown.
    ring_poll_ms: int = 200
    #: [daemon] devices: globs selecting the TCMU devices this daemon serves (backstore
    #: name or user_<hba>/<name>); empty: all.  Two daemons on one kernel (one per gateway)
    #: must select disjoint devices: each stays silent about the other's (selection.py).
    devices: tuple[str, ...] = ()
    #: [dbus] enabled: offer org.kernel.TCMUService1 (targetcli's CheckConfig).
    dbus: bool = True
    #: [dbus] address: a D-Bus address; empty means the system bus.
    dbus_address: str = ""
    #: [store] ack_timeout_ms: how long a PR change waits for every other gateway serving the
    #: LU to acknowledge it before cutting the silent ones off (docs/consistency.md).
    ack_timeout_ms: int = int(DEFAULT_ACK_TIMEOUT * 1000)
    #: [store] fence: cut off a gateway that did not acknowledge (file: kill its daemon;
    #: RBD: blocklist its client); false: answer the change CHECK CONDITION instead.
    fence: bool = True
    #: [store] ceph_conf / ceph_id: RBD stores' ceph.conf and client id (empty: $CEPH_CONF /
    #: librados' search, and $CEPH_ID / "admin").  One id per gateway, e.g. "gw1".
    ceph_conf: str = ""
    ceph_id: str = ""

    @property
    def store_options(self) -> StoreOptions:
        return StoreOptions(
            ack_timeout=self.ack_timeout_ms / 1000,
            fence=self.fence,
            ceph_conf=self.ceph_conf or None,
            ceph_id=self.ceph_id or None,
        )


# file section -> {key: DaemonConfig field}
_KEYS: dict[str, dict[str, str]] = {
    "daemon": {
        "topology": "topology",
        "log_level": "log_level",
        "ring": "ring",
        "block_size": "block_size",
        "ring_poll_ms": "ring_poll_ms",
        "devices": "devices",
    },
    "dbus": {"enabled": "dbus", "address": "dbus_address"},
    "store": {
        "ack_timeout_ms": "ack_timeout_ms",
        "fence": "fence",
        "ceph_conf": "ceph_conf",
        "ceph_id": "ceph_id",
    },
}


def load(path: Path | None = None) -> DaemonConfig:
    """Read ``path`` (default: DEFAULT_PATH, which may be absent); DaemonConfigError on bad
    input."""
    explicit = path is not None
    path = path or DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise DaemonConfigError(f"{path}: no such configuration file") from None
        return DaemonConfig()
    except (OSError, UnicodeDecodeError) as err:
        raise DaemonConfigError(f"{path}: cannot read: {err}") from err
    return parse(text, source=str(path))


def parse(text: str, *, source: str = "<config>") -> DaemonConfig:
    """Parse the TOML text of a configuration file."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DaemonConfigError(f"{source}: not valid TOML: {err}") from err
    values: dict[str, Any] = {}
    for section, body in doc.items():
        keys = _KEYS.get(section)
        if keys is None:
            raise DaemonConfigError(
                f"{source}: unknown section [{section}] (known: {', '.join(_KEYS)})"
            )
        if not isinstance(body, dict):
            raise DaemonConfigError(f"{source}: {section} must be a [section]")
        for key, value in body.items():
            name = keys.get(key)
            if name is None:
                known = ", ".join(keys)
                raise DaemonConfigError(f"{source}: unknown key {section}.{key} (known: {known})")
            values[name] = _check(f"{source}: {section}.{key}", name, value)
    return DaemonConfig(**values)


def _check(where: str, name: str, value: Any) -> Any:
    """Type and range of one value; returns it converted (paths)."""
    if name == "topology":
        if not isinstance(value, str) or not value.startswith("/"):
            raise DaemonConfigError(f"{where} must be an absolute path")
        return Path(value)
    if name == "log_level":
        return _choice(where, value, LOG_LEVELS)
    if name == "ring":
        return _choice(where, value, RING_KINDS)
    if name == "block_size":
        if type(value) is not int or value not in BLOCK_SIZES:
            raise DaemonConfigError(f"{where} must be one of {', '.join(map(str, BLOCK_SIZES))}")
        return value
    if name == "ring_poll_ms":
        if type(value) is not int or not 10 <= value <= 10_000:
            raise DaemonConfigError(f"{where} must be an integer from 10 to 10000")
        return value
    if name == "ack_timeout_ms":
        # the OSD counts notify timeouts in whole seconds: at least one
        if type(value) is not int or not 1000 <= value <= 300_000:
            raise DaemonConfigError(f"{where} must be an integer from 1000 to 300000")
        return value
    if name == "ceph_conf":
        if not isinstance(value, str) or (value and not value.startswith("/")):
            raise DaemonConfigError(f"{where} must be an absolute path (or empty)")
        return value
    if name == "devices":
        if not isinstance(value, list) or not all(isinstance(g, str) and g for g in value):
            raise DaemonConfigError(f"{where} must be a list of non-empty glob strings")
        return tuple(value)
    if name in ("dbus", "fence"):
        if type(value) is not bool:
            raise DaemonConfigError(f"{where} must be true or false")
        return value
    if not isinstance(value, str):  # dbus_address, ceph_id
        raise DaemonConfigError(f"{where} must be a string")
    return value


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise DaemonConfigError(f"{where} must be one of {', '.join(choices)}, not {value!r}")
    return value
