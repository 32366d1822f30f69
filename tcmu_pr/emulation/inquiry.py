"""INQUIRY: standard data and the VPD pages hosts read at probe time (SPC-4 §6.6, §7.8; SBC-3 §6.6).

Pure functions of the ``DeviceInfo``.  The identity pages (0x80, 0x83) depend only on the LU
identity plus the optional per-port designators, which is what lets multipath group the
devices of one image.
"""

from __future__ import annotations

import math
import struct

from tcmu_pr.emulation.cdb import invalid_field, u
from tcmu_pr.emulation.device import DeviceInfo

# VPD page codes.
VPD_SUPPORTED = 0x00
VPD_UNIT_SERIAL = 0x80
VPD_DEVICE_ID = 0x83
VPD_BLOCK_LIMITS = 0xB0
VPD_BLOCK_CHARACTERISTICS = 0xB1
VPD_LOGICAL_BLOCK_PROVISIONING = 0xB2

# Designator code sets / associations / types (SPC-4 §7.8.6.1).
_CODE_BINARY = 1
_CODE_ASCII = 2
_ASSOC_LU = 0
_ASSOC_TARGET_PORT = 1
_TYPE_T10_VENDOR = 1
_TYPE_NAA = 3
_TYPE_RELATIVE_PORT = 4
_TYPE_TARGET_PORT_GROUP = 5

_PERIPHERAL_DISK = 0x00
_VERSION_SPC4 = 0x06

# Version descriptors (SPC-4 table "Version descriptor values").
VERSION_SAM5 = 0x00A0
VERSION_SPC4 = 0x0460
VERSION_SBC3 = 0x04C0
VERSION_ISCSI = 0x0960
_STANDARD_LENGTH = 96  # through the last reserved byte after the eight version descriptors


def _pad(text: str, width: int) -> bytes:
    return text.encode("ascii").ljust(width, b" ")


def standard_inquiry(dev: DeviceInfo) -> bytes:
    """96 bytes (SPC-4 §6.6.2): a direct-access block device, VERSION 06h (SPC-4), command
    queuing, no 3PC, and the version descriptors at bytes 58-73: SAM-5, SPC-4, SBC-3 and the
    transport when the device knows it.  ADDITIONAL LENGTH covers all 96 bytes, as LIO's."""
    buf = bytearray(_STANDARD_LENGTH)
    buf[0] = _PERIPHERAL_DISK
    buf[2] = _VERSION_SPC4
    buf[3] = 0x10 | 0x02  # HISUP, RESPONSE DATA FORMAT 2
    buf[4] = len(buf) - 5
    buf[5] = dev.tpgs << 4
    buf[7] = 0x02  # CMDQUE
    buf[8:16] = _pad(dev.vendor, 8)
    buf[16:32] = _pad(dev.product, 16)
    buf[32:36] = _pad(dev.revision, 4)
    versions = [VERSION_SAM5, VERSION_SPC4, VERSION_SBC3]
    if dev.transport_descriptor is not None:
        versions.append(dev.transport_descriptor)
    for i, code in enumerate(versions):
        buf[58 + 2 * i : 60 + 2 * i] = code.to_bytes(2, "big")
    return bytes(buf)


