"""RingHandler: punted commands, unit attentions, and two gateways sharing one PR store."""

from __future__ import annotations

import pytest
from ring_support import BLOCK, close_device, fixed_sense, make_device, rw10

from tcmu_pr import scsi
from tcmu_pr.ring.handler import PRHooks, RingHandler, default_emulate

KINDS = ["native", "native-deferred", "python"]
UA_SENSE = fixed_sense(6, 0x2A, 0x03)


@pytest.fixture(params=KINDS)
def dev(request, tmp_path):
    d = make_device(request.param, tmp_path, cmdr_size=16384, data_size=256 * 1024)
    yield d
    close_device(d)


def test_default_emulation():
    assert default_emulate(bytes(6), b"") == (0, None, None)
    status, sense, _ = default_emulate(b"\xc1" + bytes(9), b"")
    assert status == 2 and sense == scsi.INVALID_COMMAND_OPERATION_CODE.to_bytes()
    assert default_emulate(b"", b"")[0] == 2


def test_wait_and_serve(dev):
    h = RingHandler(dev.ring, dev.sim.notify_fd, event_size=dev.sim.event_size)
    assert h.wait(0) is False
    dev.sim.queue(bytes(6))
    dev.sim.queue(b"\xc1" + bytes(9))
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    assert h.wait(0) is True
    assert h.serve() == 2
    done = dev.sim.reap()
    assert [c.status for c in done] == [0, 2, 0]
    assert done[1].sense[:18] == scsi.INVALID_COMMAND_OPERATION_CODE.to_bytes()


def test_emulate_gets_cdb_and_data_out_and_returns_data_in(dev):
    seen = []

    def emulate(cdb, data_out):
        seen.append((cdb, data_out))
        return 0, None, b"inquiry-data"

    h = RingHandler(dev.ring, dev.sim.notify_fd, emulate=emulate)
    dev.sim.queue(bytes([0x15, 0x10, 0, 0, 12, 0]), data_out=b"mode-select!")  # MODE SELECT
    dev.sim.queue(bytes([0x12, 0, 0, 0, 96, 0]), data_in=96)  # INQUIRY: nothing gathered
    h.serve()
    assert seen == [(bytes([0x15, 0x10, 0, 0, 12, 0]), b"mode-select!"),
                    (bytes([0x12, 0, 0, 0, 96, 0]), b"")]  # fmt: skip
    done = dev.sim.reap()
    assert done[1].data == b"inquiry-data" and done[1].read_len == 12


def test_a_failing_hook_still_answers(dev):
    def emulate(cdb, data_out):
        raise RuntimeError("bug")

    h = RingHandler(dev.ring, dev.sim.notify_fd, emulate=emulate)
    dev.sim.queue(bytes(6))
    h.serve()
    (c,) = dev.sim.reap()
    assert c.status == 2 and c.sense[:18] == fixed_sense(4, 0x44, 0)


def test_conflict_check_for_punted_commands(dev):
    hooks = PRHooks(allowed=lambda cdb: cdb[0] != 0x35)  # SYNCHRONIZE CACHE(10) conflicts
    h = RingHandler(dev.ring, dev.sim.notify_fd, pr=hooks)
    dev.sim.queue(bytes([0x35]) + bytes(9))
    dev.sim.queue(bytes(6))
    h.serve()
    assert [c.status for c in dev.sim.reap()] == [0x18, 0]


def test_unit_attention_is_delivered_once_then_fast_path_resumes(dev):
    pending = [UA_SENSE]
    hooks = PRHooks(
        take_unit_attention=lambda: pending.pop() if pending else None,
        verdict=lambda: 3 | (4 if pending else 0),
    )
    h = RingHandler(dev.ring, dev.sim.notify_fd, pr=hooks)
    dev.sim.queue(bytes([0x12, 0, 0, 0, 36, 0]), data_in=36)  # INQUIRY: no UA reported
    dev.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
    dev.sim.queue(rw10(False, 1, 1), data_in=BLOCK)
    assert h.serve() == 2  # INQUIRY and the first READ; the second READ ran natively
    done = dev.sim.reap()
    assert done[0].sense[:18] == scsi.INVALID_COMMAND_OPERATION_CODE.to_bytes()
    assert done[1].status == 2 and done[1].sense[:18] == UA_SENSE
    assert done[2].status == 0
    assert dev.ring.stats()["fast"] == 1


