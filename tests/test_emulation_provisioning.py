"""GET LBA STATUS (16) and the thin-provisioning answers around it, on real sparse files.

The filesystem reports holes in whole blocks of G = ``discard_granularity`` bytes (4 KiB on
ext4, so 8 LBAs of 512 bytes): expected maps are written in those blocks, and the reference
model of the property test is a set of written filesystem blocks.
"""

from __future__ import annotations

import itertools
import os
import struct
import uuid

import pytest
from emulation_support import (
    assert_check,
    assert_good,
    get_lba_status_cdb,
    inquiry_cdb,
    make_emulator,
    parse_block_limits,
    parse_lba_status,
    parse_readcap16,
    parse_vpd_header,
    unmap_cdb,
    unmap_params,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.emulation import DeviceInfo, Emulator, provisioning

BS = 512
NUM = 2048  # 1 MiB image
M, D = 0, 1  # PROVISIONING STATUS: mapped (or unknown), deallocated
ILLEGAL, INVALID_FIELD, LBA_RANGE = 0x5, 0x24, 0x21
MEDIUM, READ_ERROR = 0x3, 0x11
CAPACITY, ALLOCATION, UNKNOWN = 3, 1, 0  # COMPLETION CONDITION


@pytest.fixture
def emu(tmp_path):
    em = make_emulator(str(tmp_path / "lu.img"))
    yield em
    em.backend.close()


def per_block(em) -> int:
    """LBAs per filesystem block (8 for 4 KiB blocks)."""
    return max(1, em.backend.discard_granularity // BS)


def gls(em, lba: int = 0, alloc: int = 4096, report: int = 0):
    return parse_lba_status(assert_good(em.emulate(get_lba_status_cdb(lba, alloc, report))))


def write(em, lba: int, blocks: int, fill: int = 0xA5) -> None:
    cdb = struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)
    assert_good(em.emulate(cdb, bytes([fill]) * (blocks * BS)))


def write_same(lba: int, blocks: int, flags: int, sixteen: bool = True) -> bytes:
    if sixteen:
        return struct.pack(">BBQIBB", 0x93, flags, lba, blocks, 0, 0)
    return struct.pack(">BBIBHB", 0x41, flags, lba, 0, blocks, 0)


def runs(statuses: list[int], start: int = 0) -> list[tuple[int, int, int]]:
    """(LBA, blocks, status) runs of a per-LBA status list, from ``start``."""
    out, lba = [], start
    for status, group in itertools.groupby(statuses[start:]):
        n = len(list(group))
        out.append((lba, n, status))
        lba += n
    return out


def status_map(em, start: int = 0, alloc: int = 4096) -> list[int]:
    """Per-LBA status of [start, end of medium) by walking GET LBA STATUS as a client does,
    checking on the way that each answer starts at its starting LBA and is contiguous."""
    statuses: list[int] = [-1] * start
    lba = start
    while lba < em.device.num_lbas:
        reply = gls(em, lba, alloc)
        assert reply.rtp == 1 and reply.descriptors, reply
        assert reply.data_length == 4 + 16 * len(reply.descriptors)
        for first, count, status in reply.descriptors:
            assert first == lba and count > 0 and status in (M, D), reply
            statuses.extend([status] * count)
            lba += count
        assert (reply.completion == CAPACITY) == (lba == em.device.num_lbas), reply
    assert lba == em.device.num_lbas
    return statuses


def with_one_block_written(em) -> list[tuple[int, int, int]]:
    """Write LBA 100: its whole filesystem block becomes mapped; three runs in all."""
    g = per_block(em)
    write(em, 100, 1)
    lo = 100 // g * g
    return [(0, lo, D), (lo, g, M), (lo + g, NUM - lo - g, D)]


# --- STARTING LOGICAL BLOCK ADDRESS -------------------------------------------------------


def test_fresh_sparse_file_is_one_deallocated_extent(emu):
    reply = gls(emu)
    assert reply.descriptors == [(0, NUM, D)]
    assert (reply.data_length, reply.completion, reply.rtp) == (20, CAPACITY, 1)


@pytest.mark.parametrize(
    ("lba", "ok"),
    [(0, True), (NUM - 1, True), (NUM, False), (NUM + 1, False), (2**64 - 1, False)],
)
def test_starting_lba_past_the_medium_is_out_of_range(emu, lba, ok):
    reply = emu.emulate(get_lba_status_cdb(lba))
    if ok:
        assert parse_lba_status(assert_good(reply)).descriptors[0][:2] == (lba, NUM - lba)
    else:
        assert_check(reply, ILLEGAL, LBA_RANGE)


def test_first_descriptor_starts_at_the_starting_lba(emu):
    expected = with_one_block_written(emu)
    statuses = [s for lba, n, s in expected for _ in range(n)]
    lo = expected[1][0]
    for start in (0, 1, lo - 1, lo, 100, lo + per_block(emu) - 1, lo + per_block(emu), NUM - 1):
        assert gls(emu, start).descriptors == runs(statuses, start), start


# --- ALLOCATION LENGTH and PARAMETER DATA LENGTH ------------------------------------------


@pytest.mark.parametrize(
    ("alloc", "returned", "data_length", "descriptors", "completion"),
    [
        (7, 7, 20, 0, None),  # a cut header: SPC-4 truncation, the length is not adjusted
        (8, 8, 20, 0, ALLOCATION),
        (23, 23, 20, 0, ALLOCATION),
        (24, 24, 20, 1, ALLOCATION),  # more follow: the allocation length ended the list
        (39, 24, 20, 1, ALLOCATION),  # room for one descriptor only
        (40, 40, 36, 2, ALLOCATION),
        (56, 56, 52, 3, CAPACITY),  # the last descriptor ends at the last LBA
        (4096, 56, 52, 3, CAPACITY),
        (0xFFFFFFFF, 56, 52, 3, CAPACITY),
    ],
)
def test_allocation_length(emu, alloc, returned, data_length, descriptors, completion):
    expected = with_one_block_written(emu)
    data = assert_good(emu.emulate(get_lba_status_cdb(0, alloc)))
    assert len(data) == returned
    assert int.from_bytes(data[0:4], "big") == data_length
    if completion is not None:
        reply = parse_lba_status(data)
        assert reply.descriptors == expected[:descriptors]
        assert (reply.completion, reply.rtp) == (completion, 1)


def test_zero_allocation_length_transfers_nothing(emu):
    assert assert_good(emu.emulate(get_lba_status_cdb(0, 0))) == b""
    assert_check(emu.emulate(get_lba_status_cdb(NUM, 0)), ILLEGAL, LBA_RANGE)  # still checked


def test_descriptor_cap_is_not_the_allocation_length(emu, monkeypatch):
    expected = with_one_block_written(emu)
    monkeypatch.setattr(provisioning, "MAX_DESCRIPTORS", 2)
    reply = gls(emu, alloc=4096)
    assert reply.descriptors == expected[:2]
    assert (reply.data_length, reply.completion) == (36, UNKNOWN)


# --- REPORT TYPE ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("report", "start", "pick"),
    [
        (0x00, 0, [0, 1, 2]),  # all LBAs
        (0x01, 0, [0, 2]),  # non-zero provisioning status: the deallocated ones
        (0x02, 0, [1]),  # mapped
        (0x03, 0, [0, 2]),  # deallocated
        (0x03, "in-block", [2]),  # at or after the starting LBA only
        (0x02, "in-block", ["rest"]),  # a matching extent is cut at the starting LBA
        (0x04, 0, []),  # anchored: ANC_SUP = 0, there are none
        (0x10, 0, []),  # may return unrecovered errors: none known
    ],
)
def test_report_type(emu, report, start, pick):
    expected = with_one_block_written(emu)
    lo = expected[1][0]
    if start == "in-block":
        start = lo + 1
    want = []
    for p in pick:
        want.append((lo + 1, per_block(emu) - 1, M) if p == "rest" else expected[p])
    reply = gls(emu, start, report=report)
    assert reply.descriptors == want
    assert (reply.data_length, reply.rtp, reply.completion) == (4 + 16 * len(want), 1, CAPACITY)


