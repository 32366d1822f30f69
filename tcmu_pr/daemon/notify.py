"""Tell whoever started the daemon that it is ready: a ready file and/or systemd's notify socket.

Readiness means the kernel can hand us devices: the netlink group is joined, SET_FEATURES
is acknowledged (the kernel now waits for our replies) and devices that existed before we
started are adopted.  A script that creates a backstore before that point races the
daemon's start (the kernel announces a device once); waiting for one of these signals
removes the race.  ``sd_notify`` is the protocol of sd_notify(3), a datagram on the
AF_UNIX socket named by NOTIFY_SOCKET (a leading ``@`` is the abstract namespace), written
out here rather than pulled in as a dependency.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping
from pathlib import Path


def sd_notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to NOTIFY_SOCKET; False when there is none."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def write_ready_file(path: Path) -> None:
    """Write our pid to ``path`` atomically: a reader sees no file or the whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.replace(path)


def remove_ready_file(path: Path) -> None:
    """Remove ``path`` if it still names this process (a successor may have replaced it)."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
