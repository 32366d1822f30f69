"""READ CAPACITY (10) and (16) (SBC-3 §5.15, §5.16): pure functions of the ``DeviceInfo``."""

from __future__ import annotations

import struct

from tcmu_pr.emulation.cdb import invalid_field, u
from tcmu_pr.emulation.device import DeviceInfo

#: SERVICE ACTION IN (16) service action for READ CAPACITY (16).
SA_READ_CAPACITY_16 = 0x10


def read_capacity_10(dev: DeviceInfo, cdb: bytes) -> bytes:
    """8 bytes; a last LBA past 32 bits reads 0xFFFFFFFF, which sends hosts to the 16-byte form."""
    pmi = cdb[8] & 0x01
    if not pmi and u(cdb, 2, 4):  # an LBA without PMI is meaningless (SBC-3 §5.15.1)
        raise invalid_field()
    last = dev.num_lbas - 1
    return struct.pack(">II", min(last, 0xFFFFFFFF), dev.block_size)


def read_capacity_16(dev: DeviceInfo, cdb: bytes) -> bytes:
    """32 bytes with LBPME/LBPRZ (thin) and the physical block exponent, cut to allocation."""
    pmi = cdb[14] & 0x01
    if not pmi and u(cdb, 2, 8):
        raise invalid_field()
    thin_bits = 0xC0 if dev.thin else 0  # LBPME | LBPRZ: discarded blocks read back zero
    data = struct.pack(
        ">QIBBBB16x",
        dev.num_lbas - 1,
        dev.block_size,
        0,  # no protection information
        dev.physical_block_exponent,
        thin_bits,  # LOWEST ALIGNED LBA = 0
        0,
    )
    return data[: u(cdb, 10, 4)]
