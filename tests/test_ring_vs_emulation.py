"""The ring loops' fast path against the Python emulation: one CDB, one answer.

A loop serves a READ/WRITE itself or punts it to the handler, which asks the emulation.
Whichever way a CDB goes, the initiator must get what ``Emulator.emulate`` answers for it
alone: every bit of every READ/WRITE flipped, transfers around MAXIMUM TRANSFER LENGTH, and
LBAs around the capacity (an LBA equal to the capacity names no block, even with nothing to
move).  Also pins the C loop's usage masks to the emulation's usage data.
"""

from __future__ import annotations

import os

import pytest
from ring_support import BLOCK, close_device, make_device, rw6, rw10, rw12, rw16

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.emulation import DeviceInfo, Emulator, fixed_usage
from tcmu_pr.emulation.cdb import lba_and_length
from tcmu_pr.ring import rw
from tcmu_pr.ring.handler import RingHandler

KINDS = ["native", "native-deferred", "python"]
SIZE = 1 << 20
NUM_BLOCKS = SIZE // BLOCK
MAX_TRANSFER = 16  # blocks: small, so 6-byte CDBs (256 blocks for 0) exceed it too
BUILDERS = (rw6, rw10, rw12, rw16)


def _cdbs() -> list[bytes]:
    cdbs = []
    for build in BUILDERS:
        for write in (False, True):
            base = build(write, 1, 2)
            cdbs.append(base)
            for byte in range(1, len(base)):  # every bit but the opcode's
                for bit in range(8):
                    flipped = bytearray(base)
                    flipped[byte] ^= 1 << bit
                    cdbs.append(bytes(flipped))
            lba6 = min(NUM_BLOCKS, 0x1FFFFF)
            for lba, blocks in ((0, MAX_TRANSFER), (0, MAX_TRANSFER + 1), (NUM_BLOCKS, 0),
                                (NUM_BLOCKS - 1, 1), (NUM_BLOCKS - 1, 0), (NUM_BLOCKS, 1),
                                (NUM_BLOCKS - 1, 2), (lba6, 1)):  # fmt: skip
                if build is rw6 and (lba > 0x1FFFFF or blocks > 255):
                    continue
                cdbs.append(build(write, lba, blocks))
    return cdbs


def _data_out(cdb: bytes) -> bytes:
    """What the kernel would send: TRANSFER LENGTH blocks (capped to the data area)."""
    if cdb[0] not in rw.WRITE_OPCODES:
        return b""
    _, blocks = lba_and_length(cdb)
    return bytes([cdb[2] ^ 0x5A]) * (min(blocks, 32) * BLOCK)


def _device() -> DeviceInfo:
    return DeviceInfo.from_size("ring-vs-emulation", SIZE, block_size=BLOCK,
                                max_transfer_bytes=MAX_TRANSFER * BLOCK)  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_read_write_answers_as_the_emulation(kind, tmp_path):
    info = _device()
    dev = make_device(kind, tmp_path, size=SIZE, cmdr_size=1 << 16, data_size=1 << 20,
                      ring_args={"max_transfer": info.max_transfer_lbas})  # fmt: skip
    ref_path = tmp_path / "reference.img"
    ref_path.write_bytes(bytes(SIZE))
    reference = FileDataBackend(str(ref_path))
    ours = FileDataBackend(str(tmp_path / f"disk-{kind}.img"))
    try:
        handler = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size,
                              emulate=Emulator(info, ours).emulate)  # fmt: skip
        emulator = Emulator(info, reference)
        served = 0
        for cdb in _cdbs():
            data_out = _data_out(cdb)
            reading = cdb[0] in rw.READ_OPCODES
            _, blocks = lba_and_length(cdb)
            data_in = min(blocks, 32) * BLOCK if reading else 0
            dev.sim.queue(cdb, data_out=data_out, data_in=data_in)
            handler.serve()
            (done,) = dev.sim.reap()
            status, sense, data = emulator.emulate(cdb, data_out)
            got = (done.status, done.sense[: len(sense)] if sense else None)
            assert got == (status, sense), cdb.hex()
            if reading and status == 0:
                assert done.data[: len(data or b"")] == (data or b""), cdb.hex()
        served = dev.ring.stats()["fast"]
        punted = dev.ring.stats()["punted"]
        assert served and punted  # both paths were taken
        assert dev.read_file(0, SIZE) == ref_path.read_bytes()
    finally:
        reference.close()
        ours.close()
        close_device(dev)


def test_native_usage_masks_are_the_emulations():
    from tcmu_pr.ring.native import load

    mod = load()
    out = mod.ffi.new("uint8_t[16]")
    for op in sorted(rw.RW_OPCODES):
        n = mod.lib.tcmu_ring_rw_usage(op, out)
        assert bytes(mod.ffi.buffer(out, n)) == fixed_usage(op) == rw.USAGE[op], hex(op)
    assert mod.lib.tcmu_ring_rw_usage(0x2F, out) < 0  # VERIFY: not served by the loop


def test_write_through_flushes_every_write(tmp_path):
    """WCE=0 on a backend that caches: GOOD only after a flush (one per batch when the
    writes were submitted together, one per write on the synchronous paths)."""
    for kind in KINDS:
        dev = make_device(kind, tmp_path, size=SIZE, ring_args={"write_through": True})
        try:
            for lba in range(4):
                dev.sim.queue(rw10(True, lba, 1), data_out=os.urandom(BLOCK))
            dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
            assert dev.ring.process() == []
            assert [c.status for c in dev.sim.reap()] == [0] * 5
            assert dev.ring.stats()["flushes"] == (1 if kind == "native-deferred" else 4), kind
        finally:
            close_device(dev)