@pytest.mark.parametrize("report", [0x05, 0x06, 0x0F, 0x11, 0x80, 0xFF])
def test_reserved_report_types_are_invalid(emu, report):
    assert_check(emu.emulate(get_lba_status_cdb(0, report=report)), ILLEGAL, INVALID_FIELD)


def test_filtered_report_finds_nothing_on_a_fully_mapped_medium(emu):
    write(emu, 0, NUM)
    assert gls(emu).descriptors == [(0, NUM, M)]
    reply = gls(emu, report=0x03)
    assert (reply.descriptors, reply.data_length, reply.completion) == ([], 4, CAPACITY)


class _Windowed(FileDataBackend):
    """A file whose allocation map may be asked about 64 KiB (128 LBAs) at a time."""

    @property
    def allocation_scan_limit(self) -> int:
        return 64 << 10


@pytest.fixture
def windowed(tmp_path):
    path = tmp_path / "w.img"
    path.write_bytes(b"")
    os.truncate(path, NUM * BS)
    backend = _Windowed(str(path))
    yield Emulator(DeviceInfo.from_size("w", backend.size), backend)
    backend.close()


def test_scan_limit_ends_the_list_without_a_completion_claim(windowed):
    reply = gls(windowed)
    assert reply.descriptors == [(0, 128, D)]
    assert (reply.completion, reply.rtp) == (UNKNOWN, 1)
    assert status_map(windowed, alloc=4096) == [D] * NUM  # a client walking on gets it all


