"""Regression tests for what the audit of native/ring.c found (docs/ring.md, "Audit").

Each case is a defect of the C code or a guard it gained; the ring-level cases run on the
pure-Python loop too, which must behave the same.  The last test builds native/fuzz_ring.c
with its own mutation driver under ASan/UBSan and runs it.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from ring_support import BLOCK, close_device, libasan, make_device, rw10

from tcmu_pr.ring import layout as L
from tcmu_pr.ring.abi import ERR_IOV, ERR_MAILBOX
from tcmu_pr.ring.loop import RingError
from tcmu_pr.ring.native import NativeOps, NativeRing, load
from tcmu_pr.ring.simulator import RingSimulator, encode_cmd_entry

ROOT = Path(__file__).resolve().parents[1]
INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])


@pytest.fixture(params=["native", "native-deferred", "python"])
def dev(request, tmp_path):
    d = make_device(request.param, tmp_path, cmdr_size=8192, data_size=64 * 1024)
    yield d
    close_device(d)


def _raw(dev, cdb: bytes, iovs: list[tuple[int, int]]) -> int:
    """Queue a CMD entry with exactly these iovecs (no data-area bookkeeping)."""
    sim = dev.sim
    body = max(L.REQ_IOV + L.IOVEC_SIZE * len(iovs), L.ENTRY_SIZE)
    length = L.align(body + len(cdb))
    at = sim._reserve(length)  # the simulator's own PAD logic
    ent = sim.cmdr_off + at
    raw = encode_cmd_entry(0x77, ent + body, iovs, length)
    raw += bytes(length - len(raw))
    raw[body : body + len(cdb)] = cdb
    return sim.queue_raw(bytes(raw), length)


def test_sense_is_zero_filled_behind_a_fixed_format_sense(dev):
    """The response overlays the request: an 18-byte sense used to leave iovec offsets and
    lengths in bytes 18..95, which the kernel hands to LIO with the sense."""
    dev.sim.queue(rw10(False, 1 << 30, 4), data_in=4 * BLOCK, split=[BLOCK] * 4)
    (done,) = dev.sim.reap() if dev.ring.process() == [] else ()
    assert done.status == 2 and done.sense[12] == 0x21
    assert done.sense[18:] == bytes(96 - 18)

    dev.sim.queue(INQUIRY, data_in=4 * BLOCK, split=[BLOCK] * 4)
    (p,) = dev.ring.process()
    dev.ring.complete(p, 2, bytes([0x70, 0, 5, 0, 0, 0, 0, 10]) + bytes(4) + b"\x24", None)
    dev.ring.commit()
    (done,) = dev.sim.reap()
    assert done.sense[:13] == bytes([0x70, 0, 5, 0, 0, 0, 0, 10]) + bytes(4) + b"\x24"
    assert done.sense[13:] == bytes(96 - 13)


def test_overlapping_iovecs_cannot_inflate_the_data_out_length(dev):
    """Each iovec may lie in the data area and still overlap the others: 200 of them over the
    whole area used to measure 200 x 64 KiB and make Python allocate that much."""
    sim = dev.sim
    area = sim.map_size - sim.data_off
    _raw(dev, INQUIRY, [(sim.data_off, area)] * 200)
    (p,) = dev.ring.process()
    with pytest.raises(RingError) as err:
        dev.ring.data_out(p)
    assert err.value.code == ERR_IOV
    assert dev.ring.complete(p, 0, None, None) == 0  # it can still be answered
    dev.ring.commit()
    assert sim.tail == sim.head


def test_header_rewritten_after_a_punt_does_not_wedge_the_ring(dev):
    """complete() used to re-read and re-check the entry header; a rewritten header left the
    entry pending for ever and every later call failed with RING_ERR_PENDING."""
    sim = dev.sim
    sim.queue(INQUIRY, data_in=96)
    (p,) = dev.ring.process()
    original = bytes(sim.mm[p : p + 4])
    sim.mm[p : p + 4] = struct.pack("<I", 0xFFFFFFF8 | L.OP_TMR)
    assert dev.ring.cdb(p) == INQUIRY
    assert dev.ring.complete(p, 0, None, b"\x01" * 96) == 96
    dev.ring.commit()
    sim.mm[p : p + 4] = original  # let the simulated kernel walk its ring again
    (done,) = sim.reap()
    assert (done.status, done.data) == (0, b"\x01" * 96)
    sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    assert dev.ring.process() == [] and sim.reap()[0].status == 0


def test_misaligned_ring_or_mapping_is_refused(tmp_path):
    """Every ring field is loaded once, atomically, which needs natural alignment: a
    cmdr_off or a mapping that is not 8-aligned is refused at init."""
    fd = os.open(tmp_path / "d", os.O_RDWR | os.O_CREAT, 0o600)
    sim = RingSimulator(cmdr_size=4096, data_size=4096)
    try:
        L.U32.pack_into(sim.mm, L.MB_CMDR_OFF, sim.cmdr_off + 4)
        with pytest.raises(RingError) as err:
            NativeRing(sim.mm, sim.kick_fd, fd, 4096, BLOCK)
        assert err.value.code == ERR_MAILBOX
        L.U32.pack_into(sim.mm, L.MB_CMDR_OFF, sim.cmdr_off)
        shifted = bytearray(len(sim.mm) + 1)
        shifted[1:] = sim.mm[:]
        with pytest.raises(RingError) as err:
            NativeRing(memoryview(shifted)[1:], sim.kick_fd, fd, 4096, BLOCK)
        assert err.value.code == -22  # -EINVAL
        NativeRing(sim.mm, sim.kick_fd, fd, 4096, BLOCK).close()  # the control: accepted
    finally:
        sim.close()
        os.close(fd)


class _Table:
    """A NativeBackend whose ops table is all NULL (or claims another layout)."""

    def __init__(self, size_delta: int = 0) -> None:
        mod = load()
        self.table = mod.ffi.new("struct ring_backend_ops *")
        self.size = mod.ffi.sizeof("struct ring_backend_ops") + size_delta
        self.attached = False

    def attach(self) -> NativeOps:
        self.attached = True
        return NativeOps(int(load().ffi.cast("uintptr_t", self.table)), 0, self.size)

    def detach(self) -> None:
        self.attached = False


def test_foreign_backend_tables_are_checked():
    sim = RingSimulator(cmdr_size=4096, data_size=4096)
    try:
        nulls = _Table()
        with pytest.raises(RingError) as err:  # NULL function pointers: never called
            NativeRing(sim.mm, sim.kick_fd, nulls, 4096, BLOCK)
        assert err.value.code == -22 and not nulls.attached
        other = _Table(size_delta=8)
        with pytest.raises(ValueError, match="rebuild"):
            NativeRing(sim.mm, sim.kick_fd, other, 4096, BLOCK)
        assert not other.attached
    finally:
        sim.close()


def test_closed_ring_refuses_to_run(dev):
    dev.ring.close()
    with pytest.raises(RingError):
        dev.ring.process()
    if isinstance(dev.ring, NativeRing):  # the benchmark's entry point exists natively only
        with pytest.raises(RingError):
            dev.ring.process_count()


# -- the fuzz harness, driven by its own mutator under ASan/UBSan -------------------------


def _seed(
    cdbs: list[tuple[bytes, int]],
    *,
    verdict: int = 3,
    sel: int = 0,
    max_transfer: int = 0,
    handles: list[int | None] | None = None,
    slots: dict[int, int] | None = None,
) -> bytes:
    """One fuzz input (layout in native/fuzz_ring.c): good entries with 256-byte iovecs;
    ``sel`` 0x10 serves them through submit/reap, 0x30 with every submit refused, 0x40
    write-through; ``max_transfer`` (blocks) sets 0x80 and the limit; ``slots`` turns on
    nexus mode (verdict bit 3): entry i carries ``handles[i]``, ``slots`` are published."""
    if max_transfer:
        sel |= 0x80
    if slots is not None:
        verdict |= 0x08
    cmdr, data = 4096, 8192
    data_off = L.MAILBOX_SIZE + cmdr
    ring = bytearray(cmdr + data)
    at = 0
    for i, (cdb, n_iov) in enumerate(cdbs):
        iovs = [(data_off + 1024 * i + 256 * k, 256) for k in range(n_iov)]
        body = max(L.REQ_IOV + L.IOVEC_SIZE * n_iov, L.ENTRY_SIZE)
        size = L.align(body + len(cdb))
        handle = handles[i] if handles else None
        ent = encode_cmd_entry(i + 1, L.MAILBOX_SIZE + at + body, iovs, size, nexus=handle)
        ring[at : at + len(ent)] = ent
        ring[at + body : at + body + len(cdb)] = cdb
        at += size
    head = bytes([sel]) + struct.pack(">HH", cmdr - 64, data)
    tail = bytes([L.FLAG_CAP_READ_LEN]) + struct.pack(">HH", at, 64) + bytes([verdict])
    tail += bytes([max_transfer]) if max_transfer else b""
    if slots is not None:
        tail += bytes([len(slots)])
        tail += b"".join(struct.pack(">HB", h, v) for h, v in slots.items())
    script = bytes([1, 0, 20, 0x77]) + struct.pack(">H", 300) + bytes([18, 2]) * 8
    return head + bytes(ring) + tail + script


def _cdb16(op: int, byte1: int, lba: int, count: int) -> bytes:
    return struct.pack(">BBQIBB", op, byte1, lba, count, 0, 0)


def _cdb10(op: int, byte1: int, lba: int, count: int) -> bytes:
    return struct.pack(">BBIBHB", op, byte1, lba, 0, count, 0)


#: One of each command the emulation answers beyond READ/WRITE (the loop punts them all),
#: with the iovec count its data-out or data-in needs.
SBC_COMMANDS = [
    (_cdb10(0x2F, 0x02, 1, 1), 2),  # VERIFY(10) BYTCHK=01b
    (_cdb16(0x8F, 0x06, 1, 1), 2),  # VERIFY(16) BYTCHK=11b
    (_cdb10(0x2E, 0x02, 2, 1), 2),  # WRITE AND VERIFY(10)
    (_cdb16(0x8E, 0x00, 2, 1), 2),  # WRITE AND VERIFY(16)
    (_cdb16(0x8B, 0x00, 3, 1), 2),  # ORWRITE(16)
    (_cdb16(0x89, 0x00, 4, 0)[:13] + bytes([1, 0, 0]), 4),  # COMPARE AND WRITE, 1 block
    (_cdb10(0x41, 0x08, 5, 2), 2),  # WRITE SAME(10) UNMAP
    (_cdb16(0x93, 0x09, 5, 2), 0),  # WRITE SAME(16) UNMAP NDOB
    (bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), 1),  # UNMAP, 24-byte list
    (_cdb16(0x9E, 0x12, 0, 0)[:10] + struct.pack(">I", 256) + bytes(2), 1),  # GET LBA STATUS
    (_cdb10(0x35, 0x02, 0, 0), 0),  # SYNCHRONIZE CACHE(10) IMMED
    (_cdb16(0x91, 0x00, 0, 8), 0),  # SYNCHRONIZE CACHE(16)
    (bytes([0xA3, 0x0C, 0x80, 0, 0, 0, 0, 0, 2, 0, 0, 0]), 4),  # REPORT SUPPORTED OPCODES
    (bytes([0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0]), 1),  # PERSISTENT RESERVE IN, READ KEYS
]
LIMITS = [
    (rw10(False, 1, 1, flags=0x20), 2),  # RDPROTECT
    (rw10(True, 1, 1)[:6] + b"\x1f" + rw10(True, 1, 1)[7:], 2),  # GROUP NUMBER
    (rw10(False, 1, 3), 4),  # over MAXIMUM TRANSFER LENGTH 2
    (rw10(False, 64, 0), 0),  # LBA == capacity, nothing to move
    (rw10(True, 62, 2), 4),
]


@pytest.mark.slow
def test_fuzz_harness_under_asan_and_ubsan(tmp_path):
    libasan()  # the sanitizer runtime must be there: fail, never skip
    exe = tmp_path / "fuzz_ring"
    subprocess.run(
        ["gcc", "-std=gnu11", "-O1", "-g", "-fsanitize=address,undefined",
         "-fno-sanitize-recover=all", "-DRING_FUZZ_MAIN", f"-I{ROOT / 'native'}",
         str(ROOT / "native" / "fuzz_ring.c"), str(ROOT / "native" / "ring.c"),
         str(ROOT / "native" / "cbt.c"), "-o", str(exe)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    rw16 = struct.pack(">BBQIBB", 0x88, 0, 0, 1, 0, 0)
    variable = bytes([0x7F]) + bytes(6) + bytes([24]) + bytes(24)
    pr_out = bytes([0x5F, 1]) + bytes(8)
    mix = [(rw10(False, 1, 1), 2), (rw10(True, 3, 1, flags=8), 2), (INQUIRY, 1), (rw16, 2),
           (rw10(True, 5, 2), 2)]  # fmt: skip
    seeds = {
        "mix": _seed(mix),
        "mix-submit": _seed(mix, sel=0x10),
        "mix-refused": _seed(mix, sel=0x30),
        "var": _seed([(variable, 1), (pr_out, 1), (bytes([8, 0, 0, 1, 1, 0]), 2)]),
        "conflict": _seed([(rw10(True, 3, 1), 2), (rw10(False, 3, 1), 2)], verdict=1),
        "nexus": _seed(mix, handles=[1, 2, None, 1500, 1], slots={1: 3, 1500: 3}),
        "nexus-submit": _seed(mix, sel=0x10, handles=[2, 1, 2, 0, 3], slots={1: 7, 2: 3}),
        # the commands the emulation answers: punted, their iovecs gathered and answered
        "sbc": _seed(SBC_COMMANDS[:6]),
        "sbc-2": _seed(SBC_COMMANDS[6:], sel=0x10),
        # bits outside the usage data, over MAXIMUM TRANSFER LENGTH, LBA == capacity: punted
        # or refused; write-through flushes
        "limits": _seed(LIMITS, max_transfer=2),
        "write-through": _seed(mix, sel=0x50),
        "write-through-sync": _seed(mix, sel=0x40, max_transfer=4),
    }
    files = []
    for name, data in seeds.items():
        (tmp_path / name).write_bytes(data)
        files.append(str(tmp_path / name))
    env = dict(os.environ, RING_FUZZ_ITER="30000", RING_FUZZ_SEED="1",
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=1")  # fmt: skip
    proc = subprocess.run([str(exe), *files], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == f"fuzzed {len(files)} seeds x 30000", proc.stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
