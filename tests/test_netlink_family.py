"""The TCM-USER wire format: numbers, pyroute2 interop, strict decoding."""

from __future__ import annotations

import errno
import struct

import pytest
from netlink_peer import FAMILY_ID, build, cstr, parse, raw, u32

from tcmu_pr.netlink.family import (
    ATTRIBUTES,
    NLMSG_ERROR,
    REPLY_OF,
    Attr,
    Cmd,
    Control,
    Message,
    MessageError,
    decode,
    encode,
    split,
)

# include/uapi/linux/target_core_user.h, mainline (enum order, checked against the source).
MAINLINE_CMDS = [
    "UNSPEC",
    "ADDED_DEVICE",
    "REMOVED_DEVICE",
    "RECONFIG_DEVICE",
    "ADDED_DEVICE_DONE",
    "REMOVED_DEVICE_DONE",
    "RECONFIG_DEVICE_DONE",
    "SET_FEATURES",
]
MAINLINE_ATTRS = [
    "UNSPEC",
    "DEVICE",
    "MINOR",
    "PAD",
    "DEV_CFG",
    "DEV_SIZE",
    "WRITECACHE",
    "CMD_STATUS",
    "DEVICE_ID",
    "SUPP_KERN_CMD_REPLY",
]


def test_mainline_numbers_unchanged_and_pr_appended():
    assert [Cmd(i).name for i in range(len(MAINLINE_CMDS))] == MAINLINE_CMDS
    assert [Attr(i).name for i in range(len(MAINLINE_ATTRS))] == MAINLINE_ATTRS
    assert (Cmd.GET_PR_INFO, Cmd.GET_PR_INFO_DONE, Cmd.SET_PR_INFO, Cmd.SET_PR_INFO_DONE) == (
        8,
        9,
        10,
        11,
    )
    assert Attr.PR_INFO == 10
    # the nexus-handle patch (coordinator's ABI): appended after the PR numbers
    assert Cmd.GET_NEXUS == 12
    assert [a.value for a in (Attr.NEXUS_HANDLE, Attr.NEXUS_PROTO, Attr.NEXUS_INITIATOR,
                              Attr.NEXUS_ISID, Attr.NEXUS_TARGET, Attr.NEXUS_TPGT,
                              Attr.NEXUS_RTPI, Attr.NEXUS_SESSIONS)] == list(range(11, 19))
    assert [spec.attr for spec in ATTRIBUTES] == list(Attr)  # one row per attribute, in order
    assert REPLY_OF[Cmd.SET_PR_INFO] == Cmd.SET_PR_INFO_DONE


def test_encode_is_what_pyroute2_parses():
    msg = Message.make(
        Cmd.GET_PR_INFO_DONE,
        {Attr.CMD_STATUS: -11, Attr.DEVICE_ID: 7, Attr.PR_INFO: "0x00000001\n"},
        seq=9,
        port_id=42,
    )
    parsed = parse(encode(msg, family_id=FAMILY_ID))
    assert parsed["cmd"] == Cmd.GET_PR_INFO_DONE
    assert parsed["header"]["pid"] == 42
    assert parsed["header"]["sequence_number"] == 9
    assert parsed.get_attr("TCMU_ATTR_CMD_STATUS") == -11
    assert parsed.get_attr("TCMU_ATTR_PR_INFO") == "0x00000001\n"


def test_decode_of_a_kernel_style_message():
    data = build(
        Cmd.RECONFIG_DEVICE,
        {
            Attr.DEVICE: "tcm-user/1/lu/tcmu-pr/file:/x",
            Attr.MINOR: 3,
            Attr.DEVICE_ID: 12,
            Attr.DEV_SIZE: 2**40,
        },
    )
    msg = decode(data, family_id=FAMILY_ID)
    assert msg == Message.make(
        Cmd.RECONFIG_DEVICE,
        {
            Attr.DEVICE: "tcm-user/1/lu/tcmu-pr/file:/x",
            Attr.MINOR: 3,
            Attr.DEVICE_ID: 12,
            Attr.DEV_SIZE: 2**40,
        },
        flags=1,
    )


