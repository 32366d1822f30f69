"""The whole daemon against a kernel played by tests: netlink peer + simulated rings.

Two TCMU devices of one LU (one file image), each serving its own I_T nexus, as LIO with
pgr_support=0 would create them; PR commands through one device must govern the other
device's native fast path, and unit attentions must reach the preempted nexus.
"""

from __future__ import annotations

import errno

import pytest
from daemon_support import NEXUS_A, NEXUS_B, DaemonRig, run_cmd, write_topology
from pr_cdbs import basic_list, prout, sense_code
from ring_support import rw10

from tcmu_pr import scsi
from tcmu_pr.backends import open_store
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.engine.cdb import PREEMPT, PREEMPT_AND_ABORT, REGISTER, RESERVE
from tcmu_pr.netlink.family import Attr
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.ring.abi import VERDICT_UA
from tcmu_pr.unit.lu import LogicalUnit

KEY_A, KEY_B = 0xAAAA, 0xBBBB
WE = 0x1  # WRITE EXCLUSIVE: only the holder writes, everyone reads
BLOCK = 512
TUR = bytes(6)
READ_CAPACITY_10 = bytes([0x25]) + bytes(9)
UA_REGISTRATIONS_PREEMPTED = (scsi.UNIT_ATTENTION, 0x2A, 0x05)
NO_NEXUS = (scsi.HARDWARE_ERROR, 0x08, 0x00)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu0.img"
    path.write_bytes(bytes(1 << 20))
    return path


@pytest.fixture
def cfg(tmp_path, image):
    write_topology(
        tmp_path / "topology.json",
        {
            "user_1/lu0_a": {"lu": "lu0", "store": f"file:{image}", "nexus": NEXUS_A, "rtpi": 1},
            "user_1/lu0_b": {"lu": "lu0", "store": f"file:{image}", "nexus": NEXUS_B, "rtpi": 2},
        },
    )
    return DaemonConfig(topology=tmp_path / "topology.json", dbus=False, ring_poll_ms=50)


@pytest.fixture
def rig(cfg, image):
    with DaemonRig(cfg) as rig:
        assert rig.peer.add_device(1, f"tcmu-pr/file:{image}", name="lu0_a", minor=0) == 0
        assert rig.peer.add_device(2, f"tcmu-pr/file:{image}", name="lu0_b", minor=1) == 0
        yield rig


def pr(sim, sa: int, params: bytes, type_: int = 0):
    cdb, data = prout(sa, params, type_)
    return run_cmd(sim, cdb, data_out=data)


def stats(rig, device_id: int) -> dict[str, int]:
    return rig.daemon.manager.devices[device_id]._ring.stats()


def elsewhere(image, nexus: Nexus, *commands: tuple[bytes, bytes]) -> None:
    """Run PR commands as another gateway would (``tcmu-pr pr exec``): each must be GOOD."""
    store = open_store(StoreSpec.file(image))
    try:
        lu = LogicalUnit(store, serve=False)
        for cdb, data in commands:
            assert lu.execute(nexus, cdb, data).status == scsi.GOOD
    finally:
        store.close()


def test_reservation_on_one_device_fences_the_other_in_the_native_loop(rig, image):
    a, b = rig.sim("lu0_a"), rig.sim("lu0_b")
    assert pr(a, REGISTER, basic_list(0, KEY_A)).status == scsi.GOOD
    assert pr(b, REGISTER, basic_list(0, KEY_B)).status == scsi.GOOD
    assert pr(a, RESERVE, basic_list(KEY_A), WE).status == scsi.GOOD

    before = stats(rig, 2)
    done = run_cmd(b, rw10(True, 0, 1), data_out=b"b" * BLOCK)
    assert done.status == scsi.RESERVATION_CONFLICT
    after = stats(rig, 2)
    # Answered by the C loop from the published verdict, not punted to Python.
    assert after["conflicts"] == before["conflicts"] + 1
    assert after["punted"] == before["punted"]
    assert image.read_bytes()[:BLOCK] == bytes(BLOCK)

    assert run_cmd(a, rw10(True, 0, 1), data_out=b"a" * BLOCK).status == scsi.GOOD
    assert image.read_bytes()[:BLOCK] == b"a" * BLOCK
    read = run_cmd(b, rw10(False, 0, 1), data_in=BLOCK)  # WRITE EXCLUSIVE: reads allowed
    assert (read.status, read.data) == (scsi.GOOD, b"a" * BLOCK)


