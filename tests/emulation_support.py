"""Test-side helpers for the emulation tests: CDB builders and small independent decoders.

The decoders follow the SPC-4/SBC-3 tables field by field (like sg_inq / sg_vpd /
sg_readcap print them) and share no code with tcmu_pr.emulation, so an encoder bug
cannot hide behind a matching decoder bug.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.emulation import DeviceInfo, Emulator
from tcmu_pr.emulation.provisioning import unmap_granularity


def make_emulator(path: str, size: int = 1 << 20, **options: object) -> Emulator:
    """An Emulator over a fresh sparse file of ``size`` bytes at ``path``."""
    with open(path, "wb") as f:
        f.truncate(size)
    backend = FileDataBackend(path, read_only=bool(options.get("read_only", False)))
    options.setdefault("identity", "file:" + os.path.basename(path))
    block_size = int(options.get("block_size", 512))  # type: ignore[call-overload]
    options.setdefault("unmap_granularity", unmap_granularity(backend, block_size))
    identity = str(options.pop("identity"))
    return Emulator(DeviceInfo.from_size(identity, backend.size, **options), backend)


class SpyBackend:
    """A FileDataBackend seen through a log: every write/flush/discard/RMW in order, and an
    optional byte to corrupt on read (a medium that does not return what was written)."""

    def __init__(self, inner: FileDataBackend, *, can_or_write: bool = True) -> None:
        self.inner = inner
        self.path = inner.path
        self.can_or_write = can_or_write
        self.calls: list[str] = []
        self.corrupt_at: int | None = None  # absolute byte offset

    @property
    def size(self) -> int:
        return self.inner.size

    def read(self, offset: int, length: int) -> bytes:
        data = bytearray(self.inner.read(offset, length))
        if self.corrupt_at is not None and offset <= self.corrupt_at < offset + length:
            data[self.corrupt_at - offset] ^= 0x01
        return bytes(data)

    def write(self, offset: int, data: bytes) -> None:
        self.calls.append("write")
        self.inner.write(offset, data)

    def flush(self) -> None:
        self.calls.append("flush")
        self.inner.flush()

    def discard(self, offset: int, length: int) -> None:
        self.calls.append("discard")
        self.inner.discard(offset, length)

    def compare_and_write(self, offset: int, expected: bytes, data: bytes) -> int | None:
        self.calls.append("compare_and_write")
        return self.inner.compare_and_write(offset, expected, data)

    def or_write(self, offset: int, data: bytes) -> None:
        self.calls.append("or_write")
        self.inner.or_write(offset, data)

    def close(self) -> None:
        self.inner.close()


def spy_emulator(path: str, size: int = 1 << 20, **options: object) -> tuple[Emulator, SpyBackend]:
    """An Emulator over a SpyBackend; ``can_or_write`` goes to the spy, the rest to DeviceInfo."""
    can_or_write = bool(options.pop("can_or_write", True))
    plain = make_emulator(path, size, **options)
    spy = SpyBackend(plain.backend, can_or_write=can_or_write)  # type: ignore[arg-type]
    return Emulator(plain.device, spy), spy


# --- CDB builders -----------------------------------------------------------------------


def inquiry_cdb(evpd: int = 0, page: int = 0, alloc: int = 255, cmddt: int = 0) -> bytes:
    return bytes([0x12, evpd | (cmddt << 1), page]) + alloc.to_bytes(2, "big") + b"\0"


def rw10(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)


def rw16(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


def block_cdb(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    """A CDB in the READ/WRITE layout of the opcode's group (SBC-4): 6, 10, 12 or 16 bytes;
    ``flags`` is byte 1 (for 6-byte CDBs it is ORed over the LBA's top bits)."""
    group = opcode >> 5
    if group == 0:
        return struct.pack(">BBHBB", opcode, flags | (lba >> 16), lba & 0xFFFF, blocks & 0xFF, 0)
    if group in (1, 2):
        return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)
    if group == 5:
        return struct.pack(">BBIIBB", opcode, flags, lba, blocks, 0, 0)
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


