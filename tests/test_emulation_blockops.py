"""READ/WRITE slow path, SYNCHRONIZE CACHE, WRITE SAME, UNMAP, COMPARE AND WRITE, VERIFY,
START STOP UNIT — against a real file through FileDataBackend."""

from __future__ import annotations

import os
import struct

import pytest
from emulation_support import (
    assert_check,
    assert_good,
    block_cdb,
    caw,
    make_emulator,
    parse_sense,
    rw10,
    rw16,
    spy_emulator,
    unmap_cdb,
    unmap_params,
)

BS = 512
NUM = 2048  # 1 MiB image
ILLEGAL, INVALID_FIELD, LBA_RANGE, PARAM_LEN, PARAM_FIELD = 0x5, 0x24, 0x21, 0x1A, 0x26


@pytest.fixture
def emu(tmp_path):
    em = make_emulator(str(tmp_path / "lu.img"))
    yield em
    em.backend.close()


def pattern(blocks: int, seed: int = 1) -> bytes:
    return bytes((seed + i) % 251 for i in range(blocks * BS))


def on_disk(em, lba: int, blocks: int) -> bytes:
    with open(em.backend.path, "rb") as f:
        f.seek(lba * BS)
        return f.read(blocks * BS)


def ws(lba: int, blocks: int, flags: int = 0, sixteen: bool = True) -> bytes:
    if sixteen:
        return struct.pack(">BBQIBB", 0x93, flags, lba, blocks, 0, 0)
    return struct.pack(">BBIBHB", 0x41, flags, lba, 0, blocks, 0)


# --- READ / WRITE -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [6, 10, 12, 16])
def test_write_then_read_every_cdb_size(emu, size):
    data = pattern(3, seed=size)
    lba = 100 + size
    if size == 6:
        wcdb, rcdb = bytes([0x0A, 0, 0, lba, 3, 0]), bytes([0x08, 0, 0, lba, 3, 0])
    elif size == 10:
        wcdb, rcdb = rw10(0x2A, lba, 3), rw10(0x28, lba, 3)
    elif size == 12:
        wcdb = struct.pack(">BBIIBB", 0xAA, 0, lba, 3, 0, 0)
        rcdb = struct.pack(">BBIIBB", 0xA8, 0, lba, 3, 0, 0)
    else:
        wcdb, rcdb = rw16(0x8A, lba, 3), rw16(0x88, lba, 3)
    assert assert_good(emu.emulate(wcdb, data)) is None
    assert on_disk(emu, lba, 3) == data
    assert assert_good(emu.emulate(rcdb)) == data


def test_six_byte_zero_length_means_256_blocks(emu):
    assert len(assert_good(emu.emulate(bytes([0x08, 0, 0, 0, 0, 0])))) == 256 * BS
    near_end = (NUM - 100).to_bytes(3, "big")
    assert_check(emu.emulate(bytes([0x08, *near_end, 0, 0])), ILLEGAL, LBA_RANGE)


def test_six_byte_lba_is_21_bits(emu):
    # LBA 0x1FFFFF is far past the end: out of range, not wrapped into the high bits of byte 1
    assert_check(emu.emulate(bytes([0x08, 0x1F, 0xFF, 0xFF, 1, 0])), ILLEGAL, LBA_RANGE)
    # byte 1 bits 7-5 are reserved (the SCSI-2 LUN field): refused, not read as LBA bits
    assert_check(emu.emulate(bytes([0x08, 0xE0, 0, 0, 1, 0])), ILLEGAL, INVALID_FIELD)
    assert_good(emu.emulate(bytes([0x08, 0x00, 0x00, 0x01, 1, 0])))


def test_zero_transfer_length_is_good_and_does_nothing(emu):
    assert assert_good(emu.emulate(rw10(0x28, 5, 0))) is None
    assert assert_good(emu.emulate(rw16(0x8A, 5, 0), b"")) is None
    assert_check(emu.emulate(rw10(0x28, NUM, 0)), ILLEGAL, LBA_RANGE)  # LBA still checked


@pytest.mark.parametrize(
    ("lba", "blocks"), [(NUM, 1), (NUM - 1, 2), (2**64 - 1, 2), (2**32 - 1, 1)]
)
def test_out_of_range(emu, lba, blocks):
    cdb = rw16(0x88, lba, blocks)
    assert_check(emu.emulate(cdb), ILLEGAL, LBA_RANGE)
    assert_check(emu.emulate(rw16(0x8A, lba, blocks), pattern(blocks)), ILLEGAL, LBA_RANGE)


