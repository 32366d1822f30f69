"""VERIFY (10/12/16) and WRITE AND VERIFY (10/12/16), one table row per SBC-4 clause."""

from __future__ import annotations

import pytest
from emulation_support import (
    assert_check,
    assert_good,
    block_cdb,
    make_emulator,
    parse_sense,
    spy_emulator,
)

BS = 512
NUM = 2048
ILLEGAL, DATA_PROTECT, MISCOMPARE = 0x5, 0x7, 0xE
INVALID_FIELD, LBA_RANGE = 0x24, 0x21
VERIFY_OPS = [0x2F, 0xAF, 0x8F]
WRITE_VERIFY_OPS = [0x2E, 0xAE, 0x8E]
DPO = 0x10


def bytchk(value: int) -> int:
    return value << 1


def pattern(blocks: int, seed: int = 1) -> bytes:
    return bytes((seed + 7 * i) % 253 for i in range(blocks * BS))


@pytest.fixture
def emu(tmp_path):
    em = make_emulator(str(tmp_path / "lu.img"))
    em.backend.write(10 * BS, pattern(4))  # blocks 10-13 hold a known pattern
    em.backend.write(20 * BS, pattern(1, 9) * 3)  # blocks 20-22 hold one block three times
    yield em
    em.backend.close()


def miscompare_at(reply) -> int:
    status, sense, data = reply
    assert status == 0x02 and data is None
    s = parse_sense(sense)
    assert (s.key, s.asc, s.ascq) == (MISCOMPARE, 0x1D, 0x00), s
    assert s.valid, "INFORMATION must be valid"
    return s.information


def flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x80
    return bytes(out)


# --- VERIFY -----------------------------------------------------------------------------

# (name, lba, blocks, byte 1, data-out, expected) — expected is "good", a sense ASC, or
# ("miscompare", offset).
_VERIFY_ROWS = [
    ("BYTCHK=00b: a range check, no data-out", 10, 4, bytchk(0), b"", "good"),
    ("BYTCHK=00b, zero length: nothing verified", 10, 0, bytchk(0), b"", "good"),
    ("BYTCHK=01b, equal: GOOD", 10, 4, bytchk(1), pattern(4), "good"),
    ("BYTCHK=01b, DPO accepted and ignored", 10, 4, bytchk(1) | DPO, pattern(4), "good"),
    ("BYTCHK=01b, first byte differs", 10, 4, bytchk(1), flip(pattern(4), 0), ("miscompare", 0)),
    (
        "BYTCHK=01b, offset counts from the start of the compared data",
        10,
        4,
        bytchk(1),
        flip(flip(pattern(4), 3 * BS + 17), 3 * BS + 100),
        ("miscompare", 3 * BS + 17),
    ),
    ("BYTCHK=01b, zero length: nothing compared", 10, 0, bytchk(1), b"", "good"),
    ("BYTCHK=01b, data-out one block short", 10, 4, bytchk(1), pattern(3), INVALID_FIELD),
    ("BYTCHK=11b, one block equal to every block", 20, 3, bytchk(3), pattern(1, 9), "good"),
    ("BYTCHK=11b, the first block differs", 19, 3, bytchk(3), pattern(1, 9), ("miscompare", 0)),
    (
        "BYTCHK=11b, data-out must be exactly one block",
        20,
        3,
        bytchk(3),
        pattern(3, 9),
        INVALID_FIELD,
    ),
    ("BYTCHK=10b is reserved", 10, 4, bytchk(2), pattern(4), INVALID_FIELD),
    ("VRPROTECT other than 0 (no protection information)", 10, 4, 0x20, b"", INVALID_FIELD),
    ("LBA past the end, BYTCHK=00b", NUM, 1, bytchk(0), b"", LBA_RANGE),
    ("LBA past the end, BYTCHK=01b", NUM, 1, bytchk(1), pattern(1), LBA_RANGE),
    ("LBA past the end, BYTCHK=11b", NUM + 5, 1, bytchk(3), pattern(1), LBA_RANGE),
    ("range runs past the end", NUM - 2, 3, bytchk(1), pattern(3), LBA_RANGE),
    ("LBA past the end with zero length", NUM, 0, bytchk(0), b"", LBA_RANGE),
    ("the last block is in range", NUM - 1, 1, bytchk(1), bytes(BS), "good"),
]


@pytest.mark.parametrize("opcode", VERIFY_OPS)
@pytest.mark.parametrize(
    ("lba", "blocks", "flags", "data", "expected"),
    [row[1:] for row in _VERIFY_ROWS],
    ids=[row[0] for row in _VERIFY_ROWS],
)
def test_verify(emu, opcode, lba, blocks, flags, data, expected):
    before = emu.backend.read(0, NUM * BS)
    reply = emu.emulate(block_cdb(opcode, lba, blocks, flags), data)
    if expected == "good":
        assert assert_good(reply) is None
    elif isinstance(expected, tuple):
        assert miscompare_at(reply) == expected[1]
    else:
        assert_check(reply, ILLEGAL, expected)
    assert emu.backend.read(0, NUM * BS) == before  # VERIFY never writes


def test_verify_one_block_miscompare_in_a_later_block(emu):
    """BYTCHK=11b: the offset is the block's index times the block size plus the byte."""
    expected = pattern(1, 9)
    emu.backend.write(22 * BS + 300, bytes([expected[300] ^ 0xFF]))
    assert miscompare_at(emu.emulate(block_cdb(0x8F, 20, 3, bytchk(3)), expected)) == 2 * BS + 300


