"""A hermetic stand-in for the kernel side of a TCMU ring, for tests and the benchmark.

The shared memory is an anonymous mmap laid out as target_core_user lays out a uio
mapping: mailbox, command ring, data area.  :class:`RingSimulator` queues commands the way
the kernel's queue_cmd_ring() does (entry + iovecs + CDB, 8-aligned, a PAD entry when the
rest of the ring is too short, cmd_head bumped per command), and reaps completions the way
tcmu_handle_completions() does (from its last cleaned offset up to cmd_tail, skipping PAD
and TMR entries, reading status/sense from each CMD entry and data-in from the iovecs it
remembered, since the response overlays them).  Like the kernel it keeps its own copy of
every offset it wrote: nothing it reads back from the ring is trusted for bookkeeping.

Userspace is told about new work through ``notify_fd`` (an eventfd) and answers through
``kick_fd`` (a pipe): the uio fd plays both roles for real.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from tcmu_pr.ring import layout as L

DEFAULT_FLAGS = L.FLAG_CAP_OOOC | L.FLAG_CAP_READ_LEN | L.FLAG_CAP_TMR
#: What the tcmu-pr kernel patch announces in addition (entries may carry nexus handles).
NEXUS_FLAGS = DEFAULT_FLAGS | L.FLAG_CAP_NEXUS


class RingFull(Exception):
    """No room in the command ring or the data area (the kernel would queue the command)."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One answered command, as the kernel would hand it to LIO."""

    cmd_id: int
    status: int
    sense: bytes  # the 96-byte sense buffer (meaningful with CHECK CONDITION)
    data: bytes  # data-in: what the iovecs hold, cut to read_len when READ_LEN is set
    read_len: int | None  # None unless userspace set UFLAG_READ_LEN


@dataclass(slots=True)
class _Inflight:
    entry: int  # ring offset of the entry
    iovs: list[tuple[int, int]] = field(default_factory=list)  # (mapping offset, length)


def encode_cmd_entry(
    cmd_id: int,
    cdb_off: int,
    iovs: list[tuple[int, int]],
    length: int,
    *,
    nexus: int | None = None,
    new_session: bool = False,
) -> bytearray:
    """The bytes of a CMD entry of ``length`` ring bytes (CDB excluded: it goes at cdb_off).

    ``nexus``: a handle, as the tcmu-pr kernel patch writes it (KFLAG_NEXUS and the u64 at
    REQ_NEXUS_HANDLE); ``new_session`` adds KFLAG_NEXUS_NEW_SESSION.
    """
    ent = bytearray(L.REQ_IOV + len(iovs) * L.IOVEC_SIZE)
    L.U32.pack_into(ent, L.HDR_LEN_OP, length | L.OP_CMD)
    L.U16.pack_into(ent, L.HDR_CMD_ID, cmd_id)
    L.U32.pack_into(ent, L.REQ_IOV_CNT, len(iovs))
    L.U64.pack_into(ent, L.REQ_CDB_OFF, cdb_off)
    if nexus is not None:
        ent[L.HDR_KFLAGS] = L.KFLAG_NEXUS | (L.KFLAG_NEXUS_NEW_SESSION if new_session else 0)
        L.U64.pack_into(ent, L.REQ_NEXUS_HANDLE, nexus)
    for i, (base, n) in enumerate(iovs):
        L.IOVEC.pack_into(ent, L.REQ_IOV + i * L.IOVEC_SIZE, base, n)
    return ent