def test_filtered_report_without_a_match_in_the_scan_answers_unfiltered(windowed):
    reply = gls(windowed, report=0x02)  # mapped: none in the first 128 LBAs
    assert reply.descriptors == [(0, 128, D)]
    assert (reply.rtp, reply.completion) == (0, UNKNOWN)  # RTP 0: REPORT TYPE not processed
    reply = gls(windowed, report=0x03)  # deallocated: found, the list is filtered
    assert (reply.descriptors, reply.rtp) == ([(0, 128, D)], 1)


def test_filtered_report_search_is_bounded(emu, monkeypatch):
    g = per_block(emu)
    write(emu, 0, NUM)
    assert_good(emu.emulate(unmap_cdb(24), unmap_params([(NUM - g, g)])))
    # the map is one mapped extent, then one deallocated block at the end
    monkeypatch.setattr(provisioning, "MAX_EXTENTS_SCANNED", 1)
    reply = gls(emu, report=0x03)  # gave up before a match: unfiltered, RTP 0
    assert reply.descriptors == [(0, NUM - g, M)]
    assert (reply.rtp, reply.completion) == (0, UNKNOWN)
    reply = gls(emu, report=0x02)  # a match, but whether more follow is unknown
    assert reply.descriptors == [(0, NUM - g, M)]
    assert (reply.rtp, reply.completion) == (1, UNKNOWN)
    monkeypatch.setattr(provisioning, "MAX_EXTENTS_SCANNED", 2)
    reply = gls(emu, report=0x03)
    assert reply.descriptors == [(NUM - g, g, D)]
    assert (reply.rtp, reply.completion) == (1, CAPACITY)


# --- deallocation through UNMAP and WRITE SAME is what GET LBA STATUS reports --------------


def test_unmap_of_an_aligned_range_reads_back_deallocated(emu):
    g = per_block(emu)
    write(emu, 0, NUM)
    assert_good(emu.emulate(unmap_cdb(24), unmap_params([(4 * g, 4 * g)])))
    assert gls(emu).descriptors == [(0, 4 * g, M), (4 * g, 4 * g, D), (8 * g, NUM - 8 * g, M)]


def test_unmap_frees_only_whole_filesystem_blocks(emu):
    g = per_block(emu)
    if g == 1:
        pytest.skip("needs filesystem blocks larger than an LBA")  # 512-byte blocks: all whole
    write(emu, 0, NUM)
    # from mid block 4 to mid block 7: blocks 5 and 6 are freed, 4 and 7 zeroed in place
    assert_good(emu.emulate(unmap_cdb(24), unmap_params([(4 * g + 1, 3 * g)])))
    assert gls(emu).descriptors == [(0, 5 * g, M), (5 * g, 2 * g, D), (7 * g, NUM - 7 * g, M)]
    data = assert_good(emu.emulate(struct.pack(">BBQIBB", 0x88, 0, 4 * g + 1, 3 * g, 0, 0)))
    assert data == bytes(3 * g * BS)  # LBPRZ: every unmapped LBA reads zeros, freed or not


@pytest.mark.parametrize(
    ("cdb", "block", "deallocated"),
    [
        (write_same(0, 64, 0x08), bytes(BS), True),  # WRITE SAME (16) UNMAP, zeros
        (write_same(0, 64, 0x08, sixteen=False), bytes(BS), True),  # WRITE SAME (10)
        (write_same(0, 64, 0x08 | 0x01), b"", True),  # NDOB: zeros without a data-out
        (write_same(0, 64, 0x00), bytes(BS), False),  # UNMAP 0: "write zeroes, keep allocated"
        (write_same(0, 64, 0x08), b"\x01" + bytes(BS - 1), False),  # data must read back
    ],
    ids=["ws16-unmap", "ws10-unmap", "ws16-ndob", "ws16-no-unmap", "ws16-unmap-data"],
)
def test_write_same_unmap_deallocates_only_zeros(emu, cdb, block, deallocated):
    write(emu, 0, NUM)
    assert_good(emu.emulate(cdb, block))
    expected = [(0, 64, D), (64, NUM - 64, M)] if deallocated else [(0, NUM, M)]
    assert gls(emu).descriptors == expected
    data = assert_good(emu.emulate(struct.pack(">BBQIBB", 0x88, 0, 0, 64, 0, 0)))
    assert data == (block or bytes(BS)) * 64


