"""``tcmu-pr system install``: make a gateway host run tcmu-pr the way it runs tcmu-runner.

One step writes the systemd units (``tcmu-pr.service`` for one daemon per host,
``tcmu-pr@.service`` for one per gateway where a host runs several), the D-Bus policy and
activation files that let targetcli reach ``org.kernel.TCMUService1``, and the configuration
file (only if there is none).  The files themselves are package data (tcmu_pr/system/), so a
reviewer reads them as they will be installed; ``@EXEC@`` becomes how this installation runs
tcmu-pr.  A file that exists and was not written by tcmu-pr (tcmu-runner ships the same D-Bus
activation file) is left alone unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from tcmu_pr.cli import CommandFailed, UsageError, command

#: package file -> where it goes below the root
FILES = {
    "tcmu-pr.service": "etc/systemd/system/tcmu-pr.service",
    "tcmu-pr@.service": "etc/systemd/system/tcmu-pr@.service",
    "dbus-policy.conf": "etc/dbus-1/system.d/tcmu-pr.conf",
    "org.kernel.TCMUService1.service":
        "usr/share/dbus-1/system-services/org.kernel.TCMUService1.service",
}
#: installed only when absent: the administrator's file wins
CONFIG = ("tcmu-pr.conf", "etc/tcmu-pr/tcmu-pr.conf")
MARK = "tcmu-pr system install"


def exec_command() -> str:
    """How the units start tcmu-pr: this interpreter, so a virtualenv install works too."""
    return f"{shlex.quote(sys.executable)} -m tcmu_pr"


def render(name: str, exec_cmd: str | None = None) -> str:
    text = resources.files("tcmu_pr.system").joinpath(name).read_text(encoding="utf-8")
    return text.replace("@EXEC@", exec_cmd or exec_command())


def install(root: Path, *, force: bool = False, exec_cmd: str | None = None) -> list[str]:
    """Write the files below ``root``; lines saying what was done.  UsageError, changing
    nothing, when a file not written by tcmu-pr is in the way."""
    planned = [(root / dest, render(name, exec_cmd)) for name, dest in FILES.items()]
    for path, _ in planned:
        if path.exists() and not force and MARK not in path.read_text(errors="replace"):
            raise UsageError(f"{path} exists and was not written by tcmu-pr (tcmu-runner's?): "
                             "remove it, or --force to replace it")  # fmt: skip
    done = []
    for path, text in planned:
        if path.exists() and path.read_text(errors="replace") == text:
            done.append(f"unchanged {path}")
            continue
        _write(path, text)
        done.append(f"wrote     {path}")
    config = root / CONFIG[1]
    if config.exists():
        done.append(f"kept      {config}")
    else:
        _write(config, render(CONFIG[0]))
        done.append(f"wrote     {config}")
    return done


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, default=Path("/"),
                   help="install below this directory (default /; packagers: a staging dir)")
    p.add_argument("--force", action="store_true",
                   help="replace files tcmu-pr did not write (e.g. tcmu-runner's D-Bus "
                        "activation file)")  # fmt: skip


@command("system", "install", help="install the systemd units, D-Bus files and configuration "
         "of a gateway host", configure=_configure)  # fmt: skip
def _install(args: argparse.Namespace) -> int:
    try:
        lines = install(args.root, force=args.force)
    except OSError as err:
        raise CommandFailed(f"cannot install: {err}") from err
    print("\n".join(lines))
    if args.root == Path("/") and Path("/run/systemd/system").is_dir():
        if shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
        print("next: systemctl enable --now tcmu-pr  (or tcmu-pr@<gateway> per gateway)")
    return 0
