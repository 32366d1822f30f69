"""REPORT SUPPORTED OPERATION CODES and the CDB usage masks it reports (SPC-4 §6.35).

The central promise: for every command the emulator reports, a CDB bit outside its CDB
USAGE DATA is refused with INVALID FIELD IN CDB and a field pointer at that bit, and a bit
inside it is accepted.  The commands come from the emulator's own report, so a new row in
the dispatch table is fuzzed here without touching this file (unless its all-zero base CDB
is not valid: then it needs a row in BASES).
"""

from __future__ import annotations

import struct

import pytest
from emulation_support import assert_check, assert_good, make_emulator, parse_sense

BS = 512
BLOCKS = 64
ILLEGAL, INVALID_FIELD = 0x5, 0x24


def rsoc(options: int = 0, opcode: int = 0, sa: int = 0, alloc: int = 0xFFFF, rctd: int = 0):
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, (rctd << 7) | options, opcode, sa, alloc, 0, 0)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    """Thin, file-backed (so UNMAP and ORWRITE are offered), with limits wide enough that a
    single flipped length bit runs into the LBA range check, not a length limit."""
    em = make_emulator(
        str(tmp_path_factory.mktemp("usage") / "lu.img"),
        size=BLOCKS * BS,
        write_cache=True,
        max_transfer_bytes=BS * 0xFFFFFFFF,
        max_write_same_lbas=0xFFFFFFFF,
        max_compare_and_write_lbas=255,
    )
    yield em
    em.backend.close()


def all_commands(em, rctd: int = 0) -> list[tuple[int, int | None, int, bytes]]:
    """(opcode, service action, CDB length, timeouts descriptor) from REPORTING OPTIONS 000b."""
    data = assert_good(em.emulate(rsoc(rctd=rctd)))
    assert int.from_bytes(data[0:4], "big") == len(data) - 4
    out, pos = [], 4
    while pos < len(data):
        op, sa, flags, length = struct.unpack(">BxHxBH", data[pos : pos + 8])
        assert bool(flags & 0x02) == bool(rctd)  # CTDP on every descriptor iff RCTD
        timeouts = data[pos + 8 : pos + 20] if rctd else b""
        out.append((op, sa if flags & 0x01 else None, length, timeouts))
        pos += 20 if rctd else 8
    assert pos == len(data)
    return out


def usage_of(em, op: int, sa: int | None) -> bytes:
    data = assert_good(em.emulate(rsoc(1 if sa is None else 2, op, sa or 0)))
    assert data[1] & 0x07 == 0x03, "SUPPORT: supported as the standard says"
    size = int.from_bytes(data[2:4], "big")
    assert len(data) == 4 + size
    return data[4:]


# --- base CDBs and data-out for the bit fuzz -------------------------------------------

#: A valid CDB per command when all zeros (opcode and service action set) is not valid,
#: chosen so that flipping any one accepted bit still gives a meaningful command.
BASES: dict[tuple[int, int | None], str] = {
    (0x08, None): "08 00 0000 01 00",  # READ(6): 0 would mean 256 blocks, past the end
    (0x0A, None): "0a 00 0000 01 00",
    (0x12, None): "12 01 00 00ff 00",  # INQUIRY: VPD page 0x00
    (0x1A, None): "1a 00 3f 00 ff 00",  # MODE SENSE(6): all pages
    (0x5A, None): "5a 00 3f 00 000000 00ff 00",
    (0x15, None): "15 10 0000 00 00",  # MODE SELECT: PF=1, nothing sent
    (0x55, None): "55 10 0000000000 0000 00",
    (0x25, None): "25 00 00000000 0000 01 00",  # READ CAPACITY(10): PMI=1
    (0x9E, 0x10): "9e 10 0000000000000000 00000020 01 00",  # READ CAPACITY(16): PMI=1
    (0x9E, 0x12): "9e 12 0000000000000000 00000020 00 00",  # GET LBA STATUS
    (0x2F, None): "2f 02 00000000 00 0001 00",  # VERIFY: BYTCHK=01b (flips give 00b, 11b)
    (0xAF, None): "af 02 00000000 00000001 00 00",
    (0x8F, None): "8f 02 0000000000000000 00000001 00 00",
    (0x41, None): "41 00 00000000 00 0003 00",  # WRITE SAME: 3 blocks (no flip gives 0)
    (0x93, None): "93 00 0000000000000000 00000003 00 00",
    (0x89, None): "89 00 0000000000000000 000000 01 00 00",
    (0xA3, 0x0C): "a3 0c 00 00 0000 0000ffff 00 00",
}