def test_read_only_device_reports_too(tmp_path):
    path = tmp_path / "ro.img"
    with open(path, "wb") as f:
        f.truncate(NUM * BS)
        f.seek(8192)
        f.write(b"x")
    backend = FileDataBackend(str(path), read_only=True)
    dev = DeviceInfo.from_size("ro", backend.size, read_only=True)
    reply = parse_lba_status(assert_good(Emulator(dev, backend).emulate(get_lba_status_cdb(0))))
    assert [s for _, _, s in reply.descriptors] == [D, M, D]
    backend.close()


def test_fully_provisioned_reports_every_block_mapped(tmp_path):
    em = make_emulator(str(tmp_path / "thick.img"), thin=False)  # sparse file, but not thin
    assert gls(em).descriptors == [(0, NUM, M)]
    reply = gls(em, report=0x03)
    assert (reply.descriptors, reply.completion) == ([], CAPACITY)
    em.backend.close()


def test_extents_longer_than_a_descriptor_are_split(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"\xff" * 4096)  # data in the first 4 KiB; the rest of the LU is beyond
    num = (1 << 33) + 5
    em = Emulator(DeviceInfo("big", num), FileDataBackend(str(path)))
    reply = gls(em)
    g, most = 4096 // BS, 0xFFFFFFFF
    assert reply.descriptors == [(0, g, M), (g, most, D), (g + most, num - g - most, D)]
    assert reply.completion == CAPACITY
    em.backend.close()


def test_backend_failure_is_a_read_error(emu, monkeypatch):
    def broken(offset, length):
        raise OSError(5, "EIO")
        yield  # pragma: no cover

    monkeypatch.setattr(emu.backend, "allocated", broken)
    assert_check(emu.emulate(get_lba_status_cdb(0)), MEDIUM, READ_ERROR)


def test_listed_in_report_supported_operation_codes(emu):
    rsoc = struct.pack(">BBBBHIBB", 0xA3, 0x0C, 2, 0x9E, 0x12, 4096, 0, 0)
    data = assert_good(emu.emulate(rsoc))
    assert data[1] & 0x07 == 3 and int.from_bytes(data[2:4], "big") == 16
    assert data[4] == 0x9E and data[5] & 0x1F == 0x12


# --- the thin-provisioning story a client reads must agree with itself --------------------


def _vpd(em, page: int) -> bytes:
    code, payload = parse_vpd_header(assert_good(em.emulate(inquiry_cdb(1, page))))
    assert code == page
    return payload


@pytest.mark.parametrize("thin", [True, False])
def test_capacity_provisioning_page_and_block_limits_agree(tmp_path, thin):
    em = make_emulator(str(tmp_path / "c.img"), thin=thin)
    cap = parse_readcap16(assert_good(em.emulate(struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0))))
    lbp = _vpd(em, 0xB2)
    limits = parse_block_limits(_vpd(em, 0xB0))
    fields = {
        "threshold_exponent": lbp[0],
        "lbpu": lbp[1] >> 7,
        "lbpws": (lbp[1] >> 6) & 1,
        "lbpws10": (lbp[1] >> 5) & 1,
        "lbprz": (lbp[1] >> 2) & 0x07,  # 3 bits in SBC-4
        "anc_sup": (lbp[1] >> 1) & 1,
        "dp": lbp[1] & 1,
        "provisioning_type": lbp[2] & 0x07,
    }
    if thin:
        assert (cap["lbpme"], cap["lbprz"]) == (1, 1)
        assert fields == {
            "threshold_exponent": 0,  # no thresholds
            "lbpu": 1,
            "lbpws": 1,
            "lbpws10": 1,
            "lbprz": 0b001,
            "anc_sup": 0,
            "dp": 0,
            "provisioning_type": 0b010,
        }
        assert limits["opt_unmap_granularity"] == per_block(em) and limits["ugavalid"] == 1
        assert limits["max_unmap_lbas"] and limits["max_unmap_descs"]
    else:
        assert (cap["lbpme"], cap["lbprz"]) == (0, 0)
        assert set(fields.values()) == {0}
        assert limits["opt_unmap_granularity"] == 0 and limits["max_unmap_lbas"] == 0
    em.backend.close()