def test_verify_beyond_max_transfer(tmp_path):
    em = make_emulator(str(tmp_path / "m"), max_transfer_bytes=8 * BS)
    assert_check(em.emulate(block_cdb(0x2F, 0, 9, bytchk(0))), ILLEGAL, INVALID_FIELD)
    assert_good(em.emulate(block_cdb(0x2F, 0, 8, bytchk(0))))
    em.backend.close()


def test_verify_field_pointer_names_bytchk(emu):
    s = parse_sense(emu.emulate(block_cdb(0x2F, 0, 1, bytchk(2)), bytes(BS))[1])
    assert s.field == (1, 1, 2)  # CDB, byte 1, BYTCHK's leftmost bit


def test_verify_reads_large_ranges_in_chunks(tmp_path):
    """A compare longer than the 1 MiB read chunk still reports the offset in the range."""
    em = make_emulator(str(tmp_path / "big"), size=8 << 20)
    blocks = (3 << 20) // BS
    data = bytes(blocks * BS)
    em.backend.write((2 << 20) + 5, b"\x01")
    assert miscompare_at(em.emulate(block_cdb(0x8F, 0, blocks, bytchk(1)), data)) == (2 << 20) + 5
    assert (
        miscompare_at(em.emulate(block_cdb(0x8F, 0, blocks, bytchk(3)), bytes(BS))) == (2 << 20) + 5
    )
    em.backend.close()


# --- WRITE AND VERIFY -------------------------------------------------------------------

_WV_REFUSED = [
    ("BYTCHK=10b is reserved", 0, 2, bytchk(2), pattern(2), INVALID_FIELD),
    ("BYTCHK=11b is reserved for WRITE AND VERIFY", 0, 2, bytchk(3), pattern(2), INVALID_FIELD),
    ("WRPROTECT other than 0", 0, 2, 0x40, pattern(2), INVALID_FIELD),
    ("LBA past the end", NUM, 1, 0, pattern(1), LBA_RANGE),
    ("range runs past the end", NUM - 1, 2, bytchk(1), pattern(2), LBA_RANGE),
    ("data-out shorter than TRANSFER LENGTH", 0, 2, 0, pattern(1), INVALID_FIELD),
    ("data-out longer than TRANSFER LENGTH", 0, 1, 0, pattern(2), INVALID_FIELD),
]


@pytest.mark.parametrize("opcode", WRITE_VERIFY_OPS)
@pytest.mark.parametrize(
    ("lba", "blocks", "flags", "data", "asc"),
    [row[1:] for row in _WV_REFUSED],
    ids=[row[0] for row in _WV_REFUSED],
)
def test_write_and_verify_refusals_write_nothing(tmp_path, opcode, lba, blocks, flags, data, asc):
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    assert_check(em.emulate(block_cdb(opcode, lba, blocks, flags), data), ILLEGAL, asc)
    assert spy.calls == []
    spy.close()


@pytest.mark.parametrize("opcode", WRITE_VERIFY_OPS)
@pytest.mark.parametrize("check", [0, 1])
@pytest.mark.parametrize("write_cache", [False, True])
def test_write_and_verify_writes_then_makes_durable(tmp_path, opcode, check, write_cache):
    """The data lands and is flushed before GOOD even with the write cache on (implied FUA)."""
    em, spy = spy_emulator(str(tmp_path / "lu.img"), write_cache=write_cache)
    data = pattern(3, opcode)
    assert assert_good(em.emulate(block_cdb(opcode, 7, 3, bytchk(check) | DPO), data)) is None
    assert spy.inner.read(7 * BS, 3 * BS) == data
    assert spy.calls[:2] == ["write", "flush"]
    spy.close()


@pytest.mark.parametrize("opcode", WRITE_VERIFY_OPS)
def test_write_and_verify_miscompare_after_the_write(tmp_path, opcode):
    """BYTCHK=01b compares what the medium returns after the write; a difference is
    MISCOMPARE with the offset, and the write has happened (SBC-4 orders write, then verify)."""
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    spy.corrupt_at = 5 * BS + BS + 33  # the medium returns block 6, byte 33 wrong
    data = pattern(2, 3)
    assert miscompare_at(em.emulate(block_cdb(opcode, 5, 2, bytchk(1)), data)) == BS + 33
    assert spy.inner.read(5 * BS, 2 * BS) == data
    # BYTCHK=00b reads back without comparing: the same medium passes
    assert_good(em.emulate(block_cdb(opcode, 5, 2, bytchk(0)), data))
    spy.close()


def test_write_and_verify_zero_length(tmp_path):
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    assert_good(em.emulate(block_cdb(0x2E, 3, 0, bytchk(1)), b""))
    assert spy.calls == []
    spy.close()


def test_write_and_verify_read_only_and_max_transfer(tmp_path):
    ro = make_emulator(str(tmp_path / "ro"), read_only=True)
    assert_check(ro.emulate(block_cdb(0x2E, 0, 1), pattern(1)), DATA_PROTECT, 0x27)
    ro.backend.close()
    em = make_emulator(str(tmp_path / "m"), max_transfer_bytes=4 * BS)
    assert_check(em.emulate(block_cdb(0x8E, 0, 5), pattern(5)), ILLEGAL, INVALID_FIELD)
    assert_good(em.emulate(block_cdb(0x8E, 0, 4), pattern(4)))
    em.backend.close()
