"""INQUIRY: standard data, every VPD page, identity rules, error paths, allocation length."""

from __future__ import annotations

import pytest
from emulation_support import (
    assert_check,
    assert_good,
    inquiry_cdb,
    make_emulator,
    parse_block_limits,
    parse_designators,
    parse_standard_inquiry,
    parse_vpd_header,
)

from tcmu_pr.emulation import DeviceConfigError, DeviceInfo, lu_naa, lu_serial


@pytest.fixture
def emu(tmp_path):
    em = make_emulator(str(tmp_path / "lu.img"), identity="rbd:pool/img")
    yield em
    em.backend.close()


def vpd(em, page: int) -> bytes:
    code, payload = parse_vpd_header(assert_good(em.emulate(inquiry_cdb(1, page))))
    assert code == page
    return payload


def test_standard_inquiry_fields(emu):
    data = assert_good(emu.emulate(inquiry_cdb()))
    assert len(data) == 96
    f = parse_standard_inquiry(data)
    assert f["additional_length"] == 91
    assert (f["qualifier"], f["device_type"], f["rmb"]) == (0, 0, 0)
    assert f["version"] == 0x06 and f["response_format"] == 2 and f["hisup"] == 1
    assert f["cmdque"] == 1 and f["3pc"] == 0 and f["protect"] == 0 and f["tpgs"] == 0
    assert f["vendor"] == "LIO-ORG " and f["product"] == "TCMU-PR".ljust(16)
    assert f["revision"] == "0001"


def version_descriptors(data: bytes) -> list[int]:
    codes = [int.from_bytes(data[i : i + 2], "big") for i in range(58, 74, 2)]
    return [c for c in codes if c]


def test_standard_inquiry_version_descriptors(emu):
    """SPC-4: VERSION 06h and version descriptors at bytes 58-73, covered by ADDITIONAL
    LENGTH: SAM-5 (00A0h), SPC-4 (0460h), SBC-3 (04C0h); no transport unless configured."""
    data = assert_good(emu.emulate(inquiry_cdb()))
    assert data[2] == 0x06
    assert data[4] + 5 >= 74
    assert version_descriptors(data) == [0x00A0, 0x0460, 0x04C0]
    assert data[36:58] == bytes(22) and data[74:] == bytes(22)


def test_transport_descriptor_is_listed_when_known(tmp_path):
    em = make_emulator(str(tmp_path / "t"), transport_descriptor=0x0960)  # iSCSI
    data = assert_good(em.emulate(inquiry_cdb()))
    assert version_descriptors(data) == [0x00A0, 0x0460, 0x04C0, 0x0960]
    em.backend.close()


def test_vendor_product_tpgs_configurable(tmp_path):
    em = make_emulator(str(tmp_path / "x"), vendor="ACME", product="Disk", revision="9", tpgs=1)
    f = parse_standard_inquiry(assert_good(em.emulate(inquiry_cdb())))
    assert (f["vendor"], f["product"], f["revision"], f["tpgs"]) == (
        "ACME    ",
        "Disk" + " " * 12,
        "9   ",
        1,
    )
    em.backend.close()


def test_allocation_length_truncates(emu):
    assert (
        assert_good(emu.emulate(inquiry_cdb(alloc=5)))
        == assert_good(emu.emulate(inquiry_cdb()))[:5]
    )
    assert assert_good(emu.emulate(inquiry_cdb(alloc=0))) == b""
    page83 = assert_good(emu.emulate(inquiry_cdb(1, 0x83, alloc=4)))
    assert len(page83) == 4 and page83[1] == 0x83  # header still says the full length
    assert int.from_bytes(page83[2:4], "big") > 0