def _page(code: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", _PERIPHERAL_DISK, code, len(payload)) + payload


def _designator(code_set: int, assoc: int, kind: int, value: bytes) -> bytes:
    return bytes([code_set, (assoc << 4) | kind, 0, len(value)]) + value


def _device_identification(dev: DeviceInfo) -> bytes:
    designators = [
        _designator(_CODE_BINARY, _ASSOC_LU, _TYPE_NAA, dev.naa),
        _designator(
            _CODE_ASCII, _ASSOC_LU, _TYPE_T10_VENDOR, _pad(dev.vendor, 8) + dev.serial.encode()
        ),
    ]
    if dev.rtpi is not None:
        value = struct.pack(">HH", 0, dev.rtpi)
        designators.append(
            _designator(_CODE_BINARY, _ASSOC_TARGET_PORT, _TYPE_RELATIVE_PORT, value)
        )
    if dev.target_port_group is not None:
        value = struct.pack(">HH", 0, dev.target_port_group)
        designators.append(
            _designator(_CODE_BINARY, _ASSOC_TARGET_PORT, _TYPE_TARGET_PORT_GROUP, value)
        )
    return b"".join(designators)


def _block_limits(dev: DeviceInfo) -> bytes:
    """SBC-3 §6.6.3.  WSNZ is set: a WRITE SAME of zero blocks is refused, not "to the end".

    OPTIMAL UNMAP GRANULARITY is what the backend deallocates only whole (a file's block, an
    RBD object set), so an aligned unmap of whole granules is what GET LBA STATUS can then
    show deallocated; UGAVALID with alignment 0 because the granules start at LBA 0.
    """
    unmap_lbas = dev.max_unmap_lbas if dev.thin else 0
    unmap_descs = dev.max_unmap_descriptors if dev.thin else 0
    granularity = 1 << dev.physical_block_exponent
    unmap_granularity = min(math.lcm(dev.unmap_granularity, granularity), 0xFFFFFFFF)
    return struct.pack(
        ">BBHIIIIIIIQ20x",
        0x01,  # WSNZ
        dev.max_compare_and_write_lbas,
        granularity,  # OPTIMAL TRANSFER LENGTH GRANULARITY
        dev.max_transfer_lbas,
        dev.max_transfer_lbas,  # OPTIMAL TRANSFER LENGTH
        0,  # MAXIMUM PREFETCH LENGTH
        unmap_lbas,
        unmap_descs,
        unmap_granularity if dev.thin else 0,  # OPTIMAL UNMAP GRANULARITY
        0x80000000 if dev.thin else 0,  # UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
        dev.max_write_same_lbas,
    )


def _block_characteristics() -> bytes:
    """SBC-3 §6.6.2: rotation rate 1 (non-rotating medium), form factor not reported."""
    return struct.pack(">H58x", 1)


def _provisioning(dev: DeviceInfo) -> bytes:
    """SBC-4 Logical Block Provisioning VPD page, when thin: LBPU, LBPWS, LBPWS10; LBPRZ (a
    3-bit field in SBC-4) 001b, deallocated blocks read as zeros; ANC_SUP 0 and DP 0 (no
    anchoring, no provisioning group descriptor); PROVISIONING TYPE 010b (thin).  THRESHOLD
    EXPONENT 0 because no logical block provisioning thresholds are supported."""
    if not dev.thin:
        return bytes(4)
    lbprz = 0b001 << 2
    return bytes([0, 0x80 | 0x40 | 0x20 | lbprz, 0b010, 0])


def vpd_page(dev: DeviceInfo, code: int) -> bytes | None:
    """The VPD page ``code``, or None when it is not supported."""
    if code == VPD_SUPPORTED:
        return _page(code, bytes(SUPPORTED_PAGES))
    if code == VPD_UNIT_SERIAL:
        return _page(code, dev.serial.encode("ascii"))
    if code == VPD_DEVICE_ID:
        return _page(code, _device_identification(dev))
    if code == VPD_BLOCK_LIMITS:
        return _page(code, _block_limits(dev))
    if code == VPD_BLOCK_CHARACTERISTICS:
        return _page(code, _block_characteristics())
    if code == VPD_LOGICAL_BLOCK_PROVISIONING:
        return _page(code, _provisioning(dev))
    return None


SUPPORTED_PAGES = (
    VPD_SUPPORTED,
    VPD_UNIT_SERIAL,
    VPD_DEVICE_ID,
    VPD_BLOCK_LIMITS,
    VPD_BLOCK_CHARACTERISTICS,
    VPD_LOGICAL_BLOCK_PROVISIONING,
)


def inquiry(dev: DeviceInfo, cdb: bytes) -> bytes:
    """INQUIRY (6-byte CDB, length already checked); data-in cut to ALLOCATION LENGTH."""
    evpd, page_code = cdb[1] & 0x01, cdb[2]  # CMDDT (obsolete) is outside the usage mask
    if evpd:
        data = vpd_page(dev, page_code)
        if data is None:
            raise invalid_field()
    elif page_code:
        raise invalid_field()
    else:
        data = standard_inquiry(dev)
    return data[: u(cdb, 3, 2)]