def caw(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, blocks, 0, 0)


def unmap_cdb(param_len: int, anchor: int = 0) -> bytes:
    return struct.pack(">BB4xBHB", 0x42, anchor, 0, param_len, 0)


def unmap_params(ranges: list[tuple[int, int]]) -> bytes:
    descs = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(descs) + 6, len(descs)) + descs


def get_lba_status_cdb(lba: int, alloc: int = 4096, report: int = 0) -> bytes:
    """GET LBA STATUS (16): SERVICE ACTION IN (16) 9Eh, service action 12h."""
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, alloc, report, 0)


# --- decoders ---------------------------------------------------------------------------


@dataclass
class SenseData:
    response_code: int
    valid: bool
    key: int
    information: int
    asc: int
    ascq: int
    #: SPC-4 sense-key specific field pointer: (C/D, byte, bit or None when BPV=0), or None
    #: when SKSV is clear.
    field: tuple[int, int, int | None] | None = None


def parse_sense(buf: bytes) -> SenseData:
    assert buf is not None and len(buf) >= 14
    code = buf[0] & 0x7F
    assert code in (0x70, 0x71), f"not fixed-format sense: {buf.hex()}"
    assert buf[7] + 8 <= len(buf)
    field = None
    if len(buf) >= 18 and buf[15] & 0x80:  # SKSV
        cd, bpv = (buf[15] >> 6) & 1, (buf[15] >> 3) & 1
        field = (cd, int.from_bytes(buf[16:18], "big"), buf[15] & 0x07 if bpv else None)
    return SenseData(
        code,
        bool(buf[0] & 0x80),
        buf[2] & 0x0F,
        int.from_bytes(buf[3:7], "big"),
        buf[12],
        buf[13],
        field,
    )


def assert_check(reply: tuple, key: int, asc: int, ascq: int = 0) -> SenseData:
    status, sense, data = reply
    assert status == 0x02, reply
    assert data is None
    s = parse_sense(sense)
    assert (s.key, s.asc, s.ascq) == (key, asc, ascq), s
    return s


def assert_good(reply: tuple) -> bytes | None:
    status, sense, data = reply
    assert status == 0 and sense is None, (status, sense and parse_sense(sense))
    return data


def parse_standard_inquiry(buf: bytes) -> dict:
    return {
        "qualifier": buf[0] >> 5,
        "device_type": buf[0] & 0x1F,
        "rmb": buf[1] >> 7,
        "version": buf[2],
        "normaca": (buf[3] >> 5) & 1,
        "hisup": (buf[3] >> 4) & 1,
        "response_format": buf[3] & 0x0F,
        "additional_length": buf[4],
        "sccs": buf[5] >> 7,
        "tpgs": (buf[5] >> 4) & 3,
        "3pc": (buf[5] >> 3) & 1,
        "protect": buf[5] & 1,
        "cmdque": (buf[7] >> 1) & 1,
        "vendor": buf[8:16].decode("ascii"),
        "product": buf[16:32].decode("ascii"),
        "revision": buf[32:36].decode("ascii"),
    }


def parse_vpd_header(buf: bytes) -> tuple[int, bytes]:
    """(page code, payload); checks the page length against the buffer."""
    assert buf[0] == 0x00  # peripheral qualifier 0, direct access
    length = int.from_bytes(buf[2:4], "big")
    assert len(buf) == 4 + length, (len(buf), length)
    return buf[1], buf[4:]


def parse_designators(payload: bytes) -> list[dict]:
    out, pos = [], 0
    while pos < len(payload):
        head = payload[pos : pos + 4]
        length = head[3]
        out.append(
            {
                "protocol": head[0] >> 4,
                "code_set": head[0] & 0x0F,
                "piv": head[1] >> 7,
                "association": (head[1] >> 4) & 3,
                "type": head[1] & 0x0F,
                "value": payload[pos + 4 : pos + 4 + length],
            }
        )
        pos += 4 + length
    assert pos == len(payload)
    return out


