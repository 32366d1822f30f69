"""GET_NEXUS (the tcmu-pr kernel patch): request encoding and the strict reply decoder.

The kernel side is tests/netlink_peer.NexusKernel: pyroute2 parses our request and builds
the reply, so both ends only agree through the wire format.
"""

from __future__ import annotations

import errno
import struct

import pytest
from netlink_peer import FAMILY_ID, NexusKernel, build, nexus_attrs, raw, u32

from tcmu_pr.netlink.family import Attr, Cmd
from tcmu_pr.netlink.nexus import NexusClient, NexusLookupError
from tcmu_pr.pr.nexus import Nexus

INIT = "iqn.1994-05.com.redhat:client1"
TPORT = "iqn.2003-01.org.linux-iscsi.gw1:lu0"


@pytest.fixture
def kernel():
    k = NexusKernel()
    yield k
    k.close()


@pytest.fixture
def client(kernel):
    return NexusClient(kernel.transport, timeout=2)


def test_iscsi_nexus_with_its_real_isid(kernel, client):
    kernel.table[(7, 3)] = nexus_attrs(3, INIT, TPORT, isid=0x23D000002, tpgt=2, rtpi=3)
    info = client.resolve(7, 3)
    assert kernel.requests == [(7, 3)]
    assert (info.proto, info.isid, info.tpgt, info.rtpi, info.sessions) == (5, 0x23D000002, 2,
                                                                             3, 1)  # fmt: skip
    assert info.nexus == Nexus.parse(f"{INIT},i,0x23d000002,{TPORT},t,0x2")


def test_sas_nexus_has_isid_zero_as_the_per_nexus_layout_writes(kernel, client):
    kernel.table[(1, 1)] = nexus_attrs(1, "naa.5001405abcdef012", "naa.5001405000000001",
                                       isid=None, proto=6)  # fmt: skip
    info = client.resolve(1, 1)
    assert info.isid is None and str(info.nexus).split(",")[2] == "0x0"


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENODEV, errno.EINVAL])
def test_kernel_errors_are_lookup_errors(kernel, client, code):
    kernel.table[(1, 2)] = code
    with pytest.raises(NexusLookupError) as err:
        client.resolve(1, 2)
    assert err.value.errno == code


def _without(attr):
    attrs = nexus_attrs(4, INIT, TPORT)
    del attrs[attr]
    return attrs


@pytest.mark.parametrize(
    "reply, why",
    [
        (nexus_attrs(5, INIT, TPORT), "names handle 5"),
        (_without(Attr.NEXUS_INITIATOR), "missing NEXUS_INITIATOR"),
        (_without(Attr.NEXUS_ISID), "without an ISID"),
        (_without(Attr.NEXUS_RTPI), "missing NEXUS_RTPI"),
        (nexus_attrs(4, INIT, TPORT, isid=1 << 48), "wider than 48 bits"),
        (nexus_attrs(4, "has space", TPORT), "printable"),
        (nexus_attrs(4, INIT, "a,b"), "commas"),
    ],
)
def test_bad_replies_are_refused_with_a_reason(kernel, client, reply, why):
    kernel.table[(1, 4)] = reply
    with pytest.raises(NexusLookupError, match=why) as err:
        client.resolve(1, 4)
    assert err.value.errno == errno.EPROTO


def test_malformed_bytes_and_wrong_command(kernel, client):
    bad = bytearray(raw(Cmd.GET_NEXUS, [(Attr.NEXUS_HANDLE, b"\1\0")], pid=4242))
    struct.pack_into("=I", bad, 8, 1)  # the first request's seq
    kernel.table[(1, 4)] = bytes(bad)
    with pytest.raises(NexusLookupError) as err:  # 2-byte u32: the decoder refuses it
        client.resolve(1, 4)
    assert err.value.errno == errno.EPROTO
    kernel.table[(1, 5)] = build(Cmd.ADDED_DEVICE, {Attr.DEVICE_ID: 1}, pid=4242)
    with pytest.raises(NexusLookupError) as err:  # seq 0: not ours; no reply after it
        NexusClient(kernel.transport, timeout=0.3).resolve(1, 5)
    assert err.value.errno == errno.ETIMEDOUT
    kernel.table[(1, 6)] = nexus_attrs(6, INIT, TPORT)
    assert client.resolve(1, 6).handle == 6  # the client still works after all that


def test_rtpi_zero_is_unknown_not_an_error(kernel, client):
    """6.12 gives a TPG its relative port id when it is enabled; tcm_loop's never are."""
    kernel.table[(1, 8)] = nexus_attrs(8, "naa.5001405000000a01", "naa.5001405000000001",
                                       isid=None, proto=6, rtpi=0)  # fmt: skip
    assert client.resolve(1, 8).rtpi is None


def test_handles_outside_u32_are_not_asked(kernel, client):
    for handle in (0, 1 << 32):
        with pytest.raises(NexusLookupError) as err:
            client.resolve(1, handle)
        assert err.value.errno == errno.EINVAL
    assert kernel.requests == []


def test_request_carries_device_and_handle():
    from netlink_peer import parse

    from tcmu_pr.netlink.nexus import request

    msg = parse(request(9, 77, seq=5, port_id=4242, family_id=FAMILY_ID))
    assert msg["cmd"] == Cmd.GET_NEXUS
    assert msg.get_attr("TCMU_ATTR_DEVICE_ID") == 9 and msg.get_attr("TCMU_ATTR_NEXUS_HANDLE") == 77
    assert u32(77) in request(9, 77, seq=5, port_id=4242, family_id=FAMILY_ID)
