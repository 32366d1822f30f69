"""The service against a peer that plays the kernel, over a real SOCK_SEQPACKET pair."""

from __future__ import annotations

import errno
import logging
import socket

import pytest
from netlink_peer import FAMILY_ID, RecordingManager, build, cstr, raw, running_service, u32

from tcmu_pr.netlink.family import Attr, Cmd, decode
from tcmu_pr.netlink.service import NetlinkService, Reconfig
from tcmu_pr.netlink.socket import FamilyNotFound, KernelTransport, PacketTransport
from tcmu_pr.pr import codec
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import PRState, Registration

NEXUS = Nexus.make(
    "iqn.1994-05.com.redhat:client1", "iqn.2003-01.org.linux-iscsi.gw:rbd", isid=0x23D000001
)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "lu0.img"
    path.write_bytes(bytes(4096))
    return path


@pytest.fixture
def manager():
    return RecordingManager()


@pytest.fixture
def served(manager):
    with running_service(manager) as (peer, service):
        yield peer, service


def blob(seq: int, key: int = 0xABC) -> str:
    state = PRState(seq=seq, generation=seq, aptpl=True, registrations=(Registration(key, NEXUS),))
    return codec.encode(state)[:-1].decode()


def test_announce_sends_set_features(served):
    peer, service = served
    service.announce()
    msg = peer.recv()
    assert msg["cmd"] == Cmd.SET_FEATURES
    assert msg["header"]["type"] == FAMILY_ID
    assert msg["header"]["flags"] & 0x4  # NLM_F_ACK: a refusal (EPERM) comes back
    assert msg.get_attr("TCMU_ATTR_SUPP_KERN_CMD_REPLY") == 1


def test_add_reconfig_remove(served, manager, image):
    peer, service = served
    assert peer.add_device(7, f"tcmu-pr/file:{image}", minor=3) == 0
    info = manager.calls[0][1]
    assert (info.device_id, info.minor, info.name, str(info.config.store)) == (
        7,
        3,
        "lu",
        f"file:{image}",
    )
    assert service.device(7) == info

    assert peer.reconfig(7, {Attr.DEV_SIZE: 1 << 30}) == 0
    assert peer.reconfig(7, {Attr.WRITECACHE: 1}) == 0
    assert peer.reconfig(7, {Attr.DEV_CFG: f"tcmu-pr/file:{image};rtpi=2"}) == 0
    assert [c[2] for c in manager.calls[1:]] == [
        Reconfig(size=1 << 30),
        Reconfig(writecache=True),
        Reconfig(config=service.device(7).config),
    ]
    assert service.device(7).config.rtpi == 2
    assert service.device(7).uio_name == f"tcm-user/1/lu/tcmu-pr/file:{image};rtpi=2"

    assert peer.remove_device(7) == 0
    assert manager.calls[-1] == ("close", 7)
    assert service.device(7) is None
    assert peer.remove_device(7) == -errno.ENODEV


@pytest.mark.parametrize(
    ("config", "status"),
    [
        ("", -errno.EINVAL),
        ("file//srv/lu0.img", -errno.ENOENT),  # tcmu-runner's handler, not ours
        ("tcmu-pr/file:relative", -errno.EINVAL),
        ("tcmu-pr/file:/nonexistent/lu0.img", -errno.ENOENT),
        ("tcmu-pr/file:{image};colour=red", -errno.EINVAL),
    ],
)
def test_bad_configs_are_refused_with_a_reason(served, manager, image, caplog, config, status):
    peer, service = served
    with caplog.at_level(logging.ERROR):
        assert peer.add_device(9, config.format(image=image)) == status
    assert service.device(9) is None
    assert manager.calls == []
    assert "ADDED_DEVICE 9" in caplog.text


def test_manager_refusal_errno_reaches_the_kernel(served, manager, image):
    peer, service = served
    manager.refuse = PermissionError(errno.EACCES, "uio busy")
    assert peer.add_device(4, f"tcmu-pr/file:{image}") == -errno.EACCES
    assert service.device(4) is None
    manager.refuse = None
    assert peer.add_device(4, f"tcmu-pr/file:{image}") == 0
    # The same device again (adopted at start, its ADDED_DEVICE still queued): served, 0.
    assert peer.add_device(4, f"tcmu-pr/file:{image}") == 0
    assert len(manager.calls) == 1
    assert peer.add_device(4, f"tcmu-pr/file:{image}", name="other") == -errno.EEXIST
    manager.refuse = OSError(errno.EOPNOTSUPP, "cannot grow")
    assert peer.reconfig(4, {Attr.DEV_SIZE: 1}) == -errno.EOPNOTSUPP
    assert peer.reconfig(4, {Attr.WRITECACHE: 2}) == -errno.EINVAL
    assert peer.reconfig(4, {}) == -errno.EINVAL
    assert peer.reconfig(4, {Attr.DEV_CFG: "tcmu-pr/nope:x"}) == -errno.EINVAL
    assert peer.reconfig(5, {Attr.DEV_SIZE: 1}) == -errno.ENODEV