def test_last_block_is_in_range(emu):
    assert_good(emu.emulate(rw16(0x8A, NUM - 1, 1), pattern(1)))
    assert assert_good(emu.emulate(rw16(0x88, NUM - 1, 1))) == pattern(1)


def test_write_length_mismatch_writes_nothing(emu):
    assert_check(emu.emulate(rw10(0x2A, 0, 2), pattern(1)), ILLEGAL, INVALID_FIELD)
    assert on_disk(emu, 0, 2) == bytes(2 * BS)


def test_protect_fields_and_max_transfer(emu, tmp_path):
    assert_check(emu.emulate(rw10(0x28, 0, 1, flags=0x20)), ILLEGAL, INVALID_FIELD)
    small = make_emulator(str(tmp_path / "s"), max_transfer_bytes=4 * BS)
    assert_good(small.emulate(rw10(0x28, 0, 4)))
    assert_check(small.emulate(rw10(0x28, 0, 5)), ILLEGAL, INVALID_FIELD)
    small.backend.close()


def test_fua_write_lands(emu):
    assert_good(emu.emulate(rw10(0x2A, 7, 1, flags=0x08), pattern(1)))
    assert on_disk(emu, 7, 1) == pattern(1)


def test_read_only_device_refuses_writes(tmp_path):
    em = make_emulator(str(tmp_path / "ro"), read_only=True)
    for cdb, data in [
        (rw10(0x2A, 0, 1), pattern(1)),
        (ws(0, 1), bytes(BS)),
        (unmap_cdb(24), unmap_params([(0, 1)])),
        (caw(0, 1), bytes(2 * BS)),
    ]:
        assert_check(em.emulate(cdb, data), 0x7, 0x27)  # DATA PROTECT, WRITE PROTECTED
    assert_good(em.emulate(rw10(0x28, 0, 1)))
    em.backend.close()


def test_backend_error_is_medium_error(emu):
    os.close(emu.backend._fd)  # the backend's file vanishes under it
    s = assert_check(emu.emulate(rw10(0x28, 0, 1)), 0x3, 0x11)
    assert not s.valid
    assert_check(emu.emulate(rw10(0x2A, 0, 1), pattern(1)), 0x3, 0x0C)
    emu.backend._fd = -1


# --- SYNCHRONIZE CACHE, VERIFY, START STOP UNIT -----------------------------------------


def test_synchronize_cache(emu):
    assert assert_good(emu.emulate(rw10(0x35, 0, 0))) is None  # whole medium
    assert_good(emu.emulate(rw16(0x91, NUM - 2, 2)))
    assert_check(emu.emulate(rw16(0x91, NUM - 1, 2)), ILLEGAL, LBA_RANGE)
    assert_check(emu.emulate(rw10(0x35, NUM, 0)), ILLEGAL, LBA_RANGE)


def test_verify_and_start_stop(emu):
    assert_good(emu.emulate(rw10(0x2F, 0, 10)))
    assert_check(emu.emulate(rw16(0x8F, NUM, 1)), ILLEGAL, LBA_RANGE)
    assert_check(emu.emulate(rw10(0x2F, 0, 1, flags=0x02)), ILLEGAL, INVALID_FIELD)  # BYTCHK
    assert assert_good(emu.emulate(bytes([0x1B, 0, 0, 0, 0x02, 0]))) is None  # eject: ignored
    assert_check(emu.emulate(bytes([0x1B, 0, 0, 0])), ILLEGAL, INVALID_FIELD)


# --- WRITE SAME -------------------------------------------------------------------------


@pytest.mark.parametrize("sixteen", [True, False])
def test_write_same_replicates_block(emu, sixteen):
    block = pattern(1, seed=9)
    assert_good(emu.emulate(ws(10, 5, sixteen=sixteen), block))
    assert on_disk(emu, 10, 5) == block * 5
    assert on_disk(emu, 15, 1) == bytes(BS)


def test_write_same_unmap_zero_block_discards(emu):
    emu.emulate(rw10(0x2A, 0, 16), pattern(16))
    assert_good(emu.emulate(ws(0, 8, flags=0x08), bytes(BS)))
    assert on_disk(emu, 0, 8) == bytes(8 * BS)
    assert on_disk(emu, 8, 8) == pattern(16)[8 * BS :]


