"""The TCMU ring ABI as data: mailbox and entry offsets, opcodes, flags.

Values are those of include/uapi/linux/target_core_user.h (mailbox version 2) as the
compiler lays them out: only the outer ``tcmu_cmd_entry`` is packed, so inside the request
``cdb_off`` is 8-aligned (byte 24 of the entry) and the iovec array starts at byte 48.
native/ring.h pins the same numbers with _Static_assert, and tests/test_ring_layout.py
compares both with the installed uapi header, so the three cannot drift apart silently.
The pure-Python loop and the simulator read and write the ring through these names only.
"""

from __future__ import annotations

import mmap
import struct

MAILBOX_VERSION = 2

# struct tcmu_mailbox
MB_VERSION = 0  # u16
MB_FLAGS = 2  # u16
MB_CMDR_OFF = 4  # u32
MB_CMDR_SIZE = 8  # u32
MB_CMD_HEAD = 12  # u32
MB_CMD_TAIL = 64  # u32, __aligned__(64): its own cache line, written by userspace only
MAILBOX_SIZE = 128  # sizeof(struct tcmu_mailbox); the kernel's CMDR_OFF

FLAG_CAP_OOOC = 1 << 0
FLAG_CAP_READ_LEN = 1 << 1
FLAG_CAP_TMR = 1 << 2
FLAG_CAP_KEEP_BUF = 1 << 3
#: The tcmu-pr kernel patch: entries may carry a nexus handle (docs/daemon.md).
FLAG_CAP_NEXUS = 1 << 4

# struct tcmu_cmd_entry_hdr
HDR_LEN_OP = 0  # u32: length (8-aligned) | op in the low 3 bits
HDR_CMD_ID = 4  # u16
HDR_KFLAGS = 6  # u8
HDR_UFLAGS = 7  # u8
HDR_SIZE = 8

OP_PAD = 0
OP_CMD = 1
OP_TMR = 2
OP_MASK = 0x7
ALIGN = 8  # TCMU_OP_ALIGN_SIZE

UFLAG_UNKNOWN_OP = 0x1
UFLAG_READ_LEN = 0x2
UFLAG_KEEP_BUF = 0x4

# hdr.kflags of the tcmu-pr kernel patch
KFLAG_NEXUS = 0x1  # REQ_NEXUS_HANDLE is valid
KFLAG_NEXUS_NEW_SESSION = 0x2  # first command of the handle from another session

# struct tcmu_cmd_entry, request view
REQ_IOV_CNT = 8  # u32
REQ_IOV_BIDI_CNT = 12  # u32
REQ_IOV_DIF_CNT = 16  # u32
REQ_CDB_OFF = 24  # u64, offset of the CDB from the start of the mapping
REQ_NEXUS_HANDLE = 32  # u64 (mainline __pad1), valid with KFLAG_NEXUS
REQ_IOV = 48  # struct iovec[]: (u64 base offset from the start of the mapping, u64 len)
IOVEC_SIZE = 16

# struct tcmu_cmd_entry, response view (overlays the request from byte 8 on)
RSP_SCSI_STATUS = 8  # u8
RSP_READ_LEN = 12  # u32, valid with UFLAG_READ_LEN
RSP_SENSE = 16  # char[96]
SENSE_BUFFERSIZE = 96
ENTRY_SIZE = 112  # sizeof(struct tcmu_cmd_entry): a CMD entry is never shorter

# struct tcmu_tmr_entry
TMR_TYPE = 8  # u8
TMR_CMD_CNT = 12  # u32
TMR_CMD_IDS = 32  # u16[]
TMR_SIZE = 32

TMR_ABORT_TASK = 1
TMR_LUN_RESET = 5

U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


class Mailbox:
    """cmd_head and cmd_tail of a live mapping, each read and written as one 32-bit access.

    Why not U32.pack_into/unpack_from: CPython moves explicitly little-endian fields one byte
    at a time, so the other side (the kernel, or the C loop facing a simulator) could see a
    half-written cmd_head or cmd_tail and walk into entries that were never written.  A
    memoryview cast to native "I" stores and loads the aligned word whole (x86-64 and
    aarch64 are little-endian, so the value is the same).  :meth:`release` before the
    mapping is closed (an exported view keeps it open).
    """

    def __init__(self, mm: mmap.mmap | bytearray) -> None:
        self._words = memoryview(mm)[:MAILBOX_SIZE].cast("I")

    @property
    def head(self) -> int:
        return self._words[MB_CMD_HEAD // 4]

    @head.setter
    def head(self, value: int) -> None:
        self._words[MB_CMD_HEAD // 4] = value

    @property
    def tail(self) -> int:
        return self._words[MB_CMD_TAIL // 4]

    @tail.setter
    def tail(self, value: int) -> None:
        self._words[MB_CMD_TAIL // 4] = value

    def release(self) -> None:
        self._words.release()
IOVEC = struct.Struct("<QQ")

#: CDB length by opcode group (bits 7..5), as the kernel's scsi_command_size() has it.
CDB_LEN_BY_GROUP = (6, 10, 10, 12, 16, 12, 10, 10)
VARIABLE_LENGTH_CDB = 0x7F  # length is 8 + byte 7


def cmd_entry_size(iov_cnt: int, cdb_len: int) -> int:
    """Ring bytes the kernel uses for a CMD: entry with its iovecs, then the CDB, 8-aligned."""
    base = max(REQ_IOV + iov_cnt * IOVEC_SIZE, ENTRY_SIZE)
    return align(base + cdb_len)


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def cdb_length(first_bytes: bytes) -> int:
    """Length of the CDB starting with ``first_bytes`` (at least 8 bytes for opcode 0x7F)."""
    if first_bytes[0] == VARIABLE_LENGTH_CDB:
        return 8 + first_bytes[7]
    return CDB_LEN_BY_GROUP[first_bytes[0] >> 5]