class RingSimulator:
    """Mailbox + command ring + data area in one anonymous shared mapping."""

    def __init__(
        self,
        *,
        cmdr_size: int = 64 * 1024,
        data_size: int = 1 << 20,
        flags: int = DEFAULT_FLAGS,
        block: int = 4096,
        heap: bool = False,
    ) -> None:
        """``heap=True`` backs the "shared memory" with a bytearray instead of an mmap, so
        that AddressSanitizer sees its exact bounds (the sanitizer test uses it)."""
        if cmdr_size % L.ALIGN or cmdr_size < L.ENTRY_SIZE:
            raise ValueError("cmdr_size must be a multiple of 8 and hold one entry")
        self.cmdr_off = L.MAILBOX_SIZE
        self.cmdr_size = cmdr_size
        self.data_off = self.cmdr_off + cmdr_size
        self.map_size = self.data_off + data_size
        self.block = block  # data-area allocation unit (the kernel's data block)
        self.mm: mmap.mmap | bytearray = (
            bytearray(self.map_size) if heap else mmap.mmap(-1, self.map_size)
        )
        L.U16.pack_into(self.mm, L.MB_VERSION, L.MAILBOX_VERSION)
        L.U16.pack_into(self.mm, L.MB_FLAGS, flags)
        L.U32.pack_into(self.mm, L.MB_CMDR_OFF, self.cmdr_off)
        L.U32.pack_into(self.mm, L.MB_CMDR_SIZE, cmdr_size)
        self.mailbox = L.Mailbox(self.mm)
        self.head = 0  # the kernel's own copy of cmd_head
        self.last_cleaned = 0  # how far completions have been reaped
        self._data_next = self.data_off
        self._next_id = 1
        self.inflight: dict[int, _Inflight] = {}
        self.notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        #: what one read of ``notify_fd`` must take (uio wants 4, an eventfd 8).
        self.event_size = 8
        self._kick_r, self.kick_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- queueing -------------------------------------------------------------------

    def _free(self) -> int:
        """Ring bytes the kernel may still use (one 8-byte slot stays empty: head != tail)."""
        return (self.last_cleaned - self.head - L.ALIGN) % self.cmdr_size

    def _reserve(self, size: int) -> int:
        """Ring offset for an entry of ``size`` bytes, inserting a PAD at the end if needed."""
        to_end = self.cmdr_size - self.head
        pad = to_end if to_end < size else 0
        if pad + size > self._free():
            raise RingFull("command ring")
        if pad:
            L.U32.pack_into(self.mm, self.cmdr_off + self.head, pad | L.OP_PAD)
            self.mm[self.cmdr_off + self.head + 4 : self.cmdr_off + self.head + 8] = bytes(4)
            self.head = 0
        return self.head

    def _alloc_data(self, length: int) -> int:
        size = -(-length // self.block) * self.block
        if self._data_next + size > self.map_size:
            if self.inflight:
                raise RingFull("data area")
            self._data_next = self.data_off
            if self._data_next + size > self.map_size:
                raise RingFull("data area")
        base = self._data_next
        self._data_next += size
        return base

    def queue(
        self,
        cdb: bytes,
        *,
        data_out: bytes = b"",
        data_in: int = 0,
        split: list[int] | None = None,
        publish: bool = True,
        nexus: int | None = None,
        new_session: bool = False,
    ) -> int:
        """Queue one SCSI command; returns its cmd_id.

        ``data_out`` is copied into the data area (a WRITE's payload); ``data_in`` reserves
        that many bytes for the answer.  ``split`` cuts the buffer into iovecs of these
        lengths (the kernel makes one iovec per run of contiguous data blocks).  ``nexus``
        puts a nexus handle in the entry (the patched kernel, once nexus_handles=1);
        ``new_session`` flags the handle's first command from a new session.
        """
        length = max(len(data_out), data_in)
        iovs: list[tuple[int, int]] = []
        if length:
            base = self._alloc_data(length)
            pos = base
            for n in split or [length]:
                iovs.append((pos, n))
                pos += n
            if pos - base != length:
                raise ValueError("split must add up to the transfer length")
            self.mm[base : base + len(data_out)] = data_out
        size = L.cmd_entry_size(len(iovs), len(cdb))
        at = self._reserve(size)
        ent = self.cmdr_off + at
        cdb_off = ent + max(L.REQ_IOV + len(iovs) * L.IOVEC_SIZE, L.ENTRY_SIZE)
        cmd_id = self._next_id
        self._next_id = self._next_id % 0xFFFF + 1
        self.mm[ent : ent + size] = bytes(size)
        raw = encode_cmd_entry(cmd_id, cdb_off, iovs, size, nexus=nexus,
                               new_session=new_session)  # fmt: skip
        self.mm[ent : ent + len(raw)] = raw
        self.mm[cdb_off : cdb_off + len(cdb)] = cdb
        self.inflight[cmd_id] = _Inflight(at, iovs)
        self.head = (at + size) % self.cmdr_size
        if publish:
            self.publish()
        return cmd_id

    def queue_tmr(self, tmr_type: int, cmd_ids: list[int]) -> None:
        """A TMR notification entry (TCMU_OP_TMR): no answer is expected, only the tail."""
        size = L.align(L.TMR_SIZE + 2 * len(cmd_ids))
        at = self._reserve(size)
        ent = self.cmdr_off + at
        self.mm[ent : ent + size] = bytes(size)
        L.U32.pack_into(self.mm, ent + L.HDR_LEN_OP, size | L.OP_TMR)
        self.mm[ent + L.TMR_TYPE] = tmr_type
        L.U32.pack_into(self.mm, ent + L.TMR_CMD_CNT, len(cmd_ids))
        for i, cid in enumerate(cmd_ids):
            L.U16.pack_into(self.mm, ent + L.TMR_CMD_IDS + 2 * i, cid)
        self.head = (at + size) % self.cmdr_size
        self.publish()

    def queue_raw(self, entry: bytes, advance: int) -> int:
        """Write arbitrary bytes as the next entry (``advance`` ring bytes, padded at the
        ring's end like any entry) and move cmd_head past it: for corrupt rings."""
        at = self._reserve(advance)
        self.mm[self.cmdr_off + at : self.cmdr_off + at + len(entry)] = entry
        self.head = (at + advance) % self.cmdr_size
        self.publish()
        return self.cmdr_off + at

    def publish(self) -> None:
        """Make queued entries visible: store cmd_head and signal userspace."""
        self.mailbox.head = self.head
        os.eventfd_write(self.notify_fd, 1)

    # -- completions ------------------------------------------------------------------

    @property
    def tail(self) -> int:
        return self.mailbox.tail

    def kicks(self) -> int:
        """Drain the kick pipe; the number of 4-byte kicks userspace wrote."""
        total = 0
        while True:
            try:
                chunk = os.read(self._kick_r, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            total += len(chunk)
        return total // 4

    def reap(self) -> list[Completion]:
        """Completions from the last reaped offset up to cmd_tail, in ring order."""
        done: list[Completion] = []
        tail = self.tail
        while self.last_cleaned != tail:
            ent = self.cmdr_off + self.last_cleaned
            len_op = L.U32.unpack_from(self.mm, ent)[0]
            length, op = len_op & ~L.OP_MASK, len_op & L.OP_MASK
            if op == L.OP_CMD:
                cmd_id = L.U16.unpack_from(self.mm, ent + L.HDR_CMD_ID)[0]
                rec = self.inflight.pop(cmd_id, None) or _Inflight(-1)  # raw: no iovecs known
                uflags = self.mm[ent + L.HDR_UFLAGS]
                read_len = None
                if uflags & L.UFLAG_READ_LEN:
                    read_len = L.U32.unpack_from(self.mm, ent + L.RSP_READ_LEN)[0]
                data = b"".join(self.mm[b : b + n] for b, n in rec.iovs)
                if read_len is not None:
                    data = data[:read_len]
                sense = bytes(self.mm[ent + L.RSP_SENSE : ent + L.RSP_SENSE + 96])
                done.append(
                    Completion(cmd_id, self.mm[ent + L.RSP_SCSI_STATUS], sense, data, read_len)
                )
            self.last_cleaned = (self.last_cleaned + length) % self.cmdr_size
        if not self.inflight:
            self._data_next = self.data_off
        return done

    def close(self) -> None:
        os.close(self.notify_fd)
        os.close(self._kick_r)
        os.close(self.kick_fd)
        self.mailbox.release()
        if isinstance(self.mm, mmap.mmap):
            self.mm.close()
