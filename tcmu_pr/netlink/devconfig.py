"""What the kernel tells us about a device: the uio name string and our dev_config grammar.

The kernel names a TCMU device ``tcm-user/<hba>/<name>/<dev_config>`` (tcmu_update_uio_info;
no ``/<dev_config>`` part when it is empty) and sends that string as TCMU_ATTR_DEVICE.
``dev_config`` is whatever was written to configfs, at most 255 characters; by the
tcmu-runner convention it starts with the handler name.  Ours::

    tcmu-pr/<store>[;<key>=<value>]...
    <store>  := file/<absolute path> | rbd/<pool>/<image>       (dev_config spelling)
              | file:<absolute path> | rbd:<pool>/<image>       (canonical spelling)
    <key>    := pr_store (PR slot, same two spellings, default: <store>)
              | nexus    (I_T nexus to run commands as, <init>,i,0x<isid>,<tport>,t,0x<tpgt>)
              | rtpi     (relative target port identifier, 1..65535)

The slash spelling exists because rtslib-fb (so targetcli) refuses ``:`` in a user backstore's
config, e.g. ``tcmu-pr/file//srv/lu0.img`` as tcmu-runner's ``qcow//path``.  The kernel
splits its control string at commas, so a nexus (which has commas) cannot travel in a
dev_config written through configfs: the daemon's topology file is where nexuses live.
Values cannot contain ``;``.  Stores are parsed by :class:`tcmu_pr.backends.store_spec.StoreSpec`.
Pure parsing, no I/O: whether the file or image exists is found out when the store is opened.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.pr.nexus import Nexus, NexusError

HANDLER = "tcmu-pr"
#: The same handler as targetcli spells it: D-Bus object paths allow no "-" (see daemon/dbus.py).
HANDLER_ALIAS = "tcmu_pr"
#: TCMU_CONFIG_LEN in target_core_user.c is 256 bytes including the NUL.
DEV_CONFIG_MAX = 255
KNOWN_OPTIONS = ("pr_store", "nexus", "rtpi")

_UIO_PREFIX = "tcm-user/"


class DeviceStringError(ValueError):
    """A device string or dev_config we cannot serve; ``errno`` goes back to the kernel."""

    def __init__(self, reason: str, code: int = errno.EINVAL) -> None:
        super().__init__(reason)
        self.errno = code


@dataclass(frozen=True, slots=True)
class DevConfig:
    """A parsed ``tcmu-pr/...`` dev_config."""

    store: StoreSpec
    pr_store: StoreSpec
    nexus: Nexus | None = None
    rtpi: int | None = None
    raw: str = ""


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """One TCMU device as ADDED_DEVICE announces it."""

    device_id: int  # se_dev.dev_index: the key of every later message
    minor: int  # /dev/uio<minor>
    hba: int
    name: str
    config: DevConfig
    uio_name: str  # the TCMU_ATTR_DEVICE string, verbatim


def split_uio_name(text: str) -> tuple[int, str, str]:
    """``tcm-user/<hba>/<name>[/<dev_config>]`` -> (hba, name, dev_config)."""
    if not text.startswith(_UIO_PREFIX):
        raise DeviceStringError(f"device {text!r} does not start with {_UIO_PREFIX!r}")
    parts = text[len(_UIO_PREFIX) :].split("/", 2)
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1]:
        raise DeviceStringError(f"device {text!r} is not tcm-user/<hba>/<name>/<dev_config>")
    return int(parts[0]), parts[1], parts[2] if len(parts) == 3 else ""


def parse_dev_config(text: str) -> DevConfig:
    """Parse our handler's dev_config; ENOENT when it names another handler."""
    if not text:
        raise DeviceStringError("empty dev_config: expected tcmu-pr/<store>")
    if len(text) > DEV_CONFIG_MAX:
        raise DeviceStringError(f"dev_config is {len(text)} characters, at most {DEV_CONFIG_MAX}")
    handler, sep, rest = text.partition("/")
    if not sep or handler not in (HANDLER, HANDLER_ALIAS):
        raise DeviceStringError(f"dev_config {text!r} is not for handler {HANDLER!r}", errno.ENOENT)
    store_text, *option_texts = rest.split(";")
    store = parse_store(store_text)
    options: dict[str, str] = {}
    for item in option_texts:
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise DeviceStringError(f"option {item!r} is not key=value")
        if key not in KNOWN_OPTIONS:
            raise DeviceStringError(f"unknown option {key!r} (known: {', '.join(KNOWN_OPTIONS)})")
        if key in options:
            raise DeviceStringError(f"option {key!r} given twice")
        options[key] = value
    return DevConfig(
        store=store,
        pr_store=parse_store(options["pr_store"]) if "pr_store" in options else store,
        nexus=_parse_nexus(options.get("nexus")),
        rtpi=_parse_rtpi(options.get("rtpi")),
        raw=text,
    )


def parse_store(text: str) -> StoreSpec:
    """A store in either spelling (``file//abs/path``, ``rbd/pool/image``, or with ``:``)."""
    try:
        return StoreSpec.parse(text)
    except StoreSpecError as err:
        raise DeviceStringError(str(err)) from None


def _parse_nexus(text: str | None) -> Nexus | None:
    if text is None:
        return None
    try:
        return Nexus.parse(text)
    except NexusError as exc:
        raise DeviceStringError(f"option nexus: {exc}") from None


def _parse_rtpi(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 0xFFFF:
        raise DeviceStringError(f"option rtpi {text!r} must be 1..65535")
    return int(text)