def test_write_same_unmap_with_data_still_writes(emu):
    block = pattern(1, seed=3)
    assert_good(emu.emulate(ws(0, 4, flags=0x08), block))
    assert on_disk(emu, 0, 4) == block * 4


def test_write_same_ndob(emu):
    emu.emulate(rw10(0x2A, 0, 4), pattern(4))
    assert_good(emu.emulate(ws(0, 4, flags=0x08 | 0x01), b""))
    assert on_disk(emu, 0, 4) == bytes(4 * BS)
    assert_check(emu.emulate(ws(0, 4, flags=0x01), bytes(BS)), ILLEGAL, PARAM_LEN)


@pytest.mark.parametrize(
    ("cdb", "data", "asc"),
    [
        (ws(0, 0), bytes(BS), INVALID_FIELD),  # WSNZ
        (ws(0, 0x10001), bytes(BS), INVALID_FIELD),  # beyond MAXIMUM WRITE SAME LENGTH
        (ws(0, 1, flags=0x10), bytes(BS), INVALID_FIELD),  # ANCHOR
        (ws(0, 1, flags=0x20), bytes(BS), INVALID_FIELD),  # WRPROTECT
        (ws(NUM - 1, 2), bytes(BS), LBA_RANGE),
        (ws(0, 1), bytes(BS - 1), PARAM_LEN),
        (ws(0, 1, sixteen=False), b"", PARAM_LEN),
    ],
)
def test_write_same_errors(emu, cdb, data, asc):
    assert_check(emu.emulate(cdb, data), ILLEGAL, asc)


def test_write_same_unmap_needs_thin(tmp_path):
    em = make_emulator(str(tmp_path / "full"), thin=False)
    assert_check(em.emulate(ws(0, 1, flags=0x08), bytes(BS)), ILLEGAL, INVALID_FIELD)
    assert_check(em.emulate(unmap_cdb(24), unmap_params([(0, 1)])), ILLEGAL, 0x20)
    em.backend.close()


# --- UNMAP ------------------------------------------------------------------------------


def test_unmap_zeroes_ranges(emu):
    emu.emulate(rw10(0x2A, 0, 32), pattern(32))
    params = unmap_params([(0, 4), (10, 2), (20, 0)])
    assert_good(emu.emulate(unmap_cdb(len(params)), params))
    got = on_disk(emu, 0, 32)
    want = bytearray(pattern(32))
    want[0 : 4 * BS] = bytes(4 * BS)
    want[10 * BS : 12 * BS] = bytes(2 * BS)
    assert got == bytes(want)


def test_unmap_zero_length_and_partial_descriptor(emu):
    assert_good(emu.emulate(unmap_cdb(0), b""))
    emu.emulate(rw10(0x2A, 0, 2), pattern(2))
    params = unmap_params([(0, 1)])
    # a block descriptor data length of 20: one whole descriptor + 4 bytes that are ignored
    odd = params[:2] + struct.pack(">H", 20) + params[4:] + b"\xff" * 4
    assert_good(emu.emulate(unmap_cdb(len(odd)), odd))
    assert on_disk(emu, 0, 2) == bytes(BS) + pattern(2)[BS:]


def _bad_unmaps():
    one = unmap_params([(0, 1)])
    yield unmap_cdb(24, anchor=1), one, INVALID_FIELD
    yield unmap_cdb(7), one[:7], PARAM_LEN  # shorter than the header
    yield unmap_cdb(24), one[:20], PARAM_LEN  # data-out shorter than PARAMETER LIST LENGTH
    yield unmap_cdb(24), struct.pack(">HH", 22, 32) + one[4:], PARAM_LEN  # descs overrun
    yield unmap_cdb(24), struct.pack(">HH", 40, 16) + one[4:], PARAM_LEN  # data length overruns
    many = unmap_params([(i, 1) for i in range(257)])
    yield unmap_cdb(len(many)), many, PARAM_FIELD  # > MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
    huge = unmap_params([(0, 1), (0, 0x400000)])
    yield unmap_cdb(len(huge)), huge, PARAM_FIELD  # > MAXIMUM UNMAP LBA COUNT
    past = unmap_params([(0, 1), (NUM - 1, 2)])
    yield unmap_cdb(len(past)), past, LBA_RANGE
    wrap = unmap_params([(2**64 - 1, 2)])
    yield unmap_cdb(len(wrap)), wrap, LBA_RANGE


