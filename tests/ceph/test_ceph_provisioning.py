"""Thin provisioning through the emulator on a real RBD image: what UNMAP and WRITE SAME
deallocate is what GET LBA STATUS then reports, at the granularity Block Limits announces."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import pytest
from emulation_support import (
    assert_good,
    get_lba_status_cdb,
    inquiry_cdb,
    parse_block_limits,
    parse_lba_status,
    parse_vpd_header,
    unmap_cdb,
    unmap_params,
)

from tcmu_pr.backends.rbd_data import RbdImage
from tcmu_pr.emulation import DeviceInfo, Emulator
from tcmu_pr.emulation.provisioning import unmap_granularity

pytestmark = pytest.mark.ceph

BS = 512
OBJ = (4 << 20) // BS  # LBAs per 4 MiB object
NUM = (64 << 20) // BS  # the fixture's image
M, D = 0, 1


@pytest.fixture
def emu(ceph_conf: str, rbd_image: str, rbd_io_native: Any) -> Iterator[Emulator]:
    with RbdImage("rbd", rbd_image, conf=ceph_conf) as image:
        dev = DeviceInfo.from_size(
            "rbd:rbd/" + rbd_image, image.size, unmap_granularity=unmap_granularity(image, BS)
        )
        yield Emulator(dev, image)


def gls(em: Emulator, lba: int = 0) -> list[tuple[int, int, int]]:
    reply = parse_lba_status(assert_good(em.emulate(get_lba_status_cdb(lba))))
    assert reply.rtp == 1
    return reply.descriptors


def write(em: Emulator, lba: int, blocks: int) -> None:
    step = em.device.max_transfer_lbas
    for first in range(lba, lba + blocks, step):
        n = min(step, lba + blocks - first)
        cdb = struct.pack(">BBQIBB", 0x8A, 0, first, n, 0, 0)
        assert_good(em.emulate(cdb, b"\x5a" * (n * BS)))


def test_block_limits_announce_the_object(emu: Emulator) -> None:
    _, payload = parse_vpd_header(assert_good(emu.emulate(inquiry_cdb(1, 0xB0))))
    limits = parse_block_limits(payload)
    assert (limits["opt_unmap_granularity"], limits["ugavalid"]) == (OBJ, 1)
    assert limits["unmap_alignment"] == 0


def test_unmap_of_whole_objects_reads_back_deallocated(emu: Emulator) -> None:
    assert gls(emu) == [(0, NUM, D)]
    write(emu, 0, 4 * OBJ)
    assert gls(emu) == [(0, 4 * OBJ, M), (4 * OBJ, NUM - 4 * OBJ, D)]
    assert_good(emu.emulate(unmap_cdb(24), unmap_params([(OBJ, 2 * OBJ)])))
    tail = (4 * OBJ, NUM - 4 * OBJ, D)
    assert gls(emu) == [(0, OBJ, M), (OBJ, 2 * OBJ, D), (3 * OBJ, OBJ, M), tail]
    assert gls(emu, OBJ + 5) == [(OBJ + 5, 2 * OBJ - 5, D), (3 * OBJ, OBJ, M), tail]


def test_unmap_inside_an_object_zeroes_but_stays_mapped(emu: Emulator) -> None:
    write(emu, 0, OBJ)
    assert_good(emu.emulate(unmap_cdb(24), unmap_params([(8, 64)])))  # inside: zeroed
    assert gls(emu) == [(0, OBJ, M), (OBJ, NUM - OBJ, D)]  # mapped, as librbd says
    data = assert_good(emu.emulate(struct.pack(">BBQIBB", 0x88, 0, 8, 64, 0, 0)))
    assert data == bytes(64 * BS)
    # the object's tail is a truncate: librbd's map drops it
    assert_good(emu.emulate(unmap_cdb(24), unmap_params([(OBJ - 16, 16)])))
    assert gls(emu) == [(0, OBJ - 16, M), (OBJ - 16, NUM - OBJ + 16, D)]


def test_write_same_unmap_of_zeros_deallocates(emu: Emulator) -> None:
    write(emu, 0, 2 * OBJ)
    cdb = struct.pack(">BBQIBB", 0x93, 0x08, OBJ, OBJ, 0, 0)  # WRITE SAME (16), UNMAP
    assert_good(emu.emulate(cdb, bytes(BS)))
    assert gls(emu) == [(0, OBJ, M), (OBJ, NUM - OBJ, D)]
    cdb = struct.pack(">BBQIBB", 0x93, 0x00, OBJ, OBJ, 0, 0)  # UNMAP 0: written zeros
    assert_good(emu.emulate(cdb, bytes(BS)))
    assert gls(emu) == [(0, 2 * OBJ, M), (2 * OBJ, NUM - 2 * OBJ, D)]