def test_supported_pages_list(emu):
    pages = list(vpd(emu, 0x00))
    assert pages == sorted(pages)
    assert pages == [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    for page in pages:  # every listed page is really there
        vpd(emu, page)


def test_serial_and_naa_match(emu):
    serial = vpd(emu, 0x80).decode("ascii")
    assert len(serial) == 25 and int(serial, 16) >= 0
    designators = parse_designators(vpd(emu, 0x83))
    naa = [d for d in designators if d["type"] == 3]
    assert len(naa) == 1
    d = naa[0]
    assert (d["code_set"], d["association"], d["piv"], len(d["value"])) == (1, 0, 0, 16)
    hexval = d["value"].hex()
    assert hexval[0] == "6"  # NAA IEEE Registered Extended
    assert hexval[1:7] == "001405"  # LIO's OUI
    assert hexval[7:] == serial  # the serial is the vendor-specific part
    t10 = [x for x in designators if x["type"] == 1]
    assert t10 and t10[0]["code_set"] == 2 and t10[0]["value"] == b"LIO-ORG " + serial.encode()
    assert not [x for x in designators if x["association"] != 0]  # no port designators by default


def test_identity_same_for_one_lu_differs_across_lus(tmp_path):
    a = make_emulator(str(tmp_path / "a"), identity="rbd:rbd/disk1", rtpi=1, target_port_group=1)
    b = make_emulator(str(tmp_path / "b"), identity="rbd:rbd/disk1", rtpi=2, write_cache=True)
    c = make_emulator(str(tmp_path / "c"), identity="rbd:rbd/disk2")

    def ident(em):
        page80 = vpd(em, 0x80)
        lu = [d for d in parse_designators(vpd(em, 0x83)) if d["association"] == 0]
        return page80, lu

    assert ident(a) == ident(b)
    assert ident(a)[0] != ident(c)[0]
    assert ident(a)[1] != ident(c)[1]
    # per-port designators do differ
    ports_a = [d for d in parse_designators(vpd(a, 0x83)) if d["association"] == 1]
    ports_b = [d for d in parse_designators(vpd(b, 0x83)) if d["association"] == 1]
    assert {d["type"]: d["value"] for d in ports_a} == {4: b"\0\0\0\x01", 5: b"\0\0\0\x01"}
    assert {d["type"]: d["value"] for d in ports_b} == {4: b"\0\0\0\x02"}
    for em in (a, b, c):
        em.backend.close()


def test_identity_functions_are_deterministic():
    assert lu_serial("x") == lu_serial("x") != lu_serial("y")
    assert lu_naa("x").hex() == "6001405" + lu_serial("x")
    with pytest.raises(DeviceConfigError):
        lu_serial("")


def test_block_limits(emu):
    f = parse_block_limits(vpd(emu, 0xB0))
    assert f["wsnz"] == 1 and f["max_caw"] == 1
    assert f["max_transfer"] == 8 * 1024 * 1024 // 512
    assert f["max_unmap_lbas"] == 0x400000 and f["max_unmap_descs"] == 256
    assert f["max_write_same"] == 0x10000
    # the file's block is what a punch frees whole (4 KiB on ext4: 8 LBAs), aligned at LBA 0
    assert f["opt_unmap_granularity"] == emu.backend.discard_granularity // 512
    assert f["ugavalid"] == 1 and f["unmap_alignment"] == 0


def test_block_limits_without_thin(tmp_path):
    em = make_emulator(str(tmp_path / "t"), thin=False, block_size=4096)
    f = parse_block_limits(vpd(em, 0xB0))
    assert f["max_unmap_lbas"] == 0 and f["max_unmap_descs"] == 0
    assert f["opt_unmap_granularity"] == 0 and f["ugavalid"] == 0
    assert f["max_transfer"] == 2048
    prov = vpd(em, 0xB2)
    assert prov[1] == 0 and prov[2] & 0x07 == 0
    em.backend.close()


def test_block_characteristics(emu):
    payload = vpd(emu, 0xB1)
    assert len(payload) == 0x3C
    assert int.from_bytes(payload[0:2], "big") == 1  # non-rotating


def test_logical_block_provisioning(emu):
    payload = vpd(emu, 0xB2)
    assert len(payload) == 4
    flags = payload[1]
    assert flags >> 7 == 1  # LBPU
    assert (flags >> 6) & 1 == 1  # LBPWS
    assert (flags >> 5) & 1 == 1  # LBPWS10
    assert (flags >> 2) & 1 == 1  # LBPRZ
    assert flags & 0x03 == 0  # ANC_SUP, DP
    assert payload[2] & 0x07 == 2  # thin provisioned


@pytest.mark.parametrize(
    "cdb",
    [
        inquiry_cdb(1, 0x81),  # unsupported VPD page
        inquiry_cdb(1, 0xB3),
        inquiry_cdb(0, 0x80),  # page code without EVPD
        inquiry_cdb(0, 0, cmddt=1),  # CMDDT
        inquiry_cdb(1, 0x80, cmddt=1),
        bytes([0x12, 0, 0, 0, 36, 0x04]),  # NACA
        bytes([0x12, 0, 0, 0, 36]),  # too short
    ],
)
def test_invalid_inquiry(emu, cdb):
    assert_check(emu.emulate(cdb), 0x5, 0x24)


def test_longer_buffer_is_cut_to_cdb_length(emu):
    assert assert_good(emu.emulate(inquiry_cdb() + b"\xff" * 10))[:8] == bytes(
        [0, 0, 6, 0x12, 91, 0, 0, 2]
    )


@pytest.mark.parametrize(
    "options",
    [
        {"block_size": 1024},
        {"vendor": "TOO-LONG-VENDOR"},
        {"product": "é"},
        {"tpgs": 4},
        {"rtpi": 70000},
        {"max_compare_and_write_lbas": 0},
        {"max_unmap_descriptors": 0},
        {"transport_descriptor": 0},
        {"transport_descriptor": 0x10000},
    ],
)
def test_bad_device_config(options):
    with pytest.raises(DeviceConfigError):
        DeviceInfo("lu", 100, **options)


def test_bad_capacity():
    with pytest.raises(DeviceConfigError):
        DeviceInfo("lu", 0)
    with pytest.raises(DeviceConfigError):
        DeviceInfo.from_size("lu", 4095, block_size=4096)
