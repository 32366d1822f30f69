#!/usr/bin/env python3
"""Load Debian's or the nexus-handle target_core_user.ko in the test VM, and tell them apart.

    tcmu_module.py load stock|patched
    tcmu_module.py which

build-image puts the patched module in /lib/modules/KVER/updates/ (modprobe's first choice)
and leaves the stock one in kernel/drivers/target/.  ``load`` unloads whatever is loaded (this
fails while TCMU devices exist: nothing is pulled from under a layout), loads the module's
dependencies with modprobe and the wanted file with insmod, then checks by GNU build id that
the kernel runs that very file.  ``which`` prints ``stock``, ``patched``, ``other`` or ``none``.
Runs in the guest with Debian's python3 only (no project imports).
"""

from __future__ import annotations

import lzma
import os
import struct
import subprocess
import sys
from pathlib import Path

MODS = Path("/lib/modules") / os.uname().release
LOADED_NOTE = Path("/sys/module/target_core_user/notes/.note.gnu.build-id")
DEPENDENCIES = ("target_core_mod", "uio")


def module_file(kind: str) -> Path:
    """The .ko of ``kind``; Debian ships its modules xz-compressed."""
    if kind == "patched":
        return MODS / "updates" / "target_core_user.ko"
    found = sorted((MODS / "kernel/drivers/target").glob("target_core_user.ko*"))
    if not found:
        raise SystemExit(f"no stock target_core_user.ko under {MODS}")
    return found[0]


def build_id_note(path: Path) -> bytes:
    """The raw .note.gnu.build-id section of an ELF64 module, as sysfs shows it when loaded."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        data = lzma.decompress(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size
    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\0", stroff + name)
        if data[stroff + name:end] == b".note.gnu.build-id":
            return data[off:off + size]
    raise SystemExit(f"{path}: no .note.gnu.build-id")


def which() -> str:
    if not LOADED_NOTE.exists():
        return "none"
    loaded = LOADED_NOTE.read_bytes()
    for kind in ("stock", "patched"):
        if build_id_note(module_file(kind)) == loaded:
            return kind
    return "other"


def load(kind: str) -> None:
    if which() == kind:
        return
    if LOADED_NOTE.parent.parent.exists():
        subprocess.run(["rmmod", "target_core_user"], check=True)
    for dep in DEPENDENCIES:
        subprocess.run(["modprobe", dep], check=True)
    subprocess.run(["insmod", str(module_file(kind))], check=True)
    if which() != kind:
        raise SystemExit(f"loaded {module_file(kind)} but the kernel runs {which()}")


def main(argv: list[str]) -> int:
    if argv == ["which"]:
        print(which())
        return 0
    if len(argv) == 2 and argv[0] == "load" and argv[1] in ("stock", "patched"):
        if build_id_note(module_file("stock")) == build_id_note(module_file("patched")):
            raise SystemExit("the stock and patched modules are the same build")
        load(argv[1])
        print(which())
        return 0
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
