"""Marking in the ring loops: native (native/cbt.c called from ring.c) and Python (PyRing,
and the emulation for punted commands) leave the same map, equal to an independent record
of the written blocks; a freeze or a pending copy-on-write punts the write to Python."""

from __future__ import annotations

import random
import struct
import time

import pytest
from ring_support import BLOCK, close_device, make_device, rw10, rw16

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.cbt import layout, mapfile
from tcmu_pr.cbt.mapfile import CbtMap
from tcmu_pr.emulation import DeviceInfo, Emulator
from tcmu_pr.ring.handler import RingHandler

SIZE = 2 << 20
TRACK = 4096
KINDS = ["native", "python"]


def _run(kind, tmp_path, ops):
    """Serve ``ops`` (write?, lba, blocks, via_emulation?) and return (map, image bytes)."""
    image = tmp_path / f"{kind}.img"
    image.write_bytes(bytes(SIZE))
    mapfile.enable(str(image), TRACK)
    m = CbtMap.open(str(image))
    dev = make_device(kind, tmp_path, size=SIZE, image=image, cmdr_size=1 << 16,
                      data_size=1 << 20, ring_args={"cbt": m})  # fmt: skip
    data = FileDataBackend(str(image), cbt=m)
    try:
        info = DeviceInfo.from_size("cbt", SIZE, block_size=BLOCK)
        handler = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size,
                              emulate=Emulator(info, data).emulate)  # fmt: skip
        for write, lba, blocks, emulated in ops:
            if emulated:  # WRITE SAME(16): always the emulation's
                cdb = struct.pack(">BBQIBB", 0x93, 0, lba, blocks, 0, 0)
                dev.sim.queue(cdb, data_out=bytes([lba & 0xFF]) * BLOCK)
            else:
                cdb = (rw16 if lba > 0xFFFF else rw10)(write, lba, blocks)
                payload = bytes([lba & 0xFF]) * (blocks * BLOCK) if write else b""
                dev.sim.queue(cdb, data_out=payload, data_in=0 if write else blocks * BLOCK)
            handler.serve()
            (done,) = dev.sim.reap()
            assert done.status == 0
        return m.map_bytes(), image.read_bytes(), dev.ring.stats()
    finally:
        data.close()
        close_device(dev)
        m.close()


def _ops(seed: int, n: int = 300) -> list[tuple[bool, int, int, bool]]:
    rnd = random.Random(seed)
    total = SIZE // BLOCK
    ops = []
    for _ in range(n):
        blocks = rnd.choice([1, 1, 8, 9, 16, 64, 200])
        lba = rnd.randrange(0, total - blocks)
        ops.append((rnd.random() < 0.7, lba, blocks, rnd.random() < 0.1))
    return ops


def _expected(ops) -> bytes:
    marked = bytearray(SIZE // TRACK)
    for write, lba, blocks, emulated in ops:
        if write or emulated:
            for byte in range(lba * BLOCK, (lba + blocks) * BLOCK, 512):
                marked[byte // TRACK] = 1
    return bytes(marked)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_native_and_python_loops_leave_the_same_map(tmp_path, seed):
    ops = _ops(seed)
    native_map, native_img, native_stats = _run("native", tmp_path, ops)
    py_map, py_img, _ = _run("python", tmp_path, ops)
    assert native_map == py_map == _expected(ops)  # 0 blocks missing, none extra
    assert native_img == py_img
    assert native_stats["fast"] > 0 and native_stats["punted"] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_freeze_punts_writes_to_python(kind, tmp_path):
    image = tmp_path / "f.img"
    image.write_bytes(bytes(SIZE))
    mapfile.enable(str(image), TRACK)
    m = CbtMap.open(str(image))
    dev = make_device(kind, tmp_path, size=SIZE, image=image, ring_args={"cbt": m})
    data = FileDataBackend(str(image), cbt=m)
    try:
        handler = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size,
                              emulate=Emulator(DeviceInfo.from_size("f", SIZE), data).emulate)
        # a taker that died long ago: the native loop punts, Python goes ahead regardless
        stale = time.monotonic_ns() - 10 * mapfile.FREEZE_GRACE_NS
        struct.pack_into("<Q", m.mm, layout.OFF_FREEZE_DEADLINE, max(stale, 0))
        m.lib.tcmu_cbt_set_freeze(m.c, 1)
        dev.sim.queue(rw10(True, 40, 1), data_out=b"w" * BLOCK)
        handler.serve()
        (done,) = dev.sim.reap()
        assert done.status == 0
        assert dev.ring.stats()["punted"] == 1 and dev.ring.stats()["fast"] == 0
        assert m.map_bytes()[40 * BLOCK // TRACK] == 1
        assert m.lib.tcmu_cbt_inflight(m.c) == 0
        m.lib.tcmu_cbt_set_freeze(m.c, 0)
        dev.sim.queue(rw10(True, 4000, 1), data_out=b"w" * BLOCK)
        handler.serve()
        dev.sim.reap()
        assert dev.ring.stats()["fast"] == 1
        assert m.map_bytes()[4000 * BLOCK // TRACK] == 1
    finally:
        data.close()
        close_device(dev)
        m.close()


def test_reads_mark_nothing(tmp_path):
    ops = [(False, lba, 8, False) for lba in range(0, 4000, 97)]
    native_map, _, stats = _run("native", tmp_path, ops)
    assert not any(native_map) and stats["fast"] == len(ops)
