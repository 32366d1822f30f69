"""READ CAPACITY (10/16), MODE SENSE (6/10) and MODE SELECT."""

from __future__ import annotations

import struct

import pytest
from emulation_support import assert_check, assert_good, make_emulator, parse_mode, parse_readcap16

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.emulation import DeviceInfo, Emulator


@pytest.fixture
def emu(tmp_path):
    em = make_emulator(str(tmp_path / "lu.img"), size=3 << 20)
    yield em
    em.backend.close()


def rc10(lba: int = 0, pmi: int = 0) -> bytes:
    return struct.pack(">BBIHBB", 0x25, 0, lba, 0, pmi, 0)


def rc16(alloc: int = 32, lba: int = 0, pmi: int = 0, sa: int = 0x10) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, sa, lba, alloc, pmi, 0)


def ms6(page: int, pc: int = 0, dbd: int = 0, alloc: int = 255, subpage: int = 0) -> bytes:
    return bytes([0x1A, dbd << 3, (pc << 6) | page, subpage, alloc, 0])


def ms10(page, pc=0, dbd=0, llbaa=0, alloc=1024, subpage=0) -> bytes:
    return struct.pack(
        ">BBBB3xHB", 0x5A, (llbaa << 4) | (dbd << 3), (pc << 6) | page, subpage, alloc, 0
    )