def test_unknown_attributes_are_skipped():
    data = raw(Cmd.GET_PR_INFO, [(77, b"\1\2\3"), (Attr.DEVICE_ID, u32(5))])
    assert decode(data, family_id=FAMILY_ID) == Message.make(Cmd.GET_PR_INFO, {Attr.DEVICE_ID: 5})


def test_pad_attribute_before_u64_is_tolerated():
    data = raw(
        Cmd.RECONFIG_DEVICE,
        [(Attr.DEVICE_ID, u32(5)), (Attr.PAD, b""), (Attr.DEV_SIZE, struct.pack("=Q", 4096))],
    )
    msg = decode(data, family_id=FAMILY_ID)
    assert msg.get(Attr.DEV_SIZE) == 4096
    assert Attr.PAD not in msg.attrs


@pytest.mark.parametrize(
    ("attrs", "length", "fragment"),
    [
        ([(Attr.DEVICE_ID, u32(5)), (Attr.MINOR, b"\1\0")], None, "TCMU_ATTR_MINOR: 2-byte"),
        ([(Attr.DEVICE_ID, u32(5)), (Attr.DEVICE, b"abc")], None, "without a terminating NUL"),
        ([(Attr.DEVICE_ID, u32(5)), (Attr.DEVICE, b"a\0b\0")], None, "embedded NUL"),
        ([(Attr.DEVICE_ID, u32(5)), (Attr.DEVICE_ID, u32(6))], None, "given twice"),
        ([(Attr.DEVICE_ID, u32(5)), (Attr.PR_INFO, b"\xff\0")], None, "not UTF-8"),
        ([(Attr.DEVICE_ID, u32(5))], 200, "truncated: header says 200"),
        ([(Attr.DEVICE_ID, u32(5))], 70000, "oversized: 70000"),
    ],
)
def test_malformed_messages_name_the_fault_and_keep_the_device_id(attrs, length, fragment):
    data = raw(Cmd.SET_PR_INFO, attrs, length=length)
    with pytest.raises(MessageError) as info:
        decode(data, family_id=FAMILY_ID)
    assert fragment in info.value.reason
    assert info.value.cmd == Cmd.SET_PR_INFO
    assert info.value.device_id == 5
    assert info.value.port_id == 0
    assert info.value.errno == (errno.EMSGSIZE if "oversized" in fragment else errno.EINVAL)


def test_truncated_attribute_header_and_body():
    whole = raw(Cmd.GET_PR_INFO, [(Attr.DEVICE, cstr("tcm-user/1/lu")), (Attr.DEVICE_ID, u32(1))])
    cut = whole[:-6]
    cut = struct.pack("=I", len(cut)) + cut[4:]  # a consistent header, a cut attribute
    with pytest.raises(MessageError, match="truncated") as info:
        decode(cut, family_id=FAMILY_ID)
    assert info.value.device_id is None
    with pytest.raises(MessageError, match="shorter than a netlink header"):
        decode(whole[:10], family_id=FAMILY_ID)
    with pytest.raises(MessageError, match="no generic netlink header"):
        decode(struct.pack("=IHHII", 17, FAMILY_ID, 0, 0, 0) + b"\1", family_id=FAMILY_ID)


def test_other_message_types_are_controls():
    ack = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 3, 0) + struct.pack("=i", -1) + bytes(16)
    assert decode(ack, family_id=FAMILY_ID) == Control(NLMSG_ERROR, -1, 3, 0)


def test_split_packs_and_reports_a_cut_tail():
    one = build(Cmd.GET_PR_INFO, {Attr.DEVICE_ID: 1})
    two = build(Cmd.GET_PR_INFO, {Attr.DEVICE_ID: 2, Attr.DEVICE: "tcm-user/1/x"})
    assert split(one + two) == [one, two]
    assert split(one + two[:20]) == [one, two[:20]]
    assert split(b"") == []