def test_pr_commands_go_to_the_pr_hook(dev):
    calls = []

    def execute(cdb, data):
        calls.append((cdb[0], data))
        return 0, None, b"\x00\x00\x00\x01\x00\x00\x00\x00" if cdb[0] == 0x5E else None

    h = RingHandler(dev.ring, dev.sim.notify_fd, pr=PRHooks(execute=execute))
    dev.sim.queue(bytes([0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]), data_out=b"k" * 24)
    dev.sim.queue(bytes([0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0]), data_in=64)
    dev.sim.queue(bytes([0x16, 0, 0, 0, 0, 0]))
    h.serve()
    assert calls == [(0x5F, b"k" * 24), (0x5E, b""), (0x16, b"")]
    done = dev.sim.reap()
    assert done[1].read_len == 8


# -- two gateways, one image, the real PR stack -----------------------------------------


def test_reservation_on_one_gateway_fences_the_other(tmp_path):
    """Gateway A registers and reserves (Write Exclusive) through its ring; gateway B,
    another ring on the same image, then gets RESERVATION CONFLICT for WRITE from its native
    fast path, while its READs and A's WRITEs still run."""
    from tcmu_pr.backends.file import FileSlot
    from tcmu_pr.engine import conflict
    from tcmu_pr.engine.pr_cdb import REGISTER, RESERVE, pr_out
    from tcmu_pr.pr import codec
    from tcmu_pr.pr.nexus import Nexus
    from tcmu_pr.pr.state import PRState
    from tcmu_pr.ring import abi
    from tcmu_pr.unit.apply import apply

    image = tmp_path / "lun.img"
    image.write_bytes(bytes(1 << 20))
    slot = FileSlot(image)

    def hooks(nexus):
        def state():
            blob = slot.read()
            return codec.decode(blob) if blob else PRState()

        def execute(cdb, data):
            out = apply(slot, nexus, cdb, data)
            return out.status, out.sense, out.data

        return PRHooks(
            execute=execute,
            allowed=lambda cdb: conflict.allowed(state(), nexus, cdb),
            verdict=lambda: conflict.verdict(state(), nexus),
        )

    a_nexus = Nexus.make("iqn.2026-01.org.example:a", "iqn.2003-01.org.linux-iscsi.gw1:lun")
    b_nexus = Nexus.make("iqn.2026-01.org.example:b", "iqn.2003-01.org.linux-iscsi.gw2:lun")
    gws = []
    for nexus in (a_nexus, b_nexus):
        d = make_device("native", tmp_path, image=image, cmdr_size=8192)
        gws.append((d, RingHandler(d.ring, d.sim.notify_fd, pr=hooks(nexus))))
    (a, ha), (b, hb) = gws
    try:
        cdb, params = pr_out(REGISTER, sa_key=0xA1)
        a.sim.queue(cdb, data_out=params)
        cdb, params = pr_out(RESERVE, key=0xA1, pr_type=1)  # Write Exclusive
        a.sim.queue(cdb, data_out=params)
        a.sim.queue(rw10(True, 0, 1), data_out=b"A" * BLOCK)
        ha.serve()
        assert [c.status for c in a.sim.reap()] == [0, 0, 0]
        hb.refresh_verdict()  # the daemon does this when the shared state changes
        assert b.ring.verdict == abi.VERDICT_READ
        b.sim.queue(rw10(True, 0, 1), data_out=b"B" * BLOCK)
        b.sim.queue(rw10(False, 0, 1), data_in=BLOCK)
        hb.serve()
        done = b.sim.reap()
        assert done[0].status == scsi.RESERVATION_CONFLICT
        assert done[1].status == 0 and done[1].data == b"A" * BLOCK
        assert b.ring.stats()["conflicts"] == 1 and b.ring.stats()["punted"] == 0
    finally:
        for d, _ in gws:
            close_device(d)
        slot.close()