#: Accepted bits whose flip on the base yields a value the standard says to refuse with
#: INVALID FIELD IN CDB: the field is evaluated (so it is in the mask), that value is not
#: supported.  (command, byte) -> bits.
VALUE_CHECKED: dict[tuple[int, int | None, int], int] = {
    (0x12, None, 2): 0xFF,  # INQUIRY: an unsupported VPD PAGE CODE
    (0x1A, None, 2): 0x3F,  # MODE SENSE: an unsupported PAGE CODE ...
    (0x1A, None, 3): 0xFF,  # ... or SUBPAGE CODE
    (0x5A, None, 2): 0x3F,
    (0x5A, None, 3): 0xFF,
    (0xA3, 0x0C, 2): 0x07,  # REPORTING OPTIONS 010b for an opcode without SAs, 1xxb reserved
    (0x2E, None, 1): 0x04,  # WRITE AND VERIFY: BYTCHK 1xb is reserved for this command
    (0xAE, None, 1): 0x04,
    (0x8E, None, 1): 0x04,
}


def base_cdb(op: int, sa: int | None, length: int) -> bytes:
    text = BASES.get((op, sa))
    if text is not None:
        return bytes.fromhex(text)
    cdb = bytearray(length)
    cdb[0] = op
    if sa is not None:
        cdb[1] = sa
    return bytes(cdb)


def data_out(cdb: bytes) -> bytes:
    """What the kernel would send with ``cdb`` (nothing for a range off this small LU)."""
    op = cdb[0]
    group = op >> 5
    if group == 0:
        lba, count = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF, cdb[4] or 256
    elif group in (1, 2):
        lba, count = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
    elif group == 5:
        lba, count = int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
    else:
        lba, count = int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
    if lba + count > BLOCKS:
        return b""
    if op in (0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x8B):  # WRITE, WRITE AND VERIFY, ORWRITE
        return bytes(count * BS)
    if op in (0x2F, 0xAF, 0x8F):  # VERIFY by BYTCHK
        return {0: b"", 1: bytes(count * BS), 2: b"", 3: bytes(BS)}[(cdb[1] >> 1) & 3]
    if op in (0x41, 0x93):  # WRITE SAME: one block unless NDOB
        return b"" if op == 0x93 and cdb[1] & 0x01 else bytes(BS)
    if op == 0x89:
        return bytes(2 * cdb[13] * BS)
    return b""


def _commands(em) -> list[tuple[int, int | None, int]]:
    return [(op, sa, length) for op, sa, length, _ in all_commands(em)]


def test_every_reported_command_has_consistent_usage_data(emu):
    for op, sa, length in _commands(emu):
        usage = usage_of(emu, op, sa)
        assert len(usage) == length and usage[0] == op
        assert length == {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}[op >> 5]
        if sa is not None:
            assert usage[1] & 0x1F == sa  # the service action, as SPC-4 shows it


def test_base_cdbs_are_valid(emu):
    for op, sa, length in _commands(emu):
        cdb = base_cdb(op, sa, length)
        status, sense, _ = emu.emulate(cdb, data_out(cdb))
        assert status == 0, (cdb.hex(), sense and parse_sense(sense))


def test_every_bit_outside_the_mask_is_refused_and_every_bit_inside_is_accepted(emu):
    """Flip each CDB bit (opcode and service action aside) on a valid base CDB, one at a
    time: outside the usage mask → INVALID FIELD IN CDB, field pointer at exactly that bit;
    inside → anything but INVALID FIELD IN CDB (LBA OUT OF RANGE, MISCOMPARE, GOOD, ...),
    except the listed value checks."""
    checked = 0
    for op, sa, length in _commands(emu):
        usage = usage_of(emu, op, sa)
        base = base_cdb(op, sa, length)
        for byte in range(1, length):
            for bit in range(8):
                if byte == 1 and sa is not None and bit < 5:
                    continue  # the service action picks the command
                cdb = bytearray(base)
                cdb[byte] ^= 1 << bit
                status, sense, _ = emu.emulate(bytes(cdb), data_out(bytes(cdb)))
                where = f"{op:02x}/{sa} byte {byte} bit {bit}: {bytes(cdb).hex()}"
                s = parse_sense(sense) if status == 2 else None
                if not usage[byte] >> bit & 1:
                    assert s is not None, where
                    assert (s.key, s.asc, s.ascq) == (ILLEGAL, INVALID_FIELD, 0), where
                    assert s.field == (1, byte, bit), where
                elif not VALUE_CHECKED.get((op, sa, byte), 0) >> bit & 1:
                    assert s is None or (s.key, s.asc) != (ILLEGAL, INVALID_FIELD), (where, s)
                checked += 1
    assert checked > 2000


