"""Nexus mode of the ring loops: verdicts per nexus handle (the tcmu-pr kernel patch).

With ``nexus_handles=1`` the patched target_core_user puts a handle naming the I_T nexus in
each CMD entry (KFLAG_NEXUS, u64 at byte 32).  One device then serves every nexus of a LU,
and the fast path checks each READ/WRITE against its own handle's slot.  Every test runs on
both loops (and the native submit/reap path); the last one feeds all three the same random
mix of handles, slots and malformed entries and compares every answer.
"""

from __future__ import annotations

import os
import random

import pytest
from ring_support import BLOCK, close_device, make_device, rw10
from test_ring_loop import _random_workload

from tcmu_pr.ring import layout as L
from tcmu_pr.ring.abi import NEXUS_SLOTS, VERDICT_READ, VERDICT_UA, VERDICT_WRITE
from tcmu_pr.ring.simulator import NEXUS_FLAGS

KINDS = ["native", "native-deferred", "python"]
RW = VERDICT_READ | VERDICT_WRITE
TUR = bytes(6)


@pytest.fixture(params=KINDS)
def dev(request, tmp_path):
    d = make_device(request.param, tmp_path, cmdr_size=8192, data_size=256 * 1024,
                    flags=NEXUS_FLAGS)  # fmt: skip
    yield d
    close_device(d)


def _read(dev, handle, lba=0, **kw):
    return dev.sim.queue(rw10(False, lba, 1), data_in=BLOCK, nexus=handle, **kw)


def _write(dev, handle, lba=0):
    return dev.sim.queue(rw10(True, lba, 1), data_out=bytes(BLOCK), nexus=handle)


def _answer_all(dev, punts, status=0):
    for p in punts:
        dev.ring.complete(p, status, None, None)
    dev.ring.commit()


def test_simulator_writes_entries_as_the_patched_kernel(dev):
    assert L.U16.unpack_from(dev.sim.mm, L.MB_FLAGS)[0] & L.FLAG_CAP_NEXUS
    dev.ring.nexus_mode(True)
    _read(dev, 7, new_session=True)
    [punt] = dev.ring.process()
    assert dev.sim.mm[punt + L.HDR_KFLAGS] == L.KFLAG_NEXUS | L.KFLAG_NEXUS_NEW_SESSION
    assert L.U64.unpack_from(dev.sim.mm, punt + L.REQ_NEXUS_HANDLE)[0] == 7
    assert dev.ring.nexus(punt) == 7
    _answer_all(dev, [punt])


def test_without_nexus_mode_handles_are_ignored(dev):
    dev.ring.verdict = VERDICT_READ
    _read(dev, 5)
    _write(dev, 5)
    done = dev.sim.reap() if dev.ring.process() == [] else None
    assert [c.status for c in done] == [0, 0x18]


def test_unresolved_handle_is_punted_and_ends_the_batch(dev):
    dev.ring.nexus_mode(True)
    first = _read(dev, 3)
    _read(dev, 3, lba=1)
    punts = dev.ring.process()
    assert len(punts) == 1 and dev.ring.nexus(punts[0]) == 3
    dev.ring.complete(punts[0], 0, None, None)
    dev.ring.publish_nexus(3, RW)  # Python resolved it
    dev.ring.commit()
    assert dev.ring.process() == []
    assert [(c.cmd_id, c.status) for c in dev.sim.reap()] == [(first, 0), (first + 1, 0)]
    assert dev.ring.stats()["fast"] == 1


@pytest.mark.parametrize("handle", [None, 0, NEXUS_SLOTS, 2**40, 2**64 - 1])
def test_entry_without_usable_handle_is_punted_batch_goes_on(dev, handle):
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(1, RW)
    _read(dev, handle)
    _read(dev, 1)
    _read(dev, handle)
    punts = dev.ring.process()
    assert len(punts) == 2  # the handle-1 read between them was served
    expected = 0 if handle is None else handle & (2**63 - 1)
    assert [dev.ring.nexus(p) for p in punts] == [expected, expected]
    _answer_all(dev, punts)
    assert [c.status for c in dev.sim.reap()] == [0, 0, 0]


def test_verdict_per_handle(dev):
    os.pwrite(dev.fd, b"old" * 100, 0)
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(1, VERDICT_READ)  # e.g. registrants only, 1 not registered
    dev.ring.publish_nexus(2, RW)
    dev.ring.publish_nexus(3, 0)  # Exclusive Access, 3 not the holder
    _write(dev, 1)
    _read(dev, 1)
    _read(dev, 3)
    _write(dev, 2, lba=2)
    assert dev.ring.process() == []
    assert [c.status for c in dev.sim.reap()] == [0x18, 0, 0x18, 0]
    assert dev.read_file(0, 3) == b"old"
    assert dev.ring.stats()["conflicts"] == 2


