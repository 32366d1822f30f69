"""The topology file's name, its keys, and writing it atomically.

The layout tool writes the file and the daemon reads it (tcmu_pr/daemon/topology.py parses
and checks it), so the default path and the key of a device are defined here, once.  The
format is in docs/daemon.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

DEFAULT_TOPOLOGY = "/etc/tcmu-pr/topology.json"


class TopologyFileError(Exception):
    """The topology file exists but cannot be used: nothing was written."""


def device_key(hba: int | str, name: str) -> str:
    """A backstore's key: its directory below configfs ``target/core`` (``user_3/lu1``).

    ``hba`` is the HBA index (3) or the whole HBA directory name (``user_3``)."""
    hba_dir = hba if isinstance(hba, str) else f"user_{hba}"
    return f"{hba_dir}/{name}"


def merge(existing: dict[str, Any], lu: str, rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``existing`` with every row of ``lu`` replaced by ``rows`` (other LUs untouched)."""
    devices = existing.get("devices", {}) if isinstance(existing, dict) else {}
    kept = {k: v for k, v in devices.items() if not (isinstance(v, dict) and v.get("lu") == lu)}
    return {**(existing if isinstance(existing, dict) else {}), "devices": {**kept, **rows}}


def read(path: str) -> dict[str, Any]:
    """The file as a JSON object; an absent file is an empty topology."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        return {"devices": {}}
    except (OSError, ValueError) as err:
        raise TopologyFileError(f"{path}: unreadable topology: {err}") from err
    if not isinstance(obj, dict) or not isinstance(obj.get("devices", {}), dict):
        raise TopologyFileError(f"{path}: topology is not {{\"devices\": {{...}}}}")
    return obj


def write(path: str, obj: dict[str, Any]) -> None:
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


def update(path: str, lu: str, rows: dict[str, dict[str, Any]]) -> None:
    """Replace ``lu``'s rows in the file at ``path`` (creating it if needed)."""
    write(path, merge(read(path), lu, rows))