def test_write_same_unmap_is_accepted_only_when_thin(tmp_path):
    em = make_emulator(str(tmp_path / "fat"), thin=False)
    ws10, ws16 = "41 08 00000000 00 0001 00", "93 08 0000000000000000 00000001 00 00"
    for op, cdb in ((0x41, ws10), (0x93, ws16)):
        assert usage_of(em, op, None)[1] & 0x08 == 0
        s = assert_check(em.emulate(bytes.fromhex(cdb), bytes(BS)), ILLEGAL, INVALID_FIELD)
        assert s.field == (1, 1, 3)
    # UNMAP is not offered at all (LBPU=0): an unknown opcode, and not reported
    assert_check(em.emulate(bytes.fromhex("42 00 00000000 00 0018 00"), bytes(24)), ILLEGAL, 0x20)
    assert 0x42 not in [op for op, *_ in all_commands(em)]
    assert assert_good(em.emulate(rsoc(1, 0x42)))[1] & 0x07 == 1
    em.backend.close()


# --- REPORT SUPPORTED OPERATION CODES itself -------------------------------------------


def test_all_commands_with_timeouts(emu):
    """RCTD=1: every descriptor has CTDP set and a 12-byte command timeouts descriptor."""
    plain = all_commands(emu)
    timed = all_commands(emu, rctd=1)
    assert [c[:3] for c in plain] == [c[:3] for c in timed]
    recommended = {}
    for op, sa, _, desc in timed:
        length, specific, nominal, rec = struct.unpack(">HxBII", desc)
        assert (length, specific, nominal) == (0x0A, 0, 0)  # nominal: not specified
        recommended[(op, sa)] = rec
    assert recommended[(0x28, None)] == 30 and recommended[(0x8F, None)] == 60
    assert recommended[(0x12, None)] == 0  # answered from memory: not specified
    assert (0x9E, 0x10) in recommended and (0xA3, 0x0C) in recommended  # SERVACTV set


@pytest.mark.parametrize(
    ("options", "opcode", "sa", "support", "size"),
    [
        (1, 0x28, 0, 3, 10),  # 001b: an opcode without service actions
        (1, 0x28, 0x1234, 3, 10),  # ... REQUESTED SERVICE ACTION ignored
        (1, 0x5F, 0, 1, 0),  # an opcode we do not answer here: not supported
        (2, 0x9E, 0x10, 3, 16),  # 010b: opcode + service action
        (2, 0xA3, 0x0C, 3, 12),
        (2, 0x9E, 0x11, 1, 0),  # a service action we do not offer
        (2, 0x5E, 0x00, 1, 0),  # an opcode we do not answer here
        (3, 0x9E, 0x10, 3, 16),  # 011b: either kind
        (3, 0x9E, 0x13, 1, 0),
        (3, 0x8B, 0, 3, 16),
        (3, 0x8B, 7, 3, 16),  # no service actions: REQUESTED SERVICE ACTION ignored
        (3, 0xC0, 0, 1, 0),
    ],
)
@pytest.mark.parametrize("rctd", [0, 1])
def test_one_command(emu, options, opcode, sa, support, size, rctd):
    data = assert_good(emu.emulate(rsoc(options, opcode, sa, rctd=rctd)))
    assert data[1] & 0x07 == support
    assert int.from_bytes(data[2:4], "big") == size
    ctdp = support == 3 and rctd == 1
    assert bool(data[1] & 0x80) == ctdp
    assert len(data) == 4 + size + (12 if ctdp else 0)
    if size:
        assert data[4] == opcode
    if ctdp:
        assert data[4 + size : 4 + size + 2] == b"\x00\x0a"


@pytest.mark.parametrize(
    ("options", "opcode", "field"),
    [
        (1, 0x9E, None),  # 001b for an opcode with service actions
        (2, 0x28, None),  # 010b for one without
        (4, 0, (1, 2, 2)),  # 100b-111b reserved
        (7, 0, (1, 2, 2)),
    ],
)
def test_one_command_refusals(emu, options, opcode, field):
    s = assert_check(emu.emulate(rsoc(options, opcode)), ILLEGAL, INVALID_FIELD)
    assert s.field == field


def test_allocation_length_cuts_every_format(emu):
    full = assert_good(emu.emulate(rsoc(rctd=1)))
    assert assert_good(emu.emulate(rsoc(rctd=1, alloc=30))) == full[:30]
    one = assert_good(emu.emulate(rsoc(1, 0x28, rctd=1)))
    assert assert_good(emu.emulate(rsoc(1, 0x28, rctd=1, alloc=5))) == one[:5]
