"""TransportIDs: hand-built SPC-4 §7.6.4 byte vectors, every error case, round trips."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcmu_pr.pr.nexus import PROTO_FC, PROTO_ISCSI, PROTO_SAS, Nexus
from tcmu_pr.pr.transport_id import (
    TransportID,
    TransportIDError,
    encode_transport_id,
    matches,
    parse_transport_id,
    parse_transport_ids,
    tid_to_nexus,
)

IQN = "iqn.1994-05.com.redhat:client1"  # 30 characters
TARGET = Nexus.make("naa.5001405ffffffff0", "iqn.2003-01.org.linux-iscsi.gw:rbd", tpgt=2)

# FC: protocol 0h, format 00b, 7 reserved bytes, N_PORT_NAME, 8 reserved bytes.
FC_TID = bytes(8) + bytes.fromhex("21000024ff314c48") + bytes(8)
# SAS: protocol 6h, format 00b, 3 reserved bytes, SAS ADDRESS, 12 reserved bytes.
SAS_TID = b"\x06\x00\x00\x00" + bytes.fromhex("6001405abcdef012") + bytes(12)
# iSCSI format 00b: name + NUL = 31 bytes, padded to 32 -> ADDITIONAL LENGTH 0x20.
ISCSI_DEV_TID = b"\x05\x00\x00\x20" + IQN.encode() + b"\x00\x00"
# iSCSI format 01b: name + ",i,0x" + 12 ISID digits + NUL = 48 bytes -> 0x30.
ISCSI_PORT_TID = b"\x45\x00\x00\x30" + (IQN + ",i,0x00023d000001").encode() + b"\x00"
# A short name still gets the minimum ADDITIONAL LENGTH of 20.
SHORT_TID = b"\x05\x00\x00\x14" + b"iqn.a" + bytes(15)


@pytest.mark.parametrize(
    ("buf", "tid"),
    [
        (FC_TID, TransportID(PROTO_FC, "21:00:00:24:ff:31:4c:48", None)),
        (SAS_TID, TransportID(PROTO_SAS, "naa.6001405abcdef012", None)),
        (ISCSI_DEV_TID, TransportID(PROTO_ISCSI, IQN, None)),
        (ISCSI_PORT_TID, TransportID(PROTO_ISCSI, IQN, "23d000001")),
        (SHORT_TID, TransportID(PROTO_ISCSI, "iqn.a", None)),
    ],
)
def test_vectors_parse(buf: bytes, tid: TransportID) -> None:
    assert parse_transport_id(buf) == (tid, len(buf))
    assert parse_transport_ids(buf) == [tid]


@pytest.mark.parametrize(
    ("nexus", "buf"),
    [
        (Nexus.make("21:00:00:24:ff:31:4c:48", "t"), FC_TID),
        (Nexus.make("naa.6001405abcdef012", "t"), SAS_TID),
        (Nexus(IQN, "", "t", "1"), ISCSI_DEV_TID),
        (Nexus.make(IQN, "t", isid=0x23D000001), ISCSI_PORT_TID),
        (Nexus("iqn.a", "", "t", "1"), SHORT_TID),
    ],
)
def test_vectors_encode(nexus: Nexus, buf: bytes) -> None:
    assert encode_transport_id(nexus) == buf


def test_concatenated_list_and_offsets() -> None:
    buf = FC_TID + ISCSI_PORT_TID + SAS_TID + ISCSI_DEV_TID
    tids = parse_transport_ids(buf)
    assert [t.protocol for t in tids] == [PROTO_FC, PROTO_ISCSI, PROTO_SAS, PROTO_ISCSI]
    assert parse_transport_id(buf, 24) == (tids[1], len(ISCSI_PORT_TID))
    assert parse_transport_ids(b"") == []


def test_reserved_bits_are_ignored() -> None:
    assert parse_transport_id(b"\x36" + SAS_TID[1:4] + b"\xff" * 20)[0].name == "naa." + "f" * 16


def _iscsi(field: bytes, *, head: int = 0x05, length: int | None = None) -> bytes:
    n = len(field) if length is None else length
    return bytes([head, 0]) + n.to_bytes(2, "big") + field


@pytest.mark.parametrize(
    ("buf", "offset", "words"),
    [
        (b"", 0, "offset 0: no TransportID"),
        (FC_TID, 24, "offset 24: no TransportID"),
        (b"\x01" + bytes(23), 0, "protocol identifier 0x1"),  # SPI
        (b"\x04" + bytes(23), 0, "protocol identifier 0x4"),  # SRP
        (b"\x0f" + bytes(23), 0, "protocol identifier 0xf"),
        (b"\x40" + FC_TID[1:], 0, "reserved format code 1 for FC"),
        (b"\x86" + SAS_TID[1:], 0, "reserved format code 2 for SAS"),
        (b"\x85" + ISCSI_DEV_TID[1:], 0, "reserved format code 2 for iSCSI"),
        (b"\xc5" + ISCSI_DEV_TID[1:], 0, "reserved format code 3 for iSCSI"),
        (FC_TID[:23], 0, "truncated FC TransportID (23 of 24"),
        (SAS_TID[:10], 0, "truncated SAS TransportID (10 of 24"),
        (b"\x05\x00\x00", 0, "truncated iSCSI TransportID header"),
        (_iscsi(b"iqn.a" + bytes(16)), 0, "offset 2: iSCSI ADDITIONAL LENGTH 21 must be"),
        (_iscsi(b"iqn.a" + bytes(11)), 0, "ADDITIONAL LENGTH 16 must be"),
        (_iscsi(b"iqn.a" + bytes(15), length=24), 0, "ADDITIONAL LENGTH 24 overruns"),
        (_iscsi(b"i" * 20), 0, "offset 4: iSCSI name is not NUL-terminated"),
        (_iscsi(b"iqn.a\x00junk" + bytes(10)), 0, "offset 9: non-NUL bytes in the iSCSI"),
        (_iscsi(b"iqn.\xe9t\x00" + bytes(13)), 0, "iSCSI name is not ASCII"),
        (_iscsi(b"iqn.a,b" + bytes(13)), 0, "must be 1-223 printable"),
        (_iscsi(b"iqn.a b" + bytes(13)), 0, "must be 1-223 printable"),
        (_iscsi(bytes(20)), 0, "must be 1-223 printable"),
        (_iscsi(b"iqn." + b"a" * 220 + bytes(4)), 0, "must be 1-223 printable"),
        (_iscsi(b"iqn.a:b" + bytes(13), head=0x45), 0, "lacks the ',i,0x' separator"),
        (_iscsi(b"iqn.a,i,0xxyz" + bytes(7), head=0x45), 0, "offset 14: ISID 'xyz'"),
        (_iscsi(b"iqn.a,i,0x" + bytes(10), head=0x45), 0, "ISID ''"),
        (_iscsi(b"iqn.a,i,0x" + b"1" * 13 + bytes(1), head=0x45), 0, "1-12 hex digits"),
        (_iscsi(b",i,0x1" + bytes(14), head=0x45), 0, "iSCSI name ''"),
    ],
)
def test_errors_name_offset_and_fault(buf: bytes, offset: int, words: str) -> None:
    with pytest.raises(TransportIDError, match=re.escape(words)):
        parse_transport_id(buf, offset)


def test_trailing_junk_in_a_list_is_an_error_at_its_offset() -> None:
    with pytest.raises(TransportIDError, match="offset 24: truncated FC"):
        parse_transport_ids(FC_TID + b"\x00\x00\x00")
    with pytest.raises(TransportIDError, match="offset 60: truncated iSCSI"):
        parse_transport_ids(ISCSI_DEV_TID + SAS_TID + b"\x05")


def test_encode_rejects_what_cannot_be_a_transport_id() -> None:
    with pytest.raises(TransportIDError, match="wider than 48 bits"):
        encode_transport_id(Nexus.make(IQN, "t", isid=1 << 48))
    with pytest.raises(TransportIDError, match="longer than 223"):
        encode_transport_id(Nexus("iqn." + "a" * 220, "", "t", "1"))


def test_tid_to_nexus_uses_the_kernel_spelling() -> None:
    sas = parse_transport_id(SAS_TID)[0]
    expected = Nexus.parse("naa.6001405abcdef012,i,0x0,iqn.2003-01.org.linux-iscsi.gw:rbd,t,0x2")
    assert tid_to_nexus(sas, TARGET) == expected
    fc = parse_transport_id(FC_TID)[0]
    assert str(tid_to_nexus(fc, TARGET)).startswith("21:00:00:24:ff:31:4c:48,i,0x0,")
    port = parse_transport_id(ISCSI_PORT_TID)[0]
    assert tid_to_nexus(port, TARGET) == Nexus(IQN, "23d000001", TARGET.target, "2")
    dev = parse_transport_id(ISCSI_DEV_TID)[0]
    assert tid_to_nexus(dev, TARGET) == Nexus(IQN, "", TARGET.target, "2")


def test_uppercase_wire_hex_comes_back_lowercase() -> None:
    buf = b"\x45\x00\x00\x30" + (IQN + ",i,0x00023D00000A").encode() + b"\x00"
    assert parse_transport_id(buf)[0].isid == "23d00000a"


def test_matches() -> None:
    port = parse_transport_id(ISCSI_PORT_TID)[0]
    dev = parse_transport_id(ISCSI_DEV_TID)[0]
    sas = parse_transport_id(SAS_TID)[0]
    mine = Nexus.make(IQN, "any-target", isid=0x23D000001)
    other_isid = Nexus.make(IQN, "any-target", isid=0x23D000002)
    assert matches(port, mine) and not matches(port, other_isid)
    assert matches(dev, mine) and matches(dev, other_isid)
    assert not matches(dev, Nexus.make(IQN + "x", "any-target", isid=1))
    assert matches(sas, Nexus.make("naa.6001405ABCDEF012", "t"))
    assert not matches(sas, Nexus.make("naa.6001405abcdef012", "t", isid=5))
    assert not matches(sas, Nexus.make("naa.6001405abcdef013", "t"))


# Round trips: any initiator port a Nexus can name comes back as the same nexus.
_hex16 = st.integers(0, 2**64 - 1).map(lambda v: f"{v:016x}")
_fc = _hex16.map(lambda h: ":".join(h[i : i + 2] for i in range(0, 16, 2)))
_sas = _hex16.map(lambda h: "naa." + h)
_iscsi_name = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["iqn.", "eui.", "iqn.2003-01.org.linux-iscsi."]),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
        min_size=1,
        max_size=180,
    ),
)
_targets = st.builds(
    Nexus.make,
    st.just("i.x"),
    st.sampled_from(["iqn.t:a", "naa.5001405000000001"]),
    tpgt=st.integers(1, 0xFFFF),
)


@st.composite
def _initiator_nexus(draw: st.DrawFn) -> Nexus:
    target = draw(_targets)
    kind = draw(st.sampled_from(["fc", "sas", "iscsi-port", "iscsi-device"]))
    if kind == "fc":
        return Nexus(draw(_fc), "0", target.target, target.tpgt)
    if kind == "sas":
        return Nexus(draw(_sas), "0", target.target, target.tpgt)
    name = draw(_iscsi_name)
    if kind == "iscsi-device":
        return Nexus(name, "", target.target, target.tpgt)
    return Nexus.make(
        name, target.target, isid=draw(st.integers(0, 2**48 - 1)), tpgt=target.tpgt_value
    )


@given(_initiator_nexus())
def test_round_trip_encode_parse_tid_to_nexus(nexus: Nexus) -> None:
    buf = encode_transport_id(nexus)
    assert len(buf) % 4 == 0 and len(buf) >= 24
    tid, used = parse_transport_id(buf)
    assert used == len(buf)
    assert tid.protocol == nexus.protocol
    assert tid_to_nexus(tid, nexus) == nexus
    assert matches(tid, nexus)
    assert parse_transport_ids(buf + buf) == [tid, tid]


@given(_initiator_nexus(), st.binary(min_size=1, max_size=8), st.integers(0, 300))
def test_corrupted_buffers_raise_only_transport_id_error(
    nexus: Nexus, junk: bytes, at: int
) -> None:
    buf = bytearray(encode_transport_id(nexus))
    at %= len(buf)
    buf[at : at + len(junk)] = junk
    try:
        tids = parse_transport_ids(bytes(buf))
    except TransportIDError:
        return
    for tid in tids:  # whatever parsed is a well-formed, nexus-able TransportID
        tid_to_nexus(tid, nexus)
