"""When data must be on stable storage before GOOD: FUA, the write cache setting (WCE) and
SYNCHRONIZE CACHE — seen as the order of backend calls."""

from __future__ import annotations

import struct

import pytest
from emulation_support import (
    assert_check,
    assert_good,
    block_cdb,
    caw,
    parse_mode,
    spy_emulator,
    unmap_cdb,
    unmap_params,
)

BS = 512
NUM = 2048
FUA = 0x08


def ws16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", 0x93, flags, lba, blocks, 0, 0)


# (name, CDB, data-out, the backend call that writes)
_WRITES = [
    ("WRITE(6)", block_cdb(0x0A, 4, 2), bytes(2 * BS), "write"),
    ("WRITE(10)", block_cdb(0x2A, 4, 2), bytes(2 * BS), "write"),
    ("WRITE(12)", block_cdb(0xAA, 4, 2), bytes(2 * BS), "write"),
    ("WRITE(16)", block_cdb(0x8A, 4, 2), bytes(2 * BS), "write"),
    ("COMPARE AND WRITE", caw(4, 1), bytes(BS) + b"\x01" * BS, "compare_and_write"),
    ("ORWRITE(16)", block_cdb(0x8B, 4, 2), b"\x02" * 2 * BS, "or_write"),
    ("WRITE SAME(16)", ws16(4, 2), b"\x03" * BS, "write"),
    ("WRITE SAME(16) UNMAP", ws16(4, 2, 0x08), bytes(BS), "discard"),
    ("UNMAP", unmap_cdb(24), unmap_params([(4, 2)]), "discard"),
]
_IDS = [row[0] for row in _WRITES]


@pytest.mark.parametrize(("cdb", "data", "call"), [r[1:] for r in _WRITES], ids=_IDS)
def test_write_cache_off_means_durable_at_good(tmp_path, cdb, data, call):
    """WCE=0 (write_cache=False) promises every write is durable at GOOD: flushed after it."""
    em, spy = spy_emulator(str(tmp_path / "lu.img"), write_cache=False)
    assert_good(em.emulate(cdb, data))
    assert spy.calls[-2:] == [call, "flush"]
    spy.close()


@pytest.mark.parametrize(("cdb", "data", "call"), [r[1:] for r in _WRITES], ids=_IDS)
def test_write_cache_on_without_fua_does_not_flush(tmp_path, cdb, data, call):
    em, spy = spy_emulator(str(tmp_path / "lu.img"), write_cache=True)
    assert_good(em.emulate(cdb, data))
    assert "flush" not in spy.calls and call in spy.calls
    spy.close()


@pytest.mark.parametrize(
    ("cdb", "data", "call"),
    [r[1:] for r in _WRITES if r[0].split("(")[0] in ("WRITE", "COMPARE AND WRITE", "ORWRITE")
     and len(r[1]) > 6],
)  # fmt: skip
def test_fua_flushes_after_the_write_even_with_the_cache_on(tmp_path, cdb, data, call):
    em, spy = spy_emulator(str(tmp_path / "lu.img"), write_cache=True)
    fua_cdb = bytes([cdb[0], cdb[1] | FUA]) + cdb[2:]
    assert_good(em.emulate(fua_cdb, data))
    assert spy.calls[-2:] == [call, "flush"]
    spy.close()


def test_mode_page_wce_matches_the_flush_policy(tmp_path):
    for write_cache in (False, True):
        em, spy = spy_emulator(str(tmp_path / f"lu{write_cache}.img"), write_cache=write_cache)
        page = parse_mode(assert_good(em.emulate(bytes([0x1A, 0x08, 0x08, 0, 255, 0]))), False)
        assert bool(page["pages"][0x08][2] & 0x04) == write_cache
        assert_good(em.emulate(block_cdb(0x2A, 0, 1), bytes(BS)))
        assert ("flush" in spy.calls) == (not write_cache)
        spy.close()


def test_a_refused_write_does_not_flush(tmp_path):
    em, spy = spy_emulator(str(tmp_path / "lu.img"), write_cache=False)
    assert_check(em.emulate(block_cdb(0x2A, NUM, 1, FUA), bytes(BS)), 0x5, 0x21)
    assert spy.calls == []
    spy.close()


# --- SYNCHRONIZE CACHE (10)/(16): the range is checked, only then flushed ----------------

_SYNC_ROWS = [
    ("whole medium: LBA 0, NUMBER OF BLOCKS 0 = to the end", 0, 0, 0, None),
    ("a range inside the medium", 10, 20, 0, None),
    ("ending exactly at the last block", NUM - 4, 4, 0, None),
    ("from the last block to the end", NUM - 1, 0, 0, None),
    ("IMMED: answered after the flush", 0, 0, 0x02, None),
    ("LBA past the end", NUM, 1, 0, 0x21),
    ("LBA past the end, to the end", NUM, 0, 0, 0x21),
    ("range past the end", NUM - 1, 2, 0, 0x21),
    ("SYNC_NV (obsolete) refused", 0, 0, 0x04, 0x24),
]


@pytest.mark.parametrize("opcode", [0x35, 0x91])
@pytest.mark.parametrize(
    ("lba", "blocks", "flags", "asc"), [r[1:] for r in _SYNC_ROWS], ids=[r[0] for r in _SYNC_ROWS]
)
def test_synchronize_cache(tmp_path, opcode, lba, blocks, flags, asc):
    em, spy = spy_emulator(str(tmp_path / "lu.img"))
    reply = em.emulate(block_cdb(opcode, lba, blocks, flags))
    if asc is None:
        assert assert_good(reply) is None
        assert spy.calls == ["flush"]
    else:
        assert_check(reply, 0x5, asc)
        assert spy.calls == []
    spy.close()
