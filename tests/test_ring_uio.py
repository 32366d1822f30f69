"""tcmu_pr.ring.uio against a fake sysfs tree and a file standing in for /dev/uioN."""

from __future__ import annotations

import pytest

from tcmu_pr.ring import layout as L
from tcmu_pr.ring.simulator import RingSimulator
from tcmu_pr.ring.uio import UioError, find, open_ring, parse_name


def _uio(sysfs, n, name, size):
    d = sysfs / f"uio{n}"
    (d / "maps" / "map0").mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "maps" / "map0" / "size").write_text(f"{size:#x}\n")


def test_parse_name():
    assert parse_name("tcm-user/1/lun0/file//srv/a.img") == ("1", "lun0", "file//srv/a.img")
    assert parse_name("tcm-user/user_2/x") == ("user_2", "x", "")
    for bad in ("uio_pci_generic", "tcm-user/", "tcm-user/1"):
        with pytest.raises(UioError):
            parse_name(bad)


def test_find_by_name_and_hba(tmp_path):
    _uio(tmp_path, 0, "uio_dummy", 4096)
    _uio(tmp_path, 3, "tcm-user/1/lun0/rbd/pool/img", 0x4000)
    _uio(tmp_path, 7, "tcm-user/2/lun1/file/a", 0x8000)
    _uio(tmp_path, 9, "tcm-user/3/lun1/file/b", 0x8000)
    dev = find("lun0", sysfs=tmp_path)
    assert (dev.minor, dev.hba, dev.config, dev.map_size) == (3, "1", "rbd/pool/img", 0x4000)
    assert dev.dev_path == "/dev/uio3"
    assert find("lun1", hba="3", sysfs=tmp_path).minor == 9
    with pytest.raises(UioError, match="several"):
        find("lun1", sysfs=tmp_path)
    with pytest.raises(UioError, match="no TCMU"):
        find("nope", sysfs=tmp_path)


def test_open_ring_maps_and_checks_the_mailbox(tmp_path):
    sim = RingSimulator(cmdr_size=4096, data_size=8192)
    dev_dir = tmp_path / "dev"
    dev_dir.mkdir()
    (dev_dir / "uio4").write_bytes(bytes(sim.mm))
    _uio(tmp_path / "sys", 4, "tcm-user/1/lun/cfg", sim.map_size)
    ring = open_ring(find("lun", sysfs=tmp_path / "sys"), dev_dir=str(dev_dir))
    assert ring.flags == L.FLAG_CAP_OOOC | L.FLAG_CAP_READ_LEN | L.FLAG_CAP_TMR
    assert len(ring.mm) == sim.map_size
    ring.close()
    # a version-1 mailbox is refused
    L.U16.pack_into(sim.mm, L.MB_VERSION, 1)
    (dev_dir / "uio4").write_bytes(bytes(sim.mm))
    with pytest.raises(UioError, match="version 1"):
        open_ring(find("lun", sysfs=tmp_path / "sys"), dev_dir=str(dev_dir))
    sim.close()
