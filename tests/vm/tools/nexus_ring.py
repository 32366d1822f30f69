#!/usr/bin/env python3
"""A bare TCMU handler for the nexus-handle kernel test: serve one device's ring, log every
entry exactly as the kernel wrote it.

    nexus_ring.py HBA NAME LOG READY        (e.g. 77 nx0 /tmp/nx0.log /tmp/nx0.ready: user_77/nx0)

Answers just enough SCSI for the initiators' disk probe (INQUIRY, READ CAPACITY, TEST UNIT
READY, READ/WRITE of nothing in particular; anything else is CHECK CONDITION / INVALID
COMMAND OPERATION CODE), so a LUN of the device can be exported through tcm_loop and iSCSI
without the project's daemon.  Each CMD entry becomes one JSON line in LOG: cmd_id, kflags,
the request's first 48 bytes (header, counts, cdb_off, __pad1/nexus_handle, __pad2) as hex,
the handle and the opcode.  READY gets {"pid", "mailbox_flags"} once the ring is mapped.
Runs in the guest with the checkout on PYTHONPATH (ring layout and uio lookup from tcmu_pr).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import sys

from tcmu_pr.ring import layout as L
from tcmu_pr.ring import uio

BLOCKS = 16384  # 8 MiB of 512-byte blocks: what READ CAPACITY reports
GOOD, CHECK_CONDITION = 0x00, 0x02
REQ_PAD1 = 32  # __pad1 / nexus_handle
REQ_PAD2 = 40


def sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense data."""
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


INVALID_OPCODE = sense(0x05, 0x20, 0x00)
INVALID_FIELD = sense(0x05, 0x24, 0x00)


def answer(cdb: bytes) -> tuple[int, bytes, bytes]:
    """(status, sense, data-in) for one CDB."""
    op = cdb[0]
    if op == 0x12:  # INQUIRY
        if cdb[1] & 1:
            if cdb[2] == 0x00:
                return GOOD, b"", bytes([0, 0, 0, 1, 0])
            return CHECK_CONDITION, INVALID_FIELD, b""
        std = bytes([0, 0, 0x05, 0x02, 31, 0, 0, 0]) + b"TCMUNXS " + b"nexus probe     " + b"0001"
        return GOOD, b"", std
    if op == 0x00:  # TEST UNIT READY
        return GOOD, b"", b""
    if op == 0x25:  # READ CAPACITY(10)
        return GOOD, b"", struct.pack(">II", BLOCKS - 1, 512)
    if op == 0x9E and cdb[1] & 0x1F == 0x10:  # READ CAPACITY(16)
        return GOOD, b"", struct.pack(">QI", BLOCKS - 1, 512) + bytes(20)
    if op in (0x08, 0x28, 0x88):  # READ: zeros
        return GOOD, b"", b""
    if op in (0x0A, 0x2A, 0x8A, 0x35):  # WRITE, SYNCHRONIZE CACHE: accepted, dropped
        return GOOD, b"", b""
    return CHECK_CONDITION, INVALID_OPCODE, b""


class Ring:
    """One mapped device ring, served entry by entry."""

    def __init__(self, hba: str, name: str, log_path: str) -> None:
        self.mapping = uio.open_ring(uio.find(name, hba))
        self.mm = self.mapping.mm
        self.mailbox = L.Mailbox(self.mm)
        self.cmdr_off = L.U32.unpack_from(self.mm, L.MB_CMDR_OFF)[0]
        self.cmdr_size = L.U32.unpack_from(self.mm, L.MB_CMDR_SIZE)[0]
        self.log = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the ring

    def serve(self) -> None:
        tail, head = self.mailbox.tail, self.mailbox.head
        if tail == head:
            return
        while tail != head:
            ent = self.cmdr_off + tail
            len_op = L.U32.unpack_from(self.mm, ent + L.HDR_LEN_OP)[0]
            op, length = len_op & L.OP_MASK, len_op & ~L.OP_MASK
            if op == L.OP_CMD:
                self._cmd(ent)
            elif op == L.OP_TMR:
                self.log.write(json.dumps({"tmr": self.mm[ent + L.TMR_TYPE]}) + "\n")
            tail = (tail + length) % self.cmdr_size
        self.mailbox.tail = tail
        os.write(self.mapping.fd, b"\0\0\0\0")  # tells the kernel to reap completions

    def _cmd(self, ent: int) -> None:
        mm = self.mm
        raw = bytes(mm[ent:ent + L.REQ_IOV])
        cdb_off = L.U64.unpack_from(mm, ent + L.REQ_CDB_OFF)[0]
        cdb = bytes(mm[cdb_off:cdb_off + L.cdb_length(mm[cdb_off:cdb_off + 8])])
        iov_cnt = L.U32.unpack_from(mm, ent + L.REQ_IOV_CNT)[0]
        iovs = [L.IOVEC.unpack_from(mm, ent + L.REQ_IOV + i * L.IOVEC_SIZE)
                for i in range(iov_cnt)]
        self.log.write(json.dumps({
            "cmd_id": L.U16.unpack_from(mm, ent + L.HDR_CMD_ID)[0],
            "kflags": mm[ent + L.HDR_KFLAGS],
            "handle": L.U64.unpack_from(mm, ent + REQ_PAD1)[0],
            "pad2": L.U64.unpack_from(mm, ent + REQ_PAD2)[0],
            "opcode": cdb[0],
            "raw": raw.hex(),
        }) + "\n")
        status, sense_data, data = answer(cdb)
        if status == GOOD and cdb[0] in (0x12, 0x25, 0x9E, 0x08, 0x28, 0x88):
            for base, size in iovs:  # data-in: ours first, zeros after
                chunk, data = data[:size], data[size:]
                mm[base:base + size] = chunk + bytes(size - len(chunk))
        # The response overlays the request from byte 8 on: written after reading it.
        mm[ent + L.RSP_SCSI_STATUS] = status
        mm[ent + L.RSP_SENSE:ent + L.RSP_SENSE + L.SENSE_BUFFERSIZE] = (
            sense_data + bytes(L.SENSE_BUFFERSIZE - len(sense_data)))


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    hba, name, log_path, ready = argv
    ring = Ring(hba, name, log_path)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(ready + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "mailbox_flags": ring.mapping.flags}, f)
    os.replace(ready + ".tmp", ready)
    while not stop:
        readable, _, _ = select.select([ring.mapping.fd], [], [], 0.2)
        if readable:
            with contextlib.suppress(BlockingIOError):  # the event count; not needed
                os.read(ring.mapping.fd, 4)
        ring.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
