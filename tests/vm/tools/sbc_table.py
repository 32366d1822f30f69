#!/usr/bin/env python3
"""Send one fixed list of SBC-4/SPC-4 commands to a disk through SG_IO and print what came
back, one JSON object per line: ``{"case": ..., "outcome": ..., "detail": ...}``.

``outcome`` is ``GOOD``, ``CHECK KK/AA/QQ`` (sense key, ASC, ASCQ; ``info=N`` appended when
the INFORMATION field is valid) or ``RESERVATION CONFLICT``/``status 0xNN``.  ``detail``
summarises data-in where a case is about its content (VPD bits, usage data, LBA status).

Run against each backend of the same layout (ours, LIO fileio, tcmu-runner) to compare them
row by row: ``tests/vm/test_emulation_vm.py`` does, and docs/emulation.md holds the table.
Runs in the guest with Debian's python3 only (no project imports). The disk is written.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import struct
import sys

SG_IO = 0x2285
SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV = -1, -2, -3


class SgIoHdr(ctypes.Structure):
    _fields_ = [
        ("interface_id", ctypes.c_int), ("dxfer_direction", ctypes.c_int),
        ("cmd_len", ctypes.c_ubyte), ("mx_sb_len", ctypes.c_ubyte),
        ("iovec_count", ctypes.c_ushort), ("dxfer_len", ctypes.c_uint),
        ("dxferp", ctypes.c_void_p), ("cmdp", ctypes.c_void_p), ("sbp", ctypes.c_void_p),
        ("timeout", ctypes.c_uint), ("flags", ctypes.c_uint), ("pack_id", ctypes.c_int),
        ("usr_ptr", ctypes.c_void_p), ("status", ctypes.c_ubyte),
        ("masked_status", ctypes.c_ubyte), ("msg_status", ctypes.c_ubyte),
        ("sb_len_wr", ctypes.c_ubyte), ("host_status", ctypes.c_ushort),
        ("driver_status", ctypes.c_ushort), ("resid", ctypes.c_int),
        ("duration", ctypes.c_uint), ("info", ctypes.c_uint),
    ]  # fmt: skip


def sg(fd: int, cdb: bytes, data_out: bytes = b"", data_in: int = 0) -> tuple[str, bytes]:
    """One command; (outcome, data-in)."""
    cdb_buf = ctypes.create_string_buffer(cdb, len(cdb))
    sense = ctypes.create_string_buffer(96)
    if data_out:
        buf = ctypes.create_string_buffer(data_out, len(data_out))
        direction, length = SG_DXFER_TO_DEV, len(data_out)
    else:
        buf = ctypes.create_string_buffer(max(data_in, 1))
        direction, length = (SG_DXFER_FROM_DEV, data_in) if data_in else (SG_DXFER_NONE, 0)
    h = SgIoHdr(interface_id=ord("S"), dxfer_direction=direction, cmd_len=len(cdb),
                mx_sb_len=96, dxfer_len=length, dxferp=ctypes.addressof(buf),
                cmdp=ctypes.addressof(cdb_buf), sbp=ctypes.addressof(sense), timeout=60000)
    fcntl.ioctl(fd, SG_IO, h)
    got = buf.raw[: max(0, length - h.resid)] if direction == SG_DXFER_FROM_DEV else b""
    if h.status == 0 and h.host_status == 0 and (h.driver_status & 0x0F) == 0:
        return "GOOD", got
    if h.status == 0x18:
        return "RESERVATION CONFLICT", got
    if h.status == 0x02 and h.sb_len_wr:
        return decode_sense(sense.raw[: h.sb_len_wr]), got
    return f"status {h.status:#04x} host {h.host_status} driver {h.driver_status}", got


def decode_sense(s: bytes) -> str:
    if s[0] & 0x7F in (0x72, 0x73):  # descriptor format
        text = f"CHECK {s[1] & 0xF:02X}/{s[2]:02X}/{s[3]:02X}"
        at = 8
        while at + 2 <= len(s):
            if s[at] == 0 and at + 12 <= len(s) and s[at + 2] & 0x80:
                text += f" info={int.from_bytes(s[at + 4 : at + 12], 'big')}"
            at += 2 + s[at + 1]
        return text
    text = f"CHECK {s[2] & 0xF:02X}/{s[12]:02X}/{s[13]:02X}"
    if s[0] & 0x80:
        text += f" info={int.from_bytes(s[3:7], 'big')}"
    return text


def cdb10(op: int, lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, b1, lba, 0, n, 0)


def cdb12(op: int, lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, b1, lba, n, 0, 0)


def cdb16(op: int, lba: int, n: int, b1: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, b1, lba, n, 0, 0)


def main() -> int:
    fd = os.open(sys.argv[1], os.O_RDWR)
    _, cap = sg(fd, cdb16(0x9E, 0, 32, 0x10), data_in=32)  # READ CAPACITY(16)
    last, bs = struct.unpack(">QI", cap[:12])
    nblocks = last + 1
    end = nblocks  # the first LBA past the medium
    a = bytes(range(256)) * (bs // 256)
    b = bytes(bs)
    rows: list[tuple[str, str, str]] = []

    def run(case: str, cdb: bytes, data_out: bytes = b"", data_in: int = 0,
            detail=None) -> bytes:  # fmt: skip
        outcome, got = sg(fd, cdb, data_out, data_in)
        rows.append((case, outcome, detail(got) if detail and outcome == "GOOD" else ""))
        return got

    # identity and geometry
    def std_inquiry(d: bytes) -> str:
        descs = [f"{v:04X}" for v in struct.unpack(">8H", d[58:74].ljust(16, b"\0")) if v]
        return f"version {d[2]:02X} descriptors {','.join(descs) or '-'}"

    run("INQUIRY standard", bytes([0x12, 0, 0, 0, 96, 0]), data_in=96, detail=std_inquiry)
    run("READ CAPACITY(16)", cdb16(0x9E, 0, 32, 0x10), data_in=32,
        detail=lambda d: f"LBPME {d[14] >> 7} LBPRZ {(d[14] >> 6) & 1}")  # fmt: skip

    def block_limits(d: bytes) -> str:
        if len(d) < 36:
            return f"length {len(d)}"
        mu, md, og, ua = struct.unpack(">IIII", d[20:36])
        return f"max unmap {mu} descriptors {md} granularity {og} alignment {ua:#x}"

    run("VPD B0 Block Limits", bytes([0x12, 1, 0xB0, 0, 64, 0]), data_in=64, detail=block_limits)
    run("VPD B2 Logical Block Provisioning", bytes([0x12, 1, 0xB2, 0, 64, 0]), data_in=64,
        detail=lambda d: f"LBPU {d[5] >> 7} LBPWS {(d[5] >> 6) & 1} LBPWS10 {(d[5] >> 5) & 1} "
                         f"LBPRZ {(d[5] >> 2) & 7} type {d[6] & 7}")  # fmt: skip
    run("MODE SENSE(10) caching", bytes([0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 64, 0]), data_in=64,
        detail=lambda d: f"WCE {(d[8 + d[7] + 2] >> 2) & 1}")  # fmt: skip

    # data, FUA, DPO, protection fields
    run("WRITE(10)", cdb10(0x2A, 0, 2), a * 2)
    run("WRITE(10) FUA", cdb10(0x2A, 2, 1, 0x08), a)
    run("WRITE(10) WRPROTECT=1", cdb10(0x2A, 3, 1, 0x20), a)
    run("READ(10) DPO", cdb10(0x28, 0, 1, 0x10), data_in=bs)
    run("READ(10) RDPROTECT=1", cdb10(0x28, 0, 1, 0x20), data_in=bs)
    run("READ(10) past the end", cdb10(0x28, end, 1), data_in=bs)

    # VERIFY
    run("VERIFY(10) BYTCHK=0", cdb10(0x2F, 0, 2))
    run("VERIFY(10) BYTCHK=01b match", cdb10(0x2F, 0, 2, 0x02), a * 2)
    bad = bytearray(a * 2)
    bad[bs + 100] ^= 0xFF
    run("VERIFY(10) BYTCHK=01b mismatch at byte 612", cdb10(0x2F, 0, 2, 0x02), bytes(bad))
    run("VERIFY(16) BYTCHK=11b match", cdb16(0x8F, 0, 2, 0x06), a)
    run("VERIFY(16) BYTCHK=11b mismatch", cdb16(0x8F, 0, 4, 0x06), a)
    run("VERIFY(10) past the end", cdb10(0x2F, end, 1))
    run("VERIFY(10) VRPROTECT=1", cdb10(0x2F, 0, 1, 0x20))
    run("VERIFY(10) BYTCHK=10b", cdb10(0x2F, 0, 1, 0x04))

    # WRITE AND VERIFY
    run("WRITE AND VERIFY(10)", cdb10(0x2E, 8, 1), a)
    run("WRITE AND VERIFY(10) BYTCHK=01b", cdb10(0x2E, 9, 1, 0x02), a)
    run("WRITE AND VERIFY(12)", cdb12(0xAE, 10, 1), a)
    run("WRITE AND VERIFY(16)", cdb16(0x8E, 11, 1), a)
    run("WRITE AND VERIFY(16) past the end", cdb16(0x8E, end, 1), a)
    run("READ(10) after WRITE AND VERIFY", cdb10(0x28, 8, 4), data_in=4 * bs,
        detail=lambda d: "data matches" if d == a * 4 else "data differs")  # fmt: skip

    # COMPARE AND WRITE
    run("COMPARE AND WRITE match", cdb16(0x89, 0, 0) [:13] + bytes([1, 0, 0]), a + b)
    run("COMPARE AND WRITE mismatch", cdb16(0x89, 0, 0)[:13] + bytes([1, 0, 0]), a + b)
    run("COMPARE AND WRITE 255 blocks (over the limit)",
        cdb16(0x89, 0, 0)[:13] + bytes([255, 0, 0]), (a + b) * 255)  # fmt: skip
    run("COMPARE AND WRITE FUA", cdb16(0x89, 0, 0, 0x08)[:13] + bytes([1, 0, 0]), b + a)

    # thin provisioning
    zero = bytes(bs)
    run("WRITE(16) 64 blocks at 1024", cdb16(0x8A, 1024, 64), a * 64)
    unmap = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 1024, 64)
    run("UNMAP 64 blocks at 1024", bytes([0x42, 0, 0, 0, 0, 0, 0, 0, len(unmap), 0]), unmap)
    run("READ(10) unmapped blocks", cdb10(0x28, 1024, 1), data_in=bs,
        detail=lambda d: "zeros" if d == zero else "data")  # fmt: skip
    run("WRITE SAME(16) UNMAP zeros", cdb16(0x93, 2048, 64, 0x08), zero)
    run("WRITE SAME(10) UNMAP zeros", cdb10(0x41, 4096, 64, 0x08), zero)
    run("WRITE SAME(16) past the end", cdb16(0x93, end, 1), zero)

    def lba_status(d: bytes) -> str:
        n = (struct.unpack(">I", d[:4])[0] - 4) // 16
        out = []
        for i in range(min(n, (len(d) - 8) // 16)):
            lba, cnt, st = struct.unpack(">QIB", d[8 + 16 * i : 8 + 16 * i + 13])
            out.append(f"{lba}+{cnt}:{'mapped' if st == 0 else 'deallocated' if st == 1 else st}")
        return " ".join(out[:3])

    run("GET LBA STATUS at 0", cdb16(0x9E, 0, 64, 0x12), data_in=64, detail=lba_status)
    run("GET LBA STATUS at 1024 (unmapped)", cdb16(0x9E, 1024, 64, 0x12), data_in=64,
        detail=lba_status)  # fmt: skip
    run("GET LBA STATUS past the end", cdb16(0x9E, end, 64, 0x12), data_in=64)

    # SYNCHRONIZE CACHE
    run("SYNCHRONIZE CACHE(10)", cdb10(0x35, 0, 8))
    run("SYNCHRONIZE CACHE(10) past the end", cdb10(0x35, end, 1))
    run("SYNCHRONIZE CACHE(16)", cdb16(0x91, 0, 0))

    # ORWRITE
    run("ORWRITE(16)", cdb16(0x8B, 16, 1), a)

    # REPORT SUPPORTED OPERATION CODES
    def all_opcodes(d: bytes) -> str:
        n = struct.unpack(">I", d[:4])[0]
        ops, at = set(), 4
        while at + 8 <= min(len(d), 4 + n):
            sa = struct.unpack(">H", d[at + 2 : at + 4])[0]
            ops.add((d[at], sa) if d[at + 5] & 1 else d[at])
            at += 8 + (12 if d[at + 5] & 2 else 0)
        return f"{len(ops)} commands"

    def one_opcode(d: bytes) -> str:
        usage = d[4 : 4 + struct.unpack(">H", d[2:4])[0]]
        return f"support {d[1] & 7} usage {usage.hex()}"

    run("REPORT SUPPORTED OPCODES all", bytes([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0]),
        data_in=4096, detail=all_opcodes)  # fmt: skip
    run("REPORT SUPPORTED OPCODES all RCTD", bytes([0xA3, 0x0C, 0x80, 0, 0, 0, 0, 0, 16, 0, 0, 0]),
        data_in=4096, detail=all_opcodes)  # fmt: skip
    run("REPORT SUPPORTED OPCODES READ(10)", bytes([0xA3, 0x0C, 1, 0x28, 0, 0, 0, 0, 0, 64, 0, 0]),
        data_in=64, detail=one_opcode)  # fmt: skip

    for case, outcome, detail in rows:
        print(json.dumps({"case": case, "outcome": outcome, "detail": detail}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