def parse_block_limits(payload: bytes) -> dict:
    assert len(payload) == 0x3C
    g = lambda a, n: int.from_bytes(payload[a - 4 : a - 4 + n], "big")  # noqa: E731 - SBC offsets
    return {
        "wsnz": payload[0] & 1,
        "max_caw": g(5, 1),
        "opt_granularity": g(6, 2),
        "max_transfer": g(8, 4),
        "opt_transfer": g(12, 4),
        "max_unmap_lbas": g(20, 4),
        "max_unmap_descs": g(24, 4),
        "opt_unmap_granularity": g(28, 4),
        "ugavalid": g(32, 4) >> 31,
        "unmap_alignment": g(32, 4) & 0x7FFFFFFF,
        "max_write_same": g(36, 8),
    }


def parse_readcap16(buf: bytes) -> dict:
    return {
        "last_lba": int.from_bytes(buf[0:8], "big"),
        "block_size": int.from_bytes(buf[8:12], "big"),
        "prot_en": buf[12] & 1,
        "lbppbe": buf[13] & 0x0F,
        "lbpme": buf[14] >> 7,
        "lbprz": (buf[14] >> 6) & 1,
        "lowest_aligned": int.from_bytes(buf[14:16], "big") & 0x3FFF,
    }


@dataclass
class LbaStatus:
    data_length: int  # PARAMETER DATA LENGTH
    completion: int  # COMPLETION CONDITION
    rtp: int
    descriptors: list[tuple[int, int, int]]  # (LBA, NUMBER OF LOGICAL BLOCKS, PROVISIONING STATUS)


def parse_lba_status(buf: bytes) -> LbaStatus:
    """GET LBA STATUS parameter data, as sg_get_lba_status decodes it (only whole descriptors)."""
    assert len(buf) >= 8, buf.hex()
    length = int.from_bytes(buf[0:4], "big")
    descriptors = []
    for pos in range(8, min(len(buf), length + 4) - 15, 16):
        d = buf[pos : pos + 16]
        assert d[12] & 0xF0 == 0 and d[13:16] == bytes(3), d.hex()  # reserved / ADDITIONAL STATUS
        descriptors.append((int.from_bytes(d[0:8], "big"), int.from_bytes(d[8:12], "big"), d[12]))
    return LbaStatus(length, (buf[7] >> 1) & 0x07, buf[7] & 0x01, descriptors)


def parse_mode(buf: bytes, ten: bool) -> dict:
    """Header, block descriptors and a {page code: page bytes} map of MODE SENSE data."""
    if ten:
        length = int.from_bytes(buf[0:2], "big") + 2
        medium, dsp, longlba = buf[2], buf[3], buf[4] & 1
        bd_len = int.from_bytes(buf[6:8], "big")
        pos = 8
    else:
        length = buf[0] + 1
        medium, dsp, longlba, bd_len = buf[1], buf[2], 0, buf[3]
        pos = 4
    assert length == len(buf), (length, len(buf))
    bds = buf[pos : pos + bd_len]
    pos += bd_len
    pages = {}
    while pos < length:
        code, plen = buf[pos] & 0x3F, buf[pos + 1]
        assert not buf[pos] & 0x40  # no subpage format
        pages[code] = buf[pos : pos + 2 + plen]
        pos += 2 + plen
    assert pos == length
    blocks = block_len = None
    if bds:
        if longlba:
            assert len(bds) == 16
            blocks, block_len = int.from_bytes(bds[0:8], "big"), int.from_bytes(bds[12:16], "big")
        else:
            assert len(bds) == 8
            blocks, block_len = int.from_bytes(bds[0:4], "big"), int.from_bytes(bds[5:8], "big")
    return {
        "medium": medium,
        "wp": dsp >> 7,
        "dpofua": (dsp >> 4) & 1,
        "longlba": longlba,
        "blocks": blocks,
        "block_len": block_len,
        "pages": pages,
    }
