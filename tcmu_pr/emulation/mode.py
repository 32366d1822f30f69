"""MODE SENSE (6/10) and a minimal MODE SELECT (6/10) (SPC-4 §6.11-6.14, §7.5; SBC-3 §6.5).

Pages: Caching (0x08) and Control (0x0A), plus 0x3F for all of them.  Nothing is changeable:
the write cache setting is fixed when the device is created (the kernel learns it from the
netlink WRITECACHE attribute at ADDED_DEVICE and would not see a runtime change), so the
changeable mask is all zeros and MODE SELECT accepts only a parameter list that restates the
current values — what ``sdparm``/``sg_wr_mode`` round-trips do — and refuses any change
with INVALID FIELD IN PARAMETER LIST.  Saved values are not supported.
"""

from __future__ import annotations

import struct

from tcmu_pr import scsi
from tcmu_pr.emulation.cdb import SAVING_PARAMETERS_NOT_SUPPORTED, invalid_field, u
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import CheckCondition

PAGE_CACHING = 0x08
PAGE_CONTROL = 0x0A
PAGE_ALL = 0x3F

# Page control (PC) values.
PC_CURRENT = 0
PC_CHANGEABLE = 1
PC_DEFAULT = 2
PC_SAVED = 3

_SUBPAGE_ALL = 0xFF


def _caching_page(dev: DeviceInfo, pc: int) -> bytes:
    """Caching mode page (SBC-3 §6.5.5): WCE reflects the device's write cache."""
    page = bytearray(20)
    page[0], page[1] = PAGE_CACHING, len(page) - 2
    if pc != PC_CHANGEABLE and dev.write_cache:
        page[2] = 0x04  # WCE
    return bytes(page)


def _control_page(pc: int) -> bytes:
    """Control mode page (SPC-4 §7.5.8): unrestricted reordering, fixed-format sense."""
    page = bytearray(12)
    page[0], page[1] = PAGE_CONTROL, len(page) - 2
    if pc != PC_CHANGEABLE:
        page[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering allowed
    return bytes(page)


def _pages(dev: DeviceInfo, code: int, subpage: int, pc: int) -> bytes:
    if code == PAGE_ALL and subpage in (0, _SUBPAGE_ALL):
        return _caching_page(dev, pc) + _control_page(pc)
    if subpage != 0:
        raise invalid_field()
    if code == PAGE_CACHING:
        return _caching_page(dev, pc)
    if code == PAGE_CONTROL:
        return _control_page(pc)
    raise invalid_field()


def _device_specific(dev: DeviceInfo) -> int:
    return (0x80 if dev.read_only else 0) | 0x10  # WP, DPOFUA (FUA is honoured)


def _block_descriptor(dev: DeviceInfo, long_lba: bool) -> bytes:
    if long_lba:
        return struct.pack(">Q4xI", dev.num_lbas, dev.block_size)
    blocks = dev.num_lbas if dev.num_lbas <= 0xFFFFFFFF else 0xFFFFFFFF
    return struct.pack(">I", blocks) + dev.block_size.to_bytes(4, "big")


def mode_sense(dev: DeviceInfo, cdb: bytes) -> bytes:
    """MODE SENSE (6) or (10), told apart by opcode; cut to ALLOCATION LENGTH."""
    ten = cdb[0] == scsi.MODE_SENSE_10
    dbd = cdb[1] & 0x08
    llbaa = ten and bool(cdb[1] & 0x10)
    pc, code, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    if pc == PC_SAVED:
        raise CheckCondition(SAVING_PARAMETERS_NOT_SUPPORTED)
    pages = _pages(dev, code, subpage, pc)
    descriptor = b"" if dbd else _block_descriptor(dev, llbaa)
    if ten:
        body = (
            struct.pack(
                ">BBBxH",
                0,
                _device_specific(dev),
                0x01 if llbaa and descriptor else 0,
                len(descriptor),
            )
            + descriptor
            + pages
        )
        data = struct.pack(">H", len(body)) + body
        return data[: u(cdb, 7, 2)]
    body = bytes([0, _device_specific(dev), len(descriptor)]) + descriptor + pages
    data = bytes([len(body)]) + body
    return data[: cdb[4]]


def _split_pages(blob: bytes) -> list[bytes]:
    """The mode pages of a MODE SELECT list; INVALID FIELD IN PARAMETER LIST if they overrun."""
    pages, pos = [], 0
    while pos < len(blob):
        if pos + 2 > len(blob):
            raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
        if blob[pos] & 0x40:  # SPF: sub-page format, 4-byte header
            if pos + 4 > len(blob):
                raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
            end = pos + 4 + u(blob, pos + 2, 2)
        else:
            end = pos + 2 + blob[pos + 1]
        if end > len(blob):
            raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
        pages.append(blob[pos:end])
        pos = end
    return pages


def mode_select(dev: DeviceInfo, cdb: bytes, data_out: bytes) -> None:
    """MODE SELECT (6)/(10): accept a restatement of the current values, refuse any change."""
    ten = cdb[0] != 0x15
    pf, sp = cdb[1] & 0x10, cdb[1] & 0x01
    length = u(cdb, 7, 2) if ten else cdb[4]
    if sp:
        raise CheckCondition(SAVING_PARAMETERS_NOT_SUPPORTED)
    if length == 0:
        return  # SPC-4: a zero length transfers nothing and is not an error
    if not pf:  # vendor-specific page format: we have none
        raise invalid_field()
    header_len = 8 if ten else 4
    if len(data_out) < length or length < header_len:
        raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
    plist = data_out[:length]
    desc_len = u(plist, 6, 2) if ten else plist[3]
    if header_len + desc_len > length:
        raise CheckCondition(scsi.PARAMETER_LIST_LENGTH_ERROR)
    if desc_len:
        long_lba = ten and bool(plist[4] & 0x01)
        if plist[header_len : header_len + desc_len] != _block_descriptor(dev, long_lba):
            raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
    for page in _split_pages(plist[header_len + desc_len :]):
        code = page[0] & 0x3F
        if page[0] & 0x40 or code not in (PAGE_CACHING, PAGE_CONTROL):
            raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
        if code == PAGE_CACHING:
            current = _caching_page(dev, PC_CURRENT)
        else:
            current = _control_page(PC_CURRENT)
        if bytes([page[0] & 0x3F]) + page[1:] != current:  # PS bit (0x80) is ignored on input
            raise CheckCondition(scsi.INVALID_FIELD_IN_PARAMETER_LIST)