def test_unit_attention_of_one_handle_leaves_the_others_fast(dev):
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(1, RW | VERDICT_UA)
    dev.ring.publish_nexus(2, RW)
    _read(dev, 2)
    _read(dev, 1)
    _read(dev, 2, lba=1)
    punts = dev.ring.process()
    assert [dev.ring.nexus(p) for p in punts] == [1]
    dev.ring.complete(punts[0], 2, None, None)
    dev.ring.publish_nexus(1, RW)
    dev.ring.commit()
    assert dev.ring.process() == []
    assert [c.status for c in dev.sim.reap()] == [0, 2, 0]


def test_turning_nexus_mode_off_forgets_every_slot(dev):
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(4, RW)
    dev.ring.nexus_mode(False)
    dev.ring.nexus_mode(True)
    _read(dev, 4)
    assert len(dev.ring.process()) == 1


def test_pr_out_of_a_handle_ends_the_batch(dev):
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(1, RW)
    dev.sim.queue(bytes([0x5F, 1, 1, 0, 0, 0, 0, 0, 24, 0]), data_out=bytes(24), nexus=1)
    _write(dev, 1)
    [punt] = dev.ring.process()
    dev.ring.complete(punt, 0, None, None)
    dev.ring.publish_nexus(1, VERDICT_READ)
    dev.ring.commit()
    assert dev.ring.process() == []
    assert [c.status for c in dev.sim.reap()] == [0, 0x18]


def test_new_session_entry_is_punted_with_its_flags_and_ends_the_batch(dev):
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(2, RW)
    _read(dev, 2, new_session=True)
    _read(dev, 2, lba=1)
    [punt] = dev.ring.process()
    assert dev.ring.kflags(punt) == L.KFLAG_NEXUS | L.KFLAG_NEXUS_NEW_SESSION
    _answer_all(dev, [punt])
    assert dev.ring.process() == []  # the next one of the session goes fast
    assert len(dev.sim.reap()) == 2


def test_publish_nexus_remembers_a_running_batch_for_drain(dev):
    dev.ring.nexus_mode(True)
    dev.ring.publish_nexus(1, RW)
    assert dev.ring.drain(1.0)  # nothing was running


def _nexus_workload(dev, rnd):
    """A random mix: good READ/WRITEs of random handles, malformed entries, TMRs."""
    sim = dev.sim
    for _ in range(rnd.randint(1, 12)):
        kind = rnd.random()
        handle = rnd.choice((None, 0, 1, 2, 3, 9, NEXUS_SLOTS, 2**63 + 1))
        write = rnd.random() < 0.5
        lba = rnd.randrange(dev.size // BLOCK + 2)
        if kind < 0.8:
            sim.queue(rw10(write, lba, 1), data_out=rnd.randbytes(BLOCK) if write else b"",
                      data_in=0 if write else BLOCK, nexus=handle,
                      new_session=handle is not None and rnd.random() < 0.1)  # fmt: skip
        elif kind < 0.9:
            sim.queue(TUR, nexus=handle)
        else:
            _random_workload(dev, rnd)


def test_native_and_python_answer_alike_in_nexus_mode(tmp_path):
    devs = [make_device(k, tmp_path, cmdr_size=8192, data_size=256 * 1024, flags=NEXUS_FLAGS)
            for k in KINDS]  # fmt: skip
    try:
        for d in devs:
            d.ring.nexus_mode(True)
        for seed in range(60):
            slots = random.Random(seed).sample(range(1, 10), 4)
            for d in devs:
                rnd = random.Random(seed)
                for h in slots:
                    d.ring.publish_nexus(h, rnd.choice((RW, RW, VERDICT_READ, VERDICT_WRITE, 0,
                                                        RW | VERDICT_UA)))  # fmt: skip
                _nexus_workload(d, random.Random(seed))
            answers = []
            for d in devs:
                seen = []
                while punts := d.ring.process():  # answer punts alike: status by handle
                    for p in punts:
                        h = d.ring.nexus(p)
                        seen.append((h, d.ring.kflags(p)))
                        d.ring.complete(p, 2 if h % 2 else 0, None, None)
                    d.ring.commit()
                answers.append((seen, [(c.status, c.sense[:18] if c.status == 2 else b"",
                                        c.data) for c in d.sim.reap()]))  # fmt: skip
            assert all(a == answers[0] for a in answers), seed
        stats = [d.ring.stats() for d in devs]
        assert [st.pop("submitted") > 0 for st in stats] == [False, True, False]
        assert all(st == stats[-1] for st in stats)
        assert stats[0]["fast"] and stats[0]["punted"] and stats[0]["conflicts"]
    finally:
        for d in devs:
            close_device(d)
