"""tcmu_ring_run: the native serve loop (wait, batches, kicks in C) against the simulator.

The simulator's wait fd is an eventfd (8-byte reads), which also checks that the event size
is a parameter and not uio's 4 bytes baked in.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from ring_support import BLOCK, close_device, make_device, rw10

from tcmu_pr import scsi
from tcmu_pr.ring.abi import VERDICT_READ
from tcmu_pr.ring.handler import RingHandler
from tcmu_pr.ring.loop import RingError
from tcmu_pr.ring.simulator import encode_cmd_entry


@pytest.fixture
def dev(tmp_path):
    d = make_device("native", tmp_path, cmdr_size=16384, data_size=256 * 1024)
    yield d
    close_device(d)


def _run(dev, timeout_ms=0):
    return dev.ring.run(dev.sim.notify_fd, dev.sim.event_size, timeout_ms)


def test_serves_queued_reads_and_writes_without_returning_punts(dev):
    payload = os.urandom(4 * BLOCK)
    dev.sim.queue(rw10(True, 8, 4), data_out=payload)
    dev.sim.queue(rw10(False, 8, 4), data_in=4 * BLOCK)
    assert _run(dev) == []
    done = dev.sim.reap()
    assert [c.status for c in done] == [scsi.GOOD, scsi.GOOD]
    assert done[1].data == payload == dev.read_file(8 * BLOCK, 4 * BLOCK)
    assert dev.sim.kicks() >= 1
    assert dev.ring.busy % 2 == 0


def test_commands_queued_while_waiting_are_served_in_c(dev):
    """Python is not involved between wake-ups: the commands a second thread queues during
    one call are all answered by the time it returns on its timeout."""

    def feeder():
        for i in range(20):
            time.sleep(0.005)
            dev.sim.queue(rw10(False, i, 1), data_in=BLOCK)

    t = threading.Thread(target=feeder)
    t0 = time.monotonic()
    t.start()
    assert _run(dev, 400) == []
    elapsed = time.monotonic() - t0
    t.join()
    assert _run(dev) == []  # whatever came after the deadline
    done = dev.sim.reap()
    assert len(done) == 20 and all(c.status == scsi.GOOD for c in done)
    assert 0.3 < elapsed < 2.0
    assert dev.ring.stats()["fast"] == 20


def test_timeout_returns_empty_and_busy_loop_still_returns(dev):
    t0 = time.monotonic()
    assert _run(dev, 50) == []
    assert 0.04 < time.monotonic() - t0 < 1.0
    stop = threading.Event()

    def flood():  # keep the ring busy: run must still come back on its deadline
        while not stop.is_set():
            try:
                dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
            except Exception:  # ring full: let the loop drain it
                time.sleep(0.001)
            dev.sim.reap()

    t = threading.Thread(target=flood)
    t.start()
    try:
        t0 = time.monotonic()
        assert _run(dev, 100) == []
        assert time.monotonic() - t0 < 1.5
    finally:
        stop.set()
        t.join()


def test_punts_come_back_to_python_and_the_loop_resumes(dev):
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    dev.sim.queue(b"\x12" + bytes(5), data_in=36)  # INQUIRY: punted
    dev.sim.queue(rw10(False, 1, 1), data_in=BLOCK)
    punts = _run(dev, 1000)
    assert len(punts) == 1
    assert dev.ring.cdb(punts[0])[0] == 0x12
    with pytest.raises(RingError):  # the batch is open until commit
        _run(dev)
    dev.ring.complete(punts[0], scsi.GOOD, None, b"x" * 36)
    dev.ring.commit()
    assert _run(dev) == []
    assert [c.status for c in dev.sim.reap()] == [0, 0, 0]


def test_handler_uses_the_native_loop_and_sees_its_stop_flag(dev):
    h = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size)
    stop = threading.Event()
    t = threading.Thread(target=h.run, args=(stop.is_set, 0.05))
    t.start()
    dev.sim.queue(b"\x00" * 6)  # TEST UNIT READY: punted, answered by the default emulation
    dev.sim.queue(rw10(True, 2, 1), data_out=b"w" * BLOCK)
    deadline = time.monotonic() + 5
    done = []
    while len(done) < 2 and time.monotonic() < deadline:
        done += dev.sim.reap()
        time.sleep(0.01)
    stop.set()
    t.join(timeout=2)
    assert not t.is_alive()
    assert [c.status for c in done] == [0, 0]
    assert dev.read_file(2 * BLOCK, BLOCK) == b"w" * BLOCK


@pytest.mark.parametrize("size", [0, 1, 2, 3, 5, 16])
def test_event_size_is_checked(dev, size):
    with pytest.raises(OSError) as exc:
        dev.ring.run(dev.sim.notify_fd, size, 0)
    assert exc.value.errno == errno.EINVAL


def test_a_failing_fd_is_an_oserror(dev):
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(OSError) as exc:  # end of file: no spinning until the deadline
        dev.ring.run(r, 4, 1000)
    assert exc.value.errno == errno.EPIPE
    os.close(r)
    with pytest.raises(OSError) as exc:  # a closed fd: POLLNVAL, read EBADF
        dev.ring.run(r, 4, 20)
    assert exc.value.errno == errno.EBADF


def test_a_corrupt_entry_stops_the_loop_with_ring_error(dev):
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    bad = encode_cmd_entry(99, 0, [], 112)
    bad[0:4] = (112 | 5).to_bytes(4, "little")  # unknown op
    dev.sim.queue_raw(bytes(bad), 112)
    with pytest.raises(RingError):
        _run(dev, 1000)
    assert [c.status for c in dev.sim.reap()] == [0]  # the good one before it was published


def test_drain_waits_for_the_batch_running_when_the_verdict_was_published(dev):
    dev.ring.publish(VERDICT_READ)
    assert dev.ring.drain(0.01) is True  # nothing was running
    dev.ring._ctx.busy = 7  # as if C were inside a batch that read the old verdict
    dev.ring.publish(0)
    assert dev.ring.drain(0.05) is False
    ended = threading.Event()

    def end_batch() -> None:
        dev.ring._ctx.busy = 8
        ended.set()

    threading.Timer(0.05, end_batch).start()
    assert dev.ring.drain(10.0) is True
    assert ended.is_set()  # returned because the batch ended, not before
    dev.ring._ctx.busy = 9  # a later batch reads the new verdict: nothing to wait for
    assert dev.ring.drain(0.01) is True


@pytest.mark.parametrize("nonblocking", [True, False])
def test_blocking_and_nonblocking_wait_fds(tmp_path, nonblocking):
    """A blocking fd is polled before every read (never blocks past the timeout); a
    non-blocking one is read first. Both serve what is queued and time out when idle."""
    d = make_device("native", tmp_path, cmdr_size=16384, data_size=256 * 1024)
    try:
        os.set_blocking(d.sim.notify_fd, not nonblocking)
        d.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
        t0 = time.monotonic()
        assert d.ring.run(d.sim.notify_fd, 8, 100) == []
        assert 0.05 < time.monotonic() - t0 < 1.5
        assert [c.status for c in d.sim.reap()] == [scsi.GOOD]
    finally:
        close_device(d)