def test_get_and_set_pr_info(served, image):
    peer, _ = served
    assert peer.add_device(1, f"tcmu-pr/file:{image}") == 0
    assert peer.get_pr_info(1) == (0, "")  # never written
    assert peer.set_pr_info(1, blob(1)) == 0
    assert peer.get_pr_info(1) == (0, blob(1))
    assert codec.decode((image.parent / "lu0.img.tcmu-pr").read_bytes()).seq == 1
    assert peer.set_pr_info(1, blob(2)) == 0
    assert peer.get_pr_info(1) == (0, blob(2))


def test_set_stores_the_version_the_kernel_sent(served, image):
    """A state v1 could hold, sent as v2, is read back exactly as sent (not re-chosen)."""
    peer, _ = served
    assert peer.add_device(1, f"tcmu-pr/file:{image}") == 0
    state = PRState(seq=1, generation=1, aptpl=True, registrations=(Registration(0xA, NEXUS),))
    assert codec.fits_v1(state)
    as_v2 = codec.encode(state, version=2)[:-1].decode()
    assert peer.set_pr_info(1, as_v2) == 0
    assert peer.get_pr_info(1) == (0, as_v2)


@pytest.mark.parametrize(
    ("text", "status"),
    [
        (blob(1), -errno.EAGAIN),  # same seq as stored: a stale writer
        (blob(3), -errno.EAGAIN),  # skips one: it never saw seq 2
        (blob(2).replace("0x00000001\n", "0x00000009\n", 1), -errno.EINVAL),  # bad version
        ("garbage", -errno.EINVAL),
        ("", -errno.EINVAL),
    ],
)
def test_refused_set_writes_nothing(served, image, text, status):
    peer, _ = served
    assert peer.add_device(1, f"tcmu-pr/file:{image}") == 0
    assert peer.set_pr_info(1, blob(1)) == 0
    before = (image.parent / "lu0.img.tcmu-pr").read_bytes()
    assert peer.set_pr_info(1, text) == status
    assert (image.parent / "lu0.img.tcmu-pr").read_bytes() == before


def test_first_set_must_carry_seq_1_and_seq_wraps(served, image):
    peer, _ = served
    assert peer.add_device(1, f"tcmu-pr/file:{image}") == 0
    assert peer.set_pr_info(1, blob(2)) == -errno.EAGAIN
    assert peer.get_pr_info(1) == (0, "")
    sidecar = image.parent / "lu0.img.tcmu-pr"
    sidecar.write_bytes(codec.encode(PRState(seq=0xFFFFFFFF)))
    assert peer.set_pr_info(1, blob(0)) == 0


def test_store_failures_are_eio(served, image):
    peer, _ = served
    assert peer.add_device(1, f"tcmu-pr/file:{image}") == 0
    (image.parent / "lu0.img.tcmu-pr").write_bytes(b"0x00000001\nnot a blob\n\0")
    assert peer.set_pr_info(1, blob(1)) == -errno.EIO  # stored blob corrupt
    sidecar = image.parent / "lu0.img.tcmu-pr"
    sidecar.unlink()
    sidecar.mkdir()  # unreadable and unreplaceable as a file
    assert peer.get_pr_info(1) == (-errno.EIO, None)
    assert peer.set_pr_info(1, blob(1)) == -errno.EIO


def test_blob_too_big_for_an_attribute_is_emsgsize(served, image):
    peer, _ = served
    assert peer.add_device(1, f"tcmu-pr/file:{image}") == 0
    regs = tuple(
        Registration(k + 1, Nexus.make(f"iqn.2026-01.test:host{k}", "iqn.2003-01.gw:lu", isid=1))
        for k in range(1000)
    )
    big = codec.encode(PRState(seq=1, registrations=regs))
    assert len(big) > 65536
    (image.parent / "lu0.img.tcmu-pr").write_bytes(big)
    assert peer.get_pr_info(1) == (-errno.EMSGSIZE, None)