@pytest.mark.parametrize("action", [PREEMPT, PREEMPT_AND_ABORT])
def test_preempt_delivers_a_unit_attention_to_the_preempted_nexus(rig, image, action):
    a, b = rig.sim("lu0_a"), rig.sim("lu0_b")
    pr(a, REGISTER, basic_list(0, KEY_A))
    pr(b, REGISTER, basic_list(0, KEY_B))
    pr(a, RESERVE, basic_list(KEY_A), WE)

    assert pr(b, action, basic_list(KEY_B, KEY_A), WE).status == scsi.GOOD
    # Published before the PREEMPT's status reached the kernel.
    assert rig.daemon.manager.devices[1]._verdict & VERDICT_UA

    first = run_cmd(a, rw10(True, 0, 1), data_out=b"a" * BLOCK)
    assert first.status == scsi.CHECK_CONDITION
    assert sense_code(first.sense) == UA_REGISTRATIONS_PREEMPTED
    assert not rig.daemon.manager.devices[1]._verdict & VERDICT_UA  # delivered once
    again = run_cmd(a, rw10(True, 0, 1), data_out=b"a" * BLOCK)
    assert again.status == scsi.RESERVATION_CONFLICT
    assert image.read_bytes()[:BLOCK] == bytes(BLOCK)
    assert run_cmd(b, rw10(True, 0, 1), data_out=b"b" * BLOCK).status == scsi.GOOD


def test_a_change_by_another_gateway_is_in_force_when_it_returns(rig, image):
    a, b = rig.sim("lu0_a"), rig.sim("lu0_b")
    pr(b, REGISTER, basic_list(0, KEY_B))
    handled = rig.daemon.manager.lus[StoreSpec.file(image)].store.peers.handled
    # A gateway elsewhere registers and reserves for C.  Its GOOD means this daemon already
    # applied the change: no waiting, no poll interval, the very next command is refused.
    other = Nexus.parse("iqn.1994-05.com.redhat:client-c,i,0x1,iqn.2003-01.org.gw2:c,t,0x1")
    elsewhere(image, other, prout(REGISTER, basic_list(0, 0xC)),
              prout(RESERVE, basic_list(0xC), WE))  # fmt: skip
    assert rig.daemon.manager.devices[2]._verdict & 2 == 0
    assert run_cmd(b, rw10(True, 0, 1), data_out=b"b" * BLOCK).status == scsi.RESERVATION_CONFLICT
    assert run_cmd(a, rw10(True, 0, 1), data_out=b"a" * BLOCK).status == scsi.RESERVATION_CONFLICT
    assert rig.daemon.manager.lus[StoreSpec.file(image)].store.peers.handled == handled + 2


def test_device_without_nexus_refuses_pr_and_runs_as_unregistered(cfg, image, tmp_path):
    other = tmp_path / "lu1.img"
    other.write_bytes(bytes(1 << 20))
    with DaemonRig(cfg) as rig:
        assert rig.peer.add_device(3, f"tcmu-pr/file:{other}", name="lu1_x") == 0
        x = rig.sim("lu1_x")
        done = pr(x, REGISTER, basic_list(0, KEY_A))
        assert (done.status, sense_code(done.sense)) == (scsi.CHECK_CONDITION, NO_NEXUS)
        assert run_cmd(x, rw10(True, 0, 1), data_out=b"x" * BLOCK).status == scsi.GOOD
        assert _reported_opcodes(x) & {0x5E, 0x5F, 0x16, 0x17, 0x56, 0x57} == set()
        # Once someone holds a reservation, the unknown nexus is a non-holder.
        holder = Nexus.parse(NEXUS_A)
        elsewhere(other, holder, prout(REGISTER, basic_list(0, KEY_A)),
                  prout(RESERVE, basic_list(KEY_A), WE))  # fmt: skip
        done = run_cmd(x, rw10(True, 0, 1), data_out=b"y" * BLOCK)
        assert done.status == scsi.RESERVATION_CONFLICT


def test_dev_config_nexus_disagreeing_with_topology_is_refused(rig, image):
    config = f"tcmu-pr/file:{image};nexus={NEXUS_B}"
    assert rig.peer.add_device(5, config, name="lu0_a", minor=5) == -errno.EINVAL
    assert 5 not in rig.daemon.manager.devices


def test_reconfig_size_and_remove(rig, image):
    a = rig.sim("lu0_a")
    assert rig.peer.reconfig(1, {Attr.DEV_SIZE: 64 * BLOCK}) == 0
    cap = run_cmd(a, READ_CAPACITY_10, data_in=8)
    assert int.from_bytes(cap.data[:4], "big") == 63  # last LBA
    assert run_cmd(a, rw10(False, 64, 1), data_in=BLOCK).status == scsi.CHECK_CONDITION
    assert rig.peer.reconfig(1, {Attr.DEV_SIZE: 4 << 20}) == -errno.EINVAL  # file is 1 MiB
    assert rig.peer.reconfig(1, {Attr.WRITECACHE: 0}) == 0
    assert run_cmd(a, TUR).status == scsi.GOOD

    manager = rig.daemon.manager
    assert rig.peer.remove_device(1) == 0
    assert 1 not in manager.devices and "lu0_a" in rig.rings.closed
    assert len(manager.lus) == 1  # device 2 still serves the LU
    assert rig.peer.remove_device(2) == 0
    assert manager.devices == {} and manager.lus == {}
    assert rig.peer.remove_device(2) == -errno.ENODEV


