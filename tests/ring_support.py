"""Shared pieces of the ring tests: CDB builders and a device (simulator + backing file)."""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass

from tcmu_pr.ring.loop import RingLoop
from tcmu_pr.ring.simulator import RingSimulator

BLOCK = 512


def rw10(write: bool, lba: int, blocks: int, *, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", 0x2A if write else 0x28, flags, lba, 0, blocks, 0)


def rw6(write: bool, lba: int, blocks: int) -> bytes:
    return bytes([0x0A if write else 0x08, (lba >> 16) & 0x1F, (lba >> 8) & 0xFF, lba & 0xFF,
                  blocks & 0xFF, 0])  # fmt: skip


def rw12(write: bool, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIIBB", 0xAA if write else 0xA8, 0, lba, blocks, 0, 0)


def rw16(write: bool, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A if write else 0x88, 0, lba, blocks, 0, 0)


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    s = bytearray(18)
    s[0], s[2], s[7], s[12], s[13] = 0x70, key, 10, asc, ascq
    return bytes(s)


@dataclass
class Device:
    """A simulated TCMU device: kernel side, backing file, and a ring loop serving it."""

    sim: RingSimulator
    fd: int
    size: int
    ring: RingLoop

    def read_file(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)


def make_device(
    kind: str,
    tmp_path,
    *,
    size: int = 1 << 20,
    module=None,
    image=None,
    ring_args: dict | None = None,
    **sim_args,
) -> Device:
    """A device of ``size`` bytes backed by ``image`` (default: a new file in tmp_path);
    ``ring_args`` go to the loop (max_transfer, write_through)."""
    sim = RingSimulator(**sim_args)
    path = image or tmp_path / f"disk-{kind}.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
    if kind in ("native", "native-deferred"):
        from tcmu_pr.ring.native import NativeRing

        ring: RingLoop = NativeRing(
            sim.mm, sim.kick_fd, fd, size, BLOCK, module=module,
            deferred=kind == "native-deferred", **(ring_args or {}),
        )  # fmt: skip
    else:
        from tcmu_pr.ring.pyloop import PyRing

        ring = PyRing(sim.mm, sim.kick_fd, fd, size, BLOCK, **(ring_args or {}))
    return Device(sim, fd, size, ring)


def close_device(dev: Device) -> None:
    dev.ring.close()
    dev.sim.close()
    os.close(dev.fd)


def libasan() -> str:
    """gcc's ASan runtime, for the sanitizer tests; Debian's gcc (scripts/apt-packages.txt)
    brings it, so a missing one fails the test instead of skipping it."""
    out = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True)
    path = out.stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), "gcc's libasan missing: scripts/setup"
    return path
