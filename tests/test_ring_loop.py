"""The ring loops (native C and pure Python) against the simulated kernel side.

Every test runs on both loops: they must make the same decisions, and a separate test feeds
both the same random mix of good and malformed entries and compares every answer.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from ring_support import (
    BLOCK,
    close_device,
    fixed_sense,
    make_device,
    rw6,
    rw10,
    rw12,
    rw16,
)

from tcmu_pr.ring import layout as L
from tcmu_pr.ring.abi import ERR_ENTRY, ERR_HEAD, ERR_NOT_CMD, ERR_PENDING
from tcmu_pr.ring.loop import RingError
from tcmu_pr.ring.simulator import encode_cmd_entry

INVALID_FIELD = fixed_sense(0x5, 0x24, 0)
LBA_RANGE = fixed_sense(0x5, 0x21, 0)
INTERNAL = fixed_sense(0x4, 0x44, 0)
READ_ERROR = fixed_sense(0x3, 0x11, 0)

KINDS = ["native", "native-deferred", "python"]  # deferred: the submit/reap path


@pytest.fixture(params=KINDS)
def dev(request, tmp_path):
    d = make_device(request.param, tmp_path, cmdr_size=8192, data_size=256 * 1024)
    yield d
    close_device(d)


def serve(dev):
    """process() once; it must not punt."""
    assert dev.ring.process() == []
    return dev.sim.reap()


def test_write_then_read_every_cdb_size(dev):
    payload = os.urandom(4 * BLOCK)
    for n, build in enumerate((rw6, rw10, rw12, rw16)):
        lba = 8 * n + 1
        dev.sim.queue(build(True, lba, 4), data_out=payload)
        dev.sim.queue(build(False, lba, 4), data_in=len(payload))
        done = serve(dev)
        assert [c.status for c in done] == [0, 0]
        assert done[1].data == payload
        assert dev.read_file(lba * BLOCK, len(payload)) == payload


def test_read6_length_zero_means_256_blocks(dev):
    dev.sim.queue(rw6(False, 0, 0), data_in=256 * BLOCK)
    assert serve(dev)[0].status == 0
    dev.sim.queue(rw6(False, dev.size // BLOCK - 256, 0), data_in=256 * BLOCK)
    assert serve(dev)[0].status == 0
    dev.sim.queue(rw6(False, dev.size // BLOCK - 255, 0), data_in=256 * BLOCK)
    assert serve(dev)[0].sense[:18] == LBA_RANGE


def test_data_moves_through_several_iovecs(dev):
    payload = os.urandom(8 * BLOCK)
    dev.sim.queue(rw10(True, 100, 8), data_out=payload, split=[100, 2000, 1996])
    dev.sim.queue(rw10(False, 100, 8), data_in=len(payload), split=[1000, 7, 3089])
    done = serve(dev)
    assert [c.status for c in done] == [0, 0]
    assert done[1].data == payload


def test_batch_of_many_commands_is_one_kick(dev):
    for i in range(40):
        dev.sim.queue(rw10(True, i, 1), data_out=bytes([i]) * BLOCK)
    assert dev.sim.kicks() == 0
    done = serve(dev)
    assert len(done) == 40 and {c.status for c in done} == {0}
    assert dev.sim.kicks() == 1
    assert dev.read_file(39 * BLOCK, BLOCK) == bytes([39]) * BLOCK


def test_wrap_around_with_pad_entries(dev):
    """Entries of uneven size wrap the 8 KiB ring many times; the kernel pads at the end."""
    rnd = random.Random(7)
    expect = {}
    for round_ in range(60):
        for _ in range(rnd.randint(1, 12)):
            lba = rnd.randrange(dev.size // BLOCK - 4)
            data = os.urandom(BLOCK * rnd.randint(1, 4))
            # up to 8 iovecs: entries of 128..192 bytes, which do not tile the ring
            split = [BLOCK // 2] * (2 * len(data) // BLOCK) if rnd.random() < 0.5 else None
            dev.sim.queue(rw16(True, lba, len(data) // BLOCK), data_out=data, split=split)
            for i in range(len(data) // BLOCK):
                expect[lba + i] = data[i * BLOCK : (i + 1) * BLOCK]
        assert {c.status for c in serve(dev)} == {0}, round_
    assert dev.ring.stats()["pads"] > 0
    assert dev.sim.tail == dev.sim.head
    for lba, block in expect.items():
        assert dev.read_file(lba * BLOCK, BLOCK) == block


def test_tmr_entries_are_acknowledged(dev):
    a = dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    dev.sim.queue_tmr(L.TMR_ABORT_TASK, [a])
    dev.sim.queue(rw10(False, 1, 1), data_in=BLOCK)
    dev.sim.queue_tmr(L.TMR_LUN_RESET, [])
    done = serve(dev)
    assert [c.status for c in done] == [0, 0]
    assert dev.ring.stats()["tmrs"] == 2
    assert dev.sim.tail == dev.sim.head


def test_lba_out_of_range_including_overflow(dev):
    last = dev.size // BLOCK
    for cdb in (rw10(False, last, 1), rw10(False, last - 1, 2), rw16(False, 2**64 - 1, 2),
                rw16(True, 2**63, 2**31)):  # fmt: skip
        dev.sim.queue(cdb, data_in=2 * BLOCK)
    dev.sim.queue(rw10(False, last - 1, 1), data_in=BLOCK)
    done = serve(dev)
    assert [c.sense[:18] for c in done[:4]] == [LBA_RANGE] * 4
    assert done[4].status == 0


def test_bits_outside_the_usage_data_are_punted(dev):
    """RDPROTECT (and any bit the emulation refuses) goes to Python, which answers with its
    field pointer; the FUA write after it is served here."""
    dev.sim.queue(rw10(False, 0, 1, flags=0x20), data_in=BLOCK)
    dev.sim.queue(rw10(True, 0, 1, flags=0x08), data_out=b"x" * BLOCK)  # FUA: fine
    punts = dev.ring.process()
    assert len(punts) == 1 and dev.ring.cdb(punts[0])[1] == 0x20
    dev.ring.complete(punts[0], 2, INVALID_FIELD, None)
    dev.ring.commit()
    done = dev.sim.reap()
    assert done[0].status == 2 and done[0].sense[:18] == INVALID_FIELD
    assert done[1].status == 0 and dev.read_file(0, BLOCK) == b"x" * BLOCK
    assert dev.ring.stats()["flushes"] == 1


def test_read_past_end_of_backing_file_is_read_error(tmp_path):
    for kind in KINDS:
        d = make_device(kind, tmp_path)
        os.ftruncate(d.fd, 4 * BLOCK)  # the device claims more than the file holds
        d.sim.queue(rw10(False, 10, 1), data_in=BLOCK)
        assert serve(d)[0].sense[:18] == READ_ERROR
        close_device(d)


# -- PR verdict -------------------------------------------------------------------------


def test_verdict_gates_reads_and_writes(dev):
    os.pwrite(dev.fd, b"old" * 100, 0)
    dev.ring.verdict = 1  # reads only
    dev.sim.queue(rw10(True, 0, 1), data_out=b"new" + bytes(BLOCK - 3))
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    done = serve(dev)
    assert done[0].status == 0x18
    assert done[1].status == 0 and done[1].data.startswith(b"oldold")
    dev.ring.verdict = 0
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    assert serve(dev)[0].status == 0x18
    assert dev.read_file(0, 3) == b"old"
    assert dev.ring.stats()["conflicts"] == 2


def test_unit_attention_bit_punts_everything_and_ends_the_batch(dev):
    dev.ring.verdict = 7
    first = dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    dev.sim.queue(rw10(False, 1, 1), data_in=BLOCK)
    punts = dev.ring.process()
    assert len(punts) == 1
    assert dev.ring.cdb(punts[0]) == rw10(False, 0, 1)
    dev.ring.complete(punts[0], 2, fixed_sense(6, 0x2A, 3), None)
    dev.ring.verdict = 3
    dev.ring.commit()
    assert dev.ring.process() == []
    done = dev.sim.reap()
    assert [c.cmd_id for c in done] == [first, first + 1]
    assert done[0].sense[:18] == fixed_sense(6, 0x2A, 3) and done[1].status == 0


# -- punting ----------------------------------------------------------------------------


def test_unknown_opcodes_are_punted_in_order(dev):
    dev.sim.queue(bytes(6))  # TEST UNIT READY
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    dev.sim.queue(b"\xc0" + bytes(9))  # vendor specific
    punts = dev.ring.process()
    assert len(punts) == 2
    with pytest.raises(RingError) as err:
        dev.ring.process()
    assert err.value.code == ERR_PENDING
    with pytest.raises(RingError):
        dev.ring.commit()
    assert dev.ring.cdb(punts[1])[0] == 0xC0
    for p in punts:
        dev.ring.complete(p, 0, None, None)
    with pytest.raises(RingError) as err:
        dev.ring.complete(punts[0], 0, None, None)
    assert err.value.code == ERR_NOT_CMD
    dev.ring.commit()
    assert [c.status for c in dev.sim.reap()] == [0, 0, 0]
    assert dev.sim.kicks() == 1


def test_pr_out_ends_the_batch(dev):
    """A WRITE queued behind a PR OUT is checked against the verdict the PR OUT leaves."""
    pr_out = bytes([0x5F, 1, 1, 0, 0, 0, 0, 0, 24, 0])
    dev.sim.queue(pr_out, data_out=bytes(24))
    dev.sim.queue(rw10(True, 0, 1), data_out=bytes(BLOCK))
    punts = dev.ring.process()
    assert len(punts) == 1
    assert dev.ring.data_out(punts[0]) == bytes(24)
    dev.ring.complete(punts[0], 0, None, None)
    dev.ring.verdict = 1  # the reservation now fences our writes
    dev.ring.commit()
    assert [c.status for c in serve(dev)] == [0, 0x18]


def test_punt_array_limit_then_rest(dev):
    for _ in range(66):
        dev.sim.queue(bytes(6))
    first = dev.ring.process()
    assert len(first) == 64
    for p in first:
        dev.ring.complete(p, 0, None, None)
    dev.ring.commit()
    rest = dev.ring.process()
    assert len(rest) == 2
    for p in rest:
        dev.ring.complete(p, 0, None, None)
    dev.ring.commit()
    assert len(dev.sim.reap()) == 66


def test_data_in_shorter_than_buffer_sets_read_len(dev):
    dev.sim.queue(bytes([0x12, 0, 0, 0, 255, 0]), data_in=255, split=[100, 155])
    (p,) = dev.ring.process()
    assert dev.ring.complete(p, 0, None, b"A" * 120) == 120
    dev.ring.commit()
    (c,) = dev.sim.reap()
    assert c.read_len == 120 and c.data == b"A" * 120


def test_data_in_longer_than_buffer_is_cut(dev):
    dev.sim.queue(bytes([0x12, 0, 0, 0, 36, 0]), data_in=36)
    (p,) = dev.ring.process()
    assert dev.ring.complete(p, 0, None, b"B" * 100) == 36
    dev.ring.commit()
    (c,) = dev.sim.reap()
    assert c.read_len is None and c.data == b"B" * 36


def test_long_variable_length_cdb_is_punted_whole(dev):
    cdb = bytes([0x7F, 0, 0, 0, 0, 0, 0, 24]) + bytes(range(24))
    dev.sim.queue(cdb)
    (p,) = dev.ring.process()
    assert dev.ring.cdb(p) == cdb
    dev.ring.complete(p, 0, None, None)
    dev.ring.commit()


# -- malformed entries: an answer, never a wild access ----------------------------------


def _raw_cmd(dev, *, cdb_off=None, iovs=(), iov_cnt=None, length=None, cdb=None):
    """A CMD entry at cmd_head built by hand; returns its mapping offset."""
    sim = dev.sim
    length = length or L.cmd_entry_size(len(iovs), 16)
    ent = sim.cmdr_off + sim.head
    if cdb_off is None:
        cdb_off = ent + max(L.ENTRY_SIZE, L.REQ_IOV + 16 * len(iovs))
    raw = encode_cmd_entry(0x4242, cdb_off, list(iovs), length)
    if iov_cnt is not None:
        L.U32.pack_into(raw, L.REQ_IOV_CNT, iov_cnt)
    raw += bytes(length - len(raw))
    c = cdb or rw10(True, 0, 1)
    at = cdb_off - ent
    if 0 <= at <= length - len(c):
        raw[at : at + len(c)] = c
    return sim.queue_raw(bytes(raw), length)


def _status_sense(dev, ent):
    return dev.sim.mm[ent + L.RSP_SCSI_STATUS], bytes(dev.sim.mm[ent + 16 : ent + 34])


def test_cdb_outside_mapping(dev):
    for off in (dev.sim.map_size - 3, dev.sim.map_size, 2**64 - 4):
        ent = _raw_cmd(dev, cdb_off=off)
        serve(dev)
        assert _status_sense(dev, ent) == (2, INVALID_FIELD)


def test_iovec_outside_data_area_touches_nothing(dev):
    """A READ whose iovec points at the mailbox or the ring must not be carried out."""
    sim = dev.sim
    os.pwrite(dev.fd, b"\xee" * BLOCK, 0)

    def masked(ent):  # the mapping minus what completion legitimately writes
        b = bytearray(sim.mm)
        b[L.MB_CMD_TAIL : L.MB_CMD_TAIL + 4] = bytes(4)
        b[ent : ent + 128] = bytes(128)
        return bytes(b)

    for base, n in ((0, BLOCK), (sim.cmdr_off, BLOCK), (sim.map_size - 100, BLOCK),
                    (sim.data_off, 2**64 - 1), (2**64 - 8, 16)):  # fmt: skip
        ent = _raw_cmd(dev, iovs=[(base, n)], cdb=rw10(False, 0, 1))
        before = masked(ent)
        serve(dev)
        assert _status_sense(dev, ent) == (2, INTERNAL)
        assert masked(ent) == before


def test_bad_iovec_after_good_one_transfers_nothing(dev):
    sim = dev.sim
    ent = _raw_cmd(dev, iovs=[(sim.data_off, BLOCK), (0, BLOCK)], cdb=rw10(True, 0, 2))
    sim.mm[sim.data_off : sim.data_off + BLOCK] = b"Z" * BLOCK
    serve(dev)
    assert _status_sense(dev, ent) == (2, INTERNAL)
    assert dev.read_file(0, BLOCK) == bytes(BLOCK)


def test_huge_iov_count(dev):
    for cnt in (3, 2**31, 2**32 - 1):
        ent = _raw_cmd(dev, iovs=[(dev.sim.data_off, BLOCK)], iov_cnt=cnt)
        serve(dev)
        assert _status_sense(dev, ent) == (2, INTERNAL)
    assert dev.ring.stats()["bad"] == 3


@pytest.mark.parametrize(
    "len_op, advance, code",
    [
        (0 | L.OP_CMD, 128, ERR_ENTRY),  # length 0
        (0 | L.OP_PAD, 128, ERR_ENTRY),
        (256 | L.OP_CMD, 128, ERR_ENTRY),  # longer than what cmd_head covers
        (0x10000 | L.OP_CMD, 128, ERR_ENTRY),  # beyond the ring
        (64 | L.OP_CMD, 64, ERR_ENTRY),  # a CMD too short for its own response
        (128 | 3, 128, ERR_ENTRY),  # unknown op (what a misaligned length looks like)
        (128 | 7, 128, ERR_ENTRY),
    ],
)
def test_corrupt_entry_header_stops_the_loop(dev, len_op, advance, code):
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    good_tail = dev.sim.head
    dev.sim.queue_raw(struct.pack("<I", len_op) + bytes(124), advance)
    with pytest.raises(RingError) as err:
        dev.ring.process()
    assert err.value.code == code
    assert dev.sim.tail == good_tail  # the good command before it was published
    assert dev.sim.reap()[0].status == 0
    with pytest.raises(RingError):  # and it stays stopped, it does not spin
        dev.ring.process()


@pytest.mark.parametrize("head", [4, 8192, 2**32 - 8])
def test_bad_cmd_head(dev, head):
    L.U32.pack_into(dev.sim.mm, L.MB_CMD_HEAD, head)
    with pytest.raises(RingError) as err:
        dev.ring.process()
    assert err.value.code == ERR_HEAD


def test_bad_mailbox_is_refused(tmp_path):
    from tcmu_pr.ring.simulator import RingSimulator

    for kind in KINDS:
        for field, value in ((L.MB_VERSION, 1), (L.MB_CMDR_OFF, 8), (L.MB_CMDR_SIZE, 2**31)):
            sim = RingSimulator(cmdr_size=4096, data_size=4096)
            packer = L.U16 if field == L.MB_VERSION else L.U32
            packer.pack_into(sim.mm, field, value)
            fd = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT, 0o600)
            with pytest.raises(RingError):
                if kind.startswith("native"):
                    from tcmu_pr.ring.native import NativeRing

                    NativeRing(sim.mm, sim.kick_fd, fd, 4096, 512, deferred=kind != "native")
                else:
                    from tcmu_pr.ring.pyloop import PyRing

                    PyRing(sim.mm, sim.kick_fd, fd, 4096, 512)
            os.close(fd)
            sim.close()


# -- the two loops agree ----------------------------------------------------------------


def _random_workload(dev, rnd):
    """Queue a random mix of good, odd and malformed commands on dev."""
    sim = dev.sim
    nblocks = dev.size // BLOCK
    for _ in range(rnd.randint(1, 20)):
        kind = rnd.random()
        build = rnd.choice((rw6, rw10, rw12, rw16))
        write = rnd.random() < 0.5
        blocks = rnd.randint(1, 8)
        lba = rnd.randrange(nblocks + 4) if build is not rw6 else rnd.randrange(2048)
        if kind < 0.7:
            n = blocks * BLOCK
            sim.queue(build(write, lba, blocks), data_out=rnd.randbytes(n) if write else b"",
                      data_in=0 if write else n)  # fmt: skip
        elif kind < 0.8:
            _raw_cmd(dev, cdb_off=rnd.choice((sim.map_size - 2, 2**40)))
        elif kind < 0.9:
            _raw_cmd(dev, iovs=[(rnd.choice((0, sim.map_size, sim.data_off)), BLOCK * 4)],
                     iov_cnt=rnd.choice((None, 9, 2**30)), cdb=build(write, lba, 1))  # fmt: skip
        else:
            sim.queue_tmr(L.TMR_ABORT_TASK, [1, 2, 3])


def test_native_and_python_answer_alike(tmp_path):
    devs = [make_device(k, tmp_path, cmdr_size=4096, data_size=128 * 1024) for k in KINDS]
    try:
        for seed in range(40):
            for d in devs:
                d.ring.verdict = random.Random(seed).choice((3, 3, 1, 2, 0))
                _random_workload(d, random.Random(seed))
            answers = []
            for d in devs:
                assert d.ring.process() == []
                answers.append([(c.status, c.sense[:18] if c.status == 2 else b"", c.data)
                                for c in d.sim.reap()])  # fmt: skip
            # data-in of GOOD reads comes from the backing files, which got the same writes
            assert all(a == answers[0] for a in answers), seed
        stats = [d.ring.stats() for d in devs]
        assert [st.pop("submitted") > 0 for st in stats] == [False, True, False]
        assert all(st == stats[-1] for st in stats)
        assert all(d.read_file(0, d.size) == devs[0].read_file(0, d.size) for d in devs)
    finally:
        for d in devs:
            close_device(d)