def test_punted_sbc_commands_through_the_daemon(rig, image):
    """COMPARE AND WRITE, VERIFY and ORWRITE reach the emulator through the daemon's ring
    handler (the only route they have), with the emulator's limits: NUMBER OF LOGICAL
    BLOCKS above the Block Limits MAXIMUM COMPARE AND WRITE LENGTH (1) is INVALID FIELD
    IN CDB and changes nothing."""
    a = rig.sim("lu0_a")
    vpd = run_cmd(a, bytes([0x12, 1, 0xB0, 0, 64, 0]), data_in=64)
    assert vpd.status == scsi.GOOD and vpd.data[5] == 1

    def caw(blocks: int) -> bytes:
        return bytes([0x89, 0]) + bytes(8) + bytes([0, 0, 0, blocks, 0, 0])

    two = run_cmd(a, caw(2), data_out=bytes(2 * BLOCK) + b"x" * 2 * BLOCK)
    assert (two.status, sense_code(two.sense)) == (scsi.CHECK_CONDITION, (0x5, 0x24, 0x00))
    assert image.read_bytes()[: 2 * BLOCK] == bytes(2 * BLOCK)
    one = run_cmd(a, caw(1), data_out=bytes(BLOCK) + b"y" * BLOCK)
    assert one.status == scsi.GOOD
    assert image.read_bytes()[:BLOCK] == b"y" * BLOCK

    verify = bytes([0x2F, 0x02, 0, 0, 0, 0, 0, 0, 1, 0])  # BYTCHK=01b, LBA 0, 1 block
    assert run_cmd(a, verify, data_out=b"y" * BLOCK).status == scsi.GOOD
    miss = run_cmd(a, verify, data_out=b"z" * BLOCK)
    assert sense_code(miss.sense) == (0xE, 0x1D, 0x00)
    orwrite = bytes([0x8B, 0]) + (1).to_bytes(8, "big") + (1).to_bytes(4, "big") + bytes(2)
    assert run_cmd(a, orwrite, data_out=b"\x01" * BLOCK).status == scsi.GOOD
    assert image.read_bytes()[BLOCK : 2 * BLOCK] == b"\x01" * BLOCK


def _rsoc(sim, options: int = 0, opcode: int = 0, sa: int = 0):
    cdb = bytes([0xA3, 0x0C, options, opcode]) + sa.to_bytes(2, "big") + (8192).to_bytes(4, "big")
    return run_cmd(sim, cdb + bytes(2), data_in=8192)


def _reported(sim) -> list[tuple[int, int | None]]:
    done = _rsoc(sim)
    assert done.status == scsi.GOOD
    body = done.data[4 : 4 + int.from_bytes(done.data[:4], "big")]
    out = []
    for pos in range(0, len(body), 8):
        op, sa, flags = body[pos], int.from_bytes(body[pos + 2 : pos + 4], "big"), body[pos + 5]
        out.append((op, sa if flags & 1 else None))
    return out


def _reported_opcodes(sim) -> set[int]:
    return {op for op, _ in _reported(sim)}


def test_report_supported_opcodes_lists_what_the_pr_engine_answers(rig):
    """The daemon answers PR IN/OUT and RESERVE/RELEASE, so REPORT SUPPORTED OPERATION CODES
    (answered by the emulator) lists exactly the service actions the engine takes; each one
    listed is answered by the engine, and the first one past them is INVALID FIELD IN CDB."""
    a = rig.sim("lu0_a")
    listed = _reported(a)
    pr_in = [sa for op, sa in listed if op == 0x5E]
    pr_out = [sa for op, sa in listed if op == 0x5F]
    assert pr_in == [0, 1, 2, 3] and pr_out == list(range(9))
    assert {0x16, 0x17, 0x56, 0x57} <= {op for op, _ in listed}
    for sa in pr_in:
        done = run_cmd(a, bytes([0x5E, sa]) + bytes(5) + (1024).to_bytes(2, "big") + b"\0",
                       data_in=1024)  # fmt: skip
        assert done.status == scsi.GOOD, sa
    past = run_cmd(a, bytes([0x5E, 4]) + bytes(5) + (1024).to_bytes(2, "big") + b"\0",
                   data_in=1024)  # fmt: skip
    assert (past.status, sense_code(past.sense)) == (scsi.CHECK_CONDITION, (0x5, 0x24, 0x00))
    one = _rsoc(a, options=2, opcode=0x5F, sa=REGISTER)  # one command, with its usage data
    assert one.status == scsi.GOOD and one.data[1] & 0x07 == 0x03
    assert one.data[4:14] == bytes.fromhex("5f00000000ffffffff00")
    reserve = _rsoc(a, options=2, opcode=0x5F, sa=RESERVE)
    assert reserve.data[4:14] == bytes.fromhex("5f01ff0000ffffffff00")