@pytest.mark.parametrize(("cdb", "data", "asc"), list(_bad_unmaps()))
def test_unmap_errors_change_nothing(emu, cdb, data, asc):
    emu.emulate(rw10(0x2A, 0, 4), pattern(4))
    assert_check(emu.emulate(cdb, data), ILLEGAL, asc)
    assert on_disk(emu, 0, 4) == pattern(4)  # the valid first descriptor was not applied


def test_unmap_punches_holes_on_tmpfs():
    path = f"/dev/shm/tcmu-pr-test-unmap-{os.getpid()}"
    em = make_emulator(path, size=4 << 20)
    try:
        blocks = (4 << 20) // BS
        full = pattern(2048)
        for lba in range(0, blocks, 2048):
            assert_good(em.emulate(rw16(0x8A, lba, 2048), full))
        before = os.stat(path).st_blocks
        params = unmap_params([(0, blocks // 2)])
        assert_good(em.emulate(unmap_cdb(len(params)), params))
        after = os.stat(path).st_blocks
        assert after <= before - (2 << 20) // 512 + 8  # about 2 MiB of 512-byte units freed
        assert os.path.getsize(path) == 4 << 20  # KEEP_SIZE
        assert assert_good(em.emulate(rw16(0x88, 0, 8))) == bytes(8 * BS)
    finally:
        em.backend.close()
        os.unlink(path)


# --- COMPARE AND WRITE ------------------------------------------------------------------


def test_compare_and_write_success(emu):
    old, new = pattern(1, 1), pattern(1, 2)
    emu.emulate(rw10(0x2A, 5, 1), old)
    assert assert_good(emu.emulate(caw(5, 1), old + new)) is None
    assert on_disk(emu, 5, 1) == new


@pytest.mark.parametrize("offset", [0, 1, 300, BS - 1])
def test_compare_and_write_miscompare_reports_offset(emu, offset):
    old = pattern(1, 1)
    emu.emulate(rw10(0x2A, 5, 1), old)
    wrong = bytearray(old)
    wrong[offset] ^= 0xFF
    wrong[-1] ^= 0x01 if offset != BS - 1 else 0
    status, sense, data = emu.emulate(caw(5, 1), bytes(wrong) + pattern(1, 2))
    assert status == 0x02 and data is None
    s = parse_sense(sense)
    assert (s.key, s.asc, s.ascq) == (0xE, 0x1D, 0x00)
    assert s.valid and s.information == offset
    assert on_disk(emu, 5, 1) == old


def test_compare_and_write_multi_block_offset(tmp_path):
    em = make_emulator(str(tmp_path / "m"), max_compare_and_write_lbas=4)
    old = pattern(4, 7)
    em.emulate(rw10(0x2A, 0, 4), old)
    wrong = bytearray(old)
    wrong[3 * BS + 17] ^= 0x55
    s = assert_check(em.emulate(caw(0, 4), bytes(wrong) + pattern(4, 8)), 0xE, 0x1D)
    assert s.information == 3 * BS + 17
    assert_good(em.emulate(caw(0, 4, flags=0x08), old + pattern(4, 8)))  # FUA
    assert on_disk(em, 0, 4) == pattern(4, 8)
    em.backend.close()


@pytest.mark.parametrize(
    ("cdb", "data", "asc"),
    [
        (caw(0, 2), bytes(4 * BS), INVALID_FIELD),  # > MAXIMUM COMPARE AND WRITE LENGTH
        (caw(0, 255), bytes(510 * BS), INVALID_FIELD),
        (caw(NUM, 2), bytes(4 * BS), INVALID_FIELD),  # the length check comes first
        (caw(0, 1, flags=0x20), bytes(2 * BS), INVALID_FIELD),
        (caw(NUM, 1), bytes(2 * BS), LBA_RANGE),
        (caw(0, 1), bytes(BS), PARAM_LEN),
    ],
)
def test_compare_and_write_errors(emu, cdb, data, asc):
    before = on_disk(emu, 0, 4)
    assert_check(emu.emulate(cdb, data), ILLEGAL, asc)
    assert on_disk(emu, 0, 4) == before


@pytest.mark.parametrize("limit", [1, 4, 255])
def test_compare_and_write_length_follows_block_limits(tmp_path, limit):
    """SBC-4 COMPARE AND WRITE: NUMBER OF LOGICAL BLOCKS above the Block Limits VPD MAXIMUM
    COMPARE AND WRITE LENGTH is INVALID FIELD IN CDB; up to it, the command runs."""
    em = make_emulator(str(tmp_path / "c"), max_compare_and_write_lbas=limit)
    vpd = assert_good(em.emulate(bytes([0x12, 1, 0xB0, 0, 64, 0])))
    assert vpd[5] == limit
    assert_good(em.emulate(caw(0, limit), bytes(limit * BS) + pattern(limit)))
    if limit < 255:
        s = assert_check(em.emulate(caw(0, limit + 1), bytes(2 * (limit + 1) * BS)), 5, 0x24)
        assert s.field == (1, 13, 7)  # NUMBER OF LOGICAL BLOCKS
    assert on_disk(em, 0, limit) == pattern(limit)
    em.backend.close()


def test_compare_and_write_zero_blocks(emu):
    assert assert_good(emu.emulate(caw(0, 0), b"")) is None


# --- ORWRITE (16) -----------------------------------------------------------------------


def test_orwrite_ors_data_into_the_medium(emu):
    old = bytes([0x0F, 0x30, 0x00, 0xFF]) * (BS // 4)
    emu.emulate(rw10(0x2A, 9, 1), old)
    data = bytes([0xF0, 0x03, 0x00, 0x00]) * (BS // 4)
    assert assert_good(emu.emulate(block_cdb(0x8B, 9, 1, 0x18), data)) is None  # DPO, FUA
    assert on_disk(emu, 9, 1) == bytes([0xFF, 0x33, 0x00, 0xFF]) * (BS // 4)
    assert on_disk(emu, 10, 1) == bytes(BS)


@pytest.mark.parametrize(
    ("cdb", "data", "asc"),
    [
        (block_cdb(0x8B, NUM, 1), bytes(BS), LBA_RANGE),
        (block_cdb(0x8B, NUM - 1, 2), bytes(2 * BS), LBA_RANGE),
        (block_cdb(0x8B, 0, 1, 0x20), bytes(BS), INVALID_FIELD),  # ORPROTECT
        (block_cdb(0x8B, 0, 2), bytes(BS), INVALID_FIELD),  # data-out != TRANSFER LENGTH
    ],
)
def test_orwrite_errors_change_nothing(tmp_path, cdb, data, asc):
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    assert_check(em.emulate(cdb, data), ILLEGAL, asc)
    assert spy.calls == []
    spy.close()


def test_orwrite_limits_and_zero_length(tmp_path):
    em, spy = spy_emulator(str(tmp_path / "lu.img"), max_transfer_bytes=2 * BS)
    assert_check(em.emulate(block_cdb(0x8B, 0, 3), bytes(3 * BS)), ILLEGAL, INVALID_FIELD)
    assert_good(em.emulate(block_cdb(0x8B, 0, 0), b""))
    assert spy.calls == []
    spy.close()
    ro = make_emulator(str(tmp_path / "ro"), read_only=True)
    assert_check(ro.emulate(block_cdb(0x8B, 0, 1), bytes(BS)), 0x7, 0x27)
    ro.backend.close()


def test_orwrite_is_not_offered_without_an_atomic_or(tmp_path):
    """A backend without an atomic OR (RBD) does not have ORWRITE at all."""
    em, spy = spy_emulator(str(tmp_path / "lu.img"), can_or_write=False)
    assert_check(em.emulate(block_cdb(0x8B, 0, 1), bytes(BS)), ILLEGAL, 0x20)
    one = assert_good(em.emulate(struct.pack(">BBBBHIBB", 0xA3, 0x0C, 1, 0x8B, 0, 64, 0, 0)))
    assert one[1] & 0x07 == 1  # SUPPORT: not supported
    assert spy.calls == []
    spy.close()


# --- fields every command shares ------------------------------------------------------

# Every command with a PROTECT field (byte 1, bits 7-5): no protection information here.
_PROTECTED = [
    (rw10(0x28, 0, 1), b""),
    (block_cdb(0xA8, 0, 1), b""),
    (rw16(0x88, 0, 1), b""),
    (rw10(0x2A, 0, 1), bytes(BS)),
    (block_cdb(0xAA, 0, 1), bytes(BS)),
    (rw16(0x8A, 0, 1), bytes(BS)),
    (block_cdb(0x2F, 0, 1, 0x02), bytes(BS)),
    (block_cdb(0xAF, 0, 1, 0x02), bytes(BS)),
    (block_cdb(0x8F, 0, 1, 0x02), bytes(BS)),
    (block_cdb(0x2E, 0, 1), bytes(BS)),
    (block_cdb(0xAE, 0, 1), bytes(BS)),
    (block_cdb(0x8E, 0, 1), bytes(BS)),
    (ws(0, 1, sixteen=False), bytes(BS)),
    (ws(0, 1), bytes(BS)),
    (caw(0, 1), bytes(2 * BS)),
    (block_cdb(0x8B, 0, 1), bytes(BS)),
]


@pytest.mark.parametrize(("cdb", "data"), _PROTECTED, ids=[f"{c[0]:02x}" for c, _ in _PROTECTED])
@pytest.mark.parametrize("protect", [1, 2, 4, 7])
def test_protect_field_is_refused_on_every_command(tmp_path, cdb, data, protect):
    """SBC-4: RD/WR/VR/ORPROTECT other than 0 without protection information is INVALID FIELD
    IN CDB, before anything is read or written; the pointer names the field's top bit set."""
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    bad = bytes([cdb[0], cdb[1] | protect << 5]) + cdb[2:]
    s = assert_check(em.emulate(bad, data), ILLEGAL, INVALID_FIELD)
    assert s.field == (1, 1, 4 + protect.bit_length())
    assert spy.calls == []
    # the same CDB with PROTECT 0 (and DPO, where the command has one: WRITE SAME has ANCHOR
    # there) is fine
    dpo = 0 if cdb[0] in (0x41, 0x93) else 0x10
    assert_good(em.emulate(bytes([cdb[0], cdb[1] | dpo]) + cdb[2:], data))
    spy.close()


# A valid CDB of every medium command with an LBA (or range) off the medium: LOGICAL BLOCK
# ADDRESS OUT OF RANGE (SBC-4), never INVALID FIELD IN CDB, and nothing touched.
_OFF_THE_END = [
    ("READ(6)", block_cdb(0x08, NUM, 1), b""),
    ("READ(10)", rw10(0x28, NUM, 1), b""),
    ("READ(12)", block_cdb(0xA8, NUM, 1), b""),
    ("READ(16)", rw16(0x88, NUM, 1), b""),
    ("READ(16) huge LBA", rw16(0x88, 2**64 - 1, 1), b""),
    ("WRITE(6)", block_cdb(0x0A, NUM, 1), bytes(BS)),
    ("WRITE(10)", rw10(0x2A, NUM - 1, 2), bytes(2 * BS)),
    ("WRITE(12)", block_cdb(0xAA, NUM, 1), bytes(BS)),
    ("WRITE(16)", rw16(0x8A, NUM, 1, 0x08), bytes(BS)),
    ("VERIFY(10) BYTCHK=00b", block_cdb(0x2F, NUM, 1), b""),
    ("VERIFY(10) BYTCHK=01b", block_cdb(0x2F, NUM, 1, 0x02), bytes(BS)),
    ("VERIFY(12) BYTCHK=11b", block_cdb(0xAF, NUM, 1, 0x06), bytes(BS)),
    ("VERIFY(16) DPO", block_cdb(0x8F, NUM, 1, 0x12), bytes(BS)),
    ("WRITE AND VERIFY(10)", block_cdb(0x2E, NUM, 1, 0x02), bytes(BS)),
    ("WRITE AND VERIFY(12)", block_cdb(0xAE, NUM, 1), bytes(BS)),
    ("WRITE AND VERIFY(16)", block_cdb(0x8E, NUM - 1, 2), bytes(2 * BS)),
    ("WRITE SAME(10)", ws(NUM, 1, sixteen=False), bytes(BS)),
    ("WRITE SAME(16) UNMAP", ws(NUM - 1, 2, 0x08), bytes(BS)),
    ("COMPARE AND WRITE", caw(NUM, 1, 0x08), bytes(2 * BS)),
    ("ORWRITE(16)", block_cdb(0x8B, NUM, 1), bytes(BS)),
    ("SYNCHRONIZE CACHE(10)", rw10(0x35, NUM, 0), b""),
    ("SYNCHRONIZE CACHE(16)", rw16(0x91, NUM - 1, 2), b""),
    ("UNMAP", unmap_cdb(24), unmap_params([(NUM, 1)])),
]


@pytest.mark.parametrize(
    ("cdb", "data"), [r[1:] for r in _OFF_THE_END], ids=[r[0] for r in _OFF_THE_END]
)
def test_valid_cdb_off_the_medium_is_lba_out_of_range(tmp_path, cdb, data):
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    assert_check(em.emulate(cdb, data), ILLEGAL, LBA_RANGE)
    assert spy.calls == []
    spy.close()