@pytest.mark.parametrize(
    ("granularity", "block_size", "pbe", "expected"),
    [
        (4096, 512, 0, 8),
        (4096, 4096, 0, 1),
        (512, 4096, 0, 1),  # finer than a block: one block
        (4 << 20, 512, 0, 8192),  # an RBD object
        (4096, 512, 4, 16),  # physical blocks of 16 LBAs: the coarser one wins
    ],
)
def test_optimal_unmap_granularity(tmp_path, granularity, block_size, pbe, expected):
    class Backend(FileDataBackend):
        discard_granularity = granularity  # type: ignore[assignment]

    path = tmp_path / "g.img"
    path.write_bytes(bytes(1 << 16))
    backend = Backend(str(path))
    blocks = provisioning.unmap_granularity(backend, block_size)
    dev = DeviceInfo.from_size(
        "g", backend.size, block_size=block_size, unmap_granularity=blocks,
        physical_block_exponent=pbe,
    )  # fmt: skip
    limits = parse_block_limits(_vpd(Emulator(dev, backend), 0xB0))
    assert limits["opt_unmap_granularity"] == expected
    backend.close()


# --- property: the map a client walks is the filesystem's, block for block ----------------

_PROPERTY_NUM = 512  # 256 KiB: 64 filesystem blocks of 4 KiB


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["write", "unmap", "unmap-aligned", "write-same-unmap"]),
            st.integers(0, _PROPERTY_NUM - 1),
            st.integers(1, 96),
        ),
        max_size=25,
    ),
    start=st.integers(0, _PROPERTY_NUM - 1),
    alloc=st.sampled_from([24, 40, 56, 200, 4096]),
)
def test_status_follows_a_reference_model(tmp_path_factory, ops, start, alloc):
    path = tmp_path_factory.getbasetemp() / f"prop-{uuid.uuid4().hex}.img"
    em = make_emulator(str(path), size=_PROPERTY_NUM * BS)
    try:
        g = per_block(em)
        written: set[int] = set()  # filesystem blocks that hold (or held) written data
        for kind, lba, count in ops:
            count = min(count, _PROPERTY_NUM - lba)
            if kind == "unmap-aligned":
                lba = lba // g * g
                count = max(g, count // g * g)
                count = min(count, _PROPERTY_NUM - lba)
            if kind == "write":
                write(em, lba, count, fill=1 + lba % 255)
                written.update(range(lba // g, (lba + count - 1) // g + 1))
            else:
                if kind == "write-same-unmap":
                    assert_good(em.emulate(write_same(lba, count, 0x08), bytes(BS)))
                else:
                    assert_good(em.emulate(unmap_cdb(24), unmap_params([(lba, count)])))
                # only filesystem blocks the range covers whole are freed
                first, end = -(-lba // g), (lba + count) // g
                written.difference_update(range(first, end))
        statuses = status_map(em, start, alloc)
        for block in range(start // g, _PROPERTY_NUM // g):
            lbas = range(max(block * g, start), (block + 1) * g)
            got = {statuses[i] for i in lbas}
            if block in written:
                assert got == {M}, (block, got)  # never deallocated while it holds data
            else:
                assert got == {D}, (block, got)  # and on this filesystem, exactly its holes
    finally:
        em.backend.close()
        os.unlink(path)


class _Extents:
    """An allocation map given as byte extents, as librbd reports them (not block aligned)."""

    def __init__(self, extents: list[tuple[int, int]]) -> None:
        self.extents = extents

    def allocated(self, offset: int, length: int):
        for start, n in self.extents:
            lo, hi = max(start, offset), min(start + n, offset + length)
            if lo < hi:
                yield lo, hi - lo


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 64 * BS), min_size=0, max_size=20, unique=True),
    start=st.integers(0, 63),
    end=st.integers(1, 64),
)
def test_byte_extents_become_block_runs(cuts, start, end):
    """Runs cover [start, end) exactly and in order, coalesced; a block with one allocated
    byte is mapped, one without any is deallocated."""
    end = max(end, start + 1)
    points = sorted(cuts)
    extents = [(a, b - a) for a, b in zip(points[::2], points[1::2], strict=False) if b > a]
    got = list(provisioning.block_runs(_Extents(extents), BS, start, end))  # type: ignore[arg-type]
    lba = start
    for i, (first, count, status) in enumerate(got):
        assert first == lba and count > 0
        assert i == 0 or got[i - 1][2] != status  # maximal: neighbours differ
        for block in range(first, first + count):
            touched = any(a < (block + 1) * BS and block * BS < a + n for a, n in extents)
            assert status == (M if touched else D), (block, extents)
        lba += count
    assert lba == end
