"""TEST UNIT READY, REQUEST SENSE, REPORT SUPPORTED OPERATION CODES, dispatch errors, fuzz."""

from __future__ import annotations

import struct

import pytest
from emulation_support import assert_check, assert_good, make_emulator, parse_sense
from hypothesis import given, settings
from hypothesis import strategies as st

BS = 512


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    em = make_emulator(str(tmp_path_factory.mktemp("misc") / "lu.img"), size=64 * BS)
    yield em
    em.backend.close()


def rsoc(options: int = 0, opcode: int = 0, sa: int = 0, alloc: int = 4096, rctd: int = 0):
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, (rctd << 7) | options, opcode, sa, alloc, 0, 0)


def test_test_unit_ready(emu):
    assert emu.emulate(bytes(6)) == (0, None, None)


def test_request_sense_reports_no_sense(emu):
    data = assert_good(emu.emulate(bytes([0x03, 0, 0, 0, 252, 0])))
    s = parse_sense(data)
    assert (s.response_code, s.key, s.asc, s.ascq, s.valid) == (0x70, 0, 0, 0, False)
    desc = assert_good(emu.emulate(bytes([0x03, 1, 0, 0, 252, 0])))
    assert desc == bytes([0x72, 0, 0, 0, 0, 0, 0, 0])
    assert assert_good(emu.emulate(bytes([0x03, 0, 0, 0, 4, 0]))) == data[:4]


@pytest.mark.parametrize(
    "opcode",
    [0x5E, 0x5F, 0x16, 0x17, 0x56, 0x57, 0xA0, 0x04, 0xC0, 0xFF, 0x7F, 0x60],
)
def test_pr_and_unknown_opcodes(emu, opcode):
    """PR/RESERVE/RELEASE belong to the PR engine; REPORT LUNS to LIO; the rest are unknown."""
    assert_check(emu.emulate(bytes([opcode]) + bytes(15)), 0x5, 0x20)


def test_empty_and_short_cdbs(emu):
    assert_check(emu.emulate(b""), 0x5, 0x24)
    assert_check(emu.emulate(bytes([0x28, 0, 0])), 0x5, 0x24)  # READ(10) cut short
    assert_check(emu.emulate(bytes([0x9E, 0x10])), 0x5, 0x24)
    assert_check(emu.emulate(bytes([0x5F, 0])), 0x5, 0x20)  # unknown beats short


def test_unsupported_service_actions(emu):
    assert_check(emu.emulate(struct.pack(">BB14x", 0x9E, 0x11)), 0x5, 0x24)
    assert_check(emu.emulate(struct.pack(">BB10x", 0xA3, 0x0A)), 0x5, 0x24)  # RTPG: no ALUA


def test_naca_is_refused(emu):
    assert_check(emu.emulate(bytes([0, 0, 0, 0, 0, 0x04])), 0x5, 0x24)


def test_report_all_supported_opcodes(emu):
    data = assert_good(emu.emulate(rsoc()))
    length = int.from_bytes(data[0:4], "big")
    assert length == len(data) - 4 and length % 8 == 0
    seen = {}
    for pos in range(4, len(data), 8):
        op, sa, flags, cdb_len = struct.unpack(">BxHxBH", data[pos : pos + 8])
        seen[(op, sa if flags & 1 else None)] = cdb_len
    assert seen[(0x12, None)] == 6 and seen[(0x2A, None)] == 10 and seen[(0x89, None)] == 16
    assert seen[(0x9E, 0x10)] == 16 and seen[(0xA3, 0x0C)] == 12
    assert (0x5F, None) not in seen and (0x5E, None) not in seen
    # everything reported is really answered (not INVALID COMMAND OPERATION CODE)
    for op, sa in seen:
        cdb = bytearray(seen[(op, sa)])
        cdb[0] = op
        if sa is not None:
            cdb[1] = sa
        status, sense, _ = emu.emulate(bytes(cdb), b"")
        assert status == 0 or parse_sense(sense).asc != 0x20, hex(op)


def test_report_one_opcode(emu):
    data = assert_good(emu.emulate(rsoc(options=1, opcode=0x28)))
    assert data[1] & 0x07 == 3 and int.from_bytes(data[2:4], "big") == 10
    assert data[4] == 0x28 and len(data) == 14
    data = assert_good(emu.emulate(rsoc(options=2, opcode=0x9E, sa=0x10)))
    assert data[1] & 0x07 == 3 and data[4] == 0x9E and data[5] & 0x1F == 0x10
    data = assert_good(emu.emulate(rsoc(options=1, opcode=0x5F)))
    assert data[1] & 0x07 == 1  # not supported
    assert_check(emu.emulate(rsoc(options=1, opcode=0x9E)), 0x5, 0x24)  # has service actions
    assert_check(emu.emulate(rsoc(options=2, opcode=0x28)), 0x5, 0x24)  # has none
    assert_check(emu.emulate(rsoc(options=4)), 0x5, 0x24)
    assert len(assert_good(emu.emulate(rsoc(alloc=6)))) == 6


_KNOWN = [
    0x00,
    0x03,
    0x08,
    0x0A,
    0x12,
    0x15,
    0x1A,
    0x1B,
    0x25,
    0x28,
    0x2A,
    0x2F,
    0x35,
    0x41,
    0x42,
    0x55,
    0x5A,
    0x88,
    0x89,
    0x8A,
    0x8F,
    0x91,
    0x93,
    0x9E,
    0xA3,
    0xA8,
    0xAA,
]


def _check_reply(reply) -> None:
    status, sense, data = reply
    assert status in (0x00, 0x02)
    if status == 0x02:
        s = parse_sense(sense)
        assert s.key in (0x5, 0x7, 0xE) and data is None
    else:
        assert sense is None and (data is None or isinstance(data, bytes))


@settings(max_examples=400, deadline=None)
@given(
    cdb=st.one_of(
        st.binary(max_size=20),
        st.tuples(st.sampled_from(_KNOWN), st.binary(max_size=17)).map(
            lambda t: bytes([t[0]]) + t[1]
        ),
    ),
    data=st.binary(max_size=2 * BS + 8),
)
def test_random_cdbs_never_raise(emu, cdb, data):
    _check_reply(emu.emulate(cdb, data))


@settings(max_examples=200, deadline=None)
@given(
    ranges=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1)), max_size=4),
    declared=st.integers(0, 0xFFFF),
    desc_len=st.integers(0, 0xFFFF),
)
def test_random_unmap_lists_never_raise(emu, ranges, declared, desc_len):
    body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    plist = struct.pack(">HH4x", declared, desc_len) + body
    cdb = struct.pack(">BB4xBHB", 0x42, 0, 0, len(plist), 0)
    _check_reply(emu.emulate(cdb, plist))