def test_pr_commands_for_unknown_devices(served):
    peer, _ = served
    assert peer.get_pr_info(3) == (-errno.ENODEV, None)
    assert peer.set_pr_info(3, blob(1)) == -errno.ENODEV


def test_malformed_requests_get_an_error_reply(served):
    peer, _ = served
    wrong_type = raw(Cmd.GET_PR_INFO, [(Attr.DEVICE_ID, u32(6)), (Attr.MINOR, b"\0")])
    truncated = raw(
        Cmd.SET_PR_INFO, [(Attr.DEVICE_ID, u32(6)), (Attr.PR_INFO, cstr("x"))], length=400
    )
    no_nul = raw(Cmd.SET_PR_INFO, [(Attr.DEVICE_ID, u32(6)), (Attr.PR_INFO, b"0x1")])
    for data, reply_cmd in (
        (wrong_type, Cmd.GET_PR_INFO_DONE),
        (truncated, Cmd.SET_PR_INFO_DONE),
        (no_nul, Cmd.SET_PR_INFO_DONE),
    ):
        peer.send(data)
        reply = peer.reply()
        assert (reply.cmd, reply.device_id, reply.status) == (reply_cmd, 6, -errno.EINVAL)


def test_unanswerable_messages_are_dropped_and_the_service_lives_on(served, caplog):
    peer, _ = served
    with caplog.at_level(logging.WARNING):
        peer.send(build(Cmd.GET_PR_INFO, {Attr.DEVICE_ID: 1}, pid=999))  # not the kernel
        peer.send(build(42, {Attr.DEVICE_ID: 1}))  # unknown command
        peer.send(build(Cmd.ADDED_DEVICE_DONE, {Attr.DEVICE_ID: 1, Attr.CMD_STATUS: 0}))
        peer.send(build(Cmd.GET_PR_INFO, {Attr.MINOR: 1}))  # no device id to reply to
        peer.send(b"\x01\x02")  # not even a header
        peer.send(raw(Cmd.SET_PR_INFO, [(Attr.PR_INFO, b"x")]))  # broken, no device id
        peer.send(raw(Cmd.GET_PR_INFO, [(Attr.DEVICE_ID, u32(8)), (Attr.MINOR, b"")], pid=7))
        assert peer.get_pr_info(8) == (-errno.ENODEV, None)  # the only reply that comes
    assert peer.recv(timeout=0.2) is None
    assert "port 999" in caplog.text
    assert "malformed message from port 7" in caplog.text
    assert "command 42" in caplog.text
    assert "without TCMU_ATTR_DEVICE_ID" in caplog.text


def test_oversized_datagram_is_answered_emsgsize(served):
    peer, _ = served
    big = raw(
        Cmd.SET_PR_INFO,
        [
            (Attr.DEVICE_ID, u32(2)),
            (Attr.PR_INFO, cstr("x" * 40000)),
            (Attr.DEV_CFG, cstr("y" * 40000)),
        ],
    )
    peer.send(big)
    reply = peer.reply()
    assert (reply.cmd, reply.device_id, reply.status) == (Cmd.SET_PR_INFO_DONE, 2, -errno.EMSGSIZE)


def test_dispatch_needs_no_transport_traffic(image):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    service = NetlinkService(PacketTransport(ours, family_id=FAMILY_ID), RecordingManager())
    add = decode(
        build(
            Cmd.ADDED_DEVICE,
            {Attr.DEVICE: f"tcm-user/2/x/tcmu-pr/file:{image}", Attr.MINOR: 0, Attr.DEVICE_ID: 3},
        ),
        family_id=FAMILY_ID,
    )
    reply = service.dispatch(add)
    assert (reply.cmd, reply.get(Attr.CMD_STATUS), reply.get(Attr.DEVICE_ID)) == (
        Cmd.ADDED_DEVICE_DONE,
        0,
        3,
    )
    service.close()
    ours.close()
    theirs.close()


def test_kernel_transport_without_the_family():
    with pytest.raises(FamilyNotFound, match="is target_core_user loaded"):
        KernelTransport()
    with pytest.raises(FamilyNotFound, match="TCM-USER family not found"):
        NetlinkService.connect(RecordingManager())


def test_kernel_transport_binds_and_joins_a_real_family():
    # nlctrl/notify stands in for TCM-USER/config: same resolve-by-name and join path.
    transport = KernelTransport("nlctrl", "notify")
    try:
        assert transport.family_id == 0x10  # GENL_ID_CTRL
        assert transport.port_id != 0
        assert transport.recv(timeout=0.05) is None
    finally:
        transport.close()