def test_read_capacity_10(emu):
    data = assert_good(emu.emulate(rc10()))
    assert struct.unpack(">II", data) == ((3 << 20) // 512 - 1, 512)


def test_read_capacity_10_pmi_lba(emu):
    assert_good(emu.emulate(rc10(lba=5, pmi=1)))
    assert_check(emu.emulate(rc10(lba=5)), 0x5, 0x24)


def test_read_capacity_16(emu):
    f = parse_readcap16(assert_good(emu.emulate(rc16())))
    assert f == {
        "last_lba": (3 << 20) // 512 - 1,
        "block_size": 512,
        "prot_en": 0,
        "lbppbe": 0,
        "lbpme": 1,
        "lbprz": 1,
        "lowest_aligned": 0,
    }
    assert len(assert_good(emu.emulate(rc16(alloc=12)))) == 12
    assert_check(emu.emulate(rc16(lba=1)), 0x5, 0x24)
    assert_check(emu.emulate(rc16(sa=0x11)), 0x5, 0x24)  # READ LONG (16): not supported


def big_device(tmp_path, **options) -> Emulator:
    path = tmp_path / "tiny"
    path.write_bytes(bytes(4096))
    dev = DeviceInfo("big", (1 << 33) + 5, **options)  # geometry only: not backed by data
    return Emulator(dev, FileDataBackend(str(path)))


def test_read_capacity_beyond_32_bits(tmp_path):
    em = big_device(tmp_path, block_size=4096, thin=False, physical_block_exponent=3)
    assert struct.unpack(">II", assert_good(em.emulate(rc10()))) == (0xFFFFFFFF, 4096)
    f = parse_readcap16(assert_good(em.emulate(rc16())))
    assert f["last_lba"] == (1 << 33) + 4 and f["block_size"] == 4096
    assert (f["lbpme"], f["lbprz"], f["lbppbe"]) == (0, 0, 3)
    mode = parse_mode(assert_good(em.emulate(ms6(0x08))), ten=False)
    assert mode["blocks"] == 0xFFFFFFFF
    em.backend.close()


def test_mode_sense_6_caching(emu):
    m = parse_mode(assert_good(emu.emulate(ms6(0x08))), ten=False)
    assert (m["wp"], m["dpofua"], m["blocks"], m["block_len"]) == (0, 1, 6144, 512)
    page = m["pages"][0x08]
    assert len(page) == 20 and page[2] & 0x04 == 0  # WCE clear: write_cache=False


def test_mode_sense_wce_and_wp(tmp_path):
    em = make_emulator(str(tmp_path / "w"), write_cache=True, read_only=True)
    m = parse_mode(assert_good(em.emulate(ms10(0x08))), ten=True)
    assert m["wp"] == 1 and m["pages"][0x08][2] & 0x04
    changeable = parse_mode(assert_good(em.emulate(ms10(0x08, pc=1))), ten=True)
    assert changeable["pages"][0x08][2] == 0  # nothing is changeable
    em.backend.close()


def test_mode_sense_all_pages(emu):
    for cdb in (ms6(0x3F), ms10(0x3F), ms6(0x3F, subpage=0xFF)):
        m = parse_mode(assert_good(emu.emulate(cdb)), ten=cdb[0] == 0x5A)
        assert sorted(m["pages"]) == [0x08, 0x0A]
        assert len(m["pages"][0x0A]) == 12
        assert m["pages"][0x0A][3] >> 4 == 1  # QUEUE ALGORITHM MODIFIER


def test_mode_sense_dbd_and_long_lba(emu):
    m = parse_mode(assert_good(emu.emulate(ms6(0x0A, dbd=1))), ten=False)
    assert m["blocks"] is None and list(m["pages"]) == [0x0A]
    m = parse_mode(assert_good(emu.emulate(ms10(0x08, llbaa=1))), ten=True)
    assert (m["longlba"], m["blocks"], m["block_len"]) == (1, 6144, 512)
    m = parse_mode(assert_good(emu.emulate(ms10(0x08))), ten=True)
    assert (m["longlba"], m["blocks"]) == (0, 6144)


def test_mode_sense_default_equals_current(emu):
    assert emu.emulate(ms6(0x3F, pc=2)) == emu.emulate(ms6(0x3F, pc=0))


def test_mode_sense_allocation_length(emu):
    full = assert_good(emu.emulate(ms10(0x3F)))
    assert assert_good(emu.emulate(ms10(0x3F, alloc=10))) == full[:10]
    assert (
        assert_good(emu.emulate(ms6(0x3F, alloc=3)))[0]
        == len(assert_good(emu.emulate(ms6(0x3F)))) - 1
    )


@pytest.mark.parametrize(
    ("cdb", "asc"),
    [
        (ms6(0x08, pc=3), 0x39),  # saved values: SAVING PARAMETERS NOT SUPPORTED
        (ms10(0x3F, pc=3), 0x39),
        (ms6(0x1C), 0x24),  # unsupported page
        (ms6(0x08, subpage=1), 0x24),
        (ms10(0x3F, subpage=5), 0x24),
        (bytes([0x1A, 0, 8, 0]), 0x24),  # short CDB
    ],
)
def test_mode_sense_errors(emu, cdb, asc):
    assert_check(emu.emulate(cdb), 0x5, asc)


def mode_select(emu, plist: bytes, ten: bool, pf: int = 1, sp: int = 0, length=None):
    n = len(plist) if length is None else length
    flags = (pf << 4) | sp
    cdb = struct.pack(">BB5xHB", 0x55, flags, n, 0) if ten else bytes([0x15, flags, 0, 0, n, 0])
    return emu.emulate(cdb, plist)


def test_mode_select_restating_current_values_is_accepted(emu):
    sense6 = assert_good(emu.emulate(ms6(0x08)))
    plist = b"\0" + sense6[1:]  # MODE DATA LENGTH is reserved in MODE SELECT
    assert_good(mode_select(emu, plist, ten=False))
    sense10 = assert_good(emu.emulate(ms10(0x3F, dbd=1)))
    assert_good(mode_select(emu, b"\0\0" + sense10[2:], ten=True))
    assert_good(mode_select(emu, b"", ten=True))  # zero length: nothing to do


def test_mode_select_refuses_changes(emu):
    sense6 = bytearray(assert_good(emu.emulate(ms6(0x08, dbd=1))))
    sense6[0] = 0
    sense6[4 + 2] |= 0x04  # try to set WCE
    assert_check(mode_select(emu, bytes(sense6), ten=False), 0x5, 0x26)
    good = b"\0" + assert_good(emu.emulate(ms6(0x08, dbd=1)))[1:]
    assert_check(mode_select(emu, good, ten=False, sp=1), 0x5, 0x39)
    assert_check(mode_select(emu, good, ten=False, pf=0), 0x5, 0x24)
    assert_check(mode_select(emu, good[:3], ten=False), 0x5, 0x1A)  # shorter than a header
    assert_check(mode_select(emu, good[:-1], ten=False, length=len(good)), 0x5, 0x1A)
    assert_check(mode_select(emu, good[:-3], ten=False), 0x5, 0x26)  # page overruns the list
    unknown = bytes([0, 0, 0, 0, 0x1C, 2, 0, 0])
    assert_check(mode_select(emu, unknown, ten=False), 0x5, 0x26)
    bad_bd = bytes([0, 0, 0, 8]) + struct.pack(">II", 1, 512)
    assert_check(mode_select(emu, bad_bd, ten=False), 0x5, 0x26)
