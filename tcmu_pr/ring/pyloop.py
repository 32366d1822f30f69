"""The ring loop in pure Python: the fallback when the C module is missing, and the
benchmark's baseline.

It makes exactly the decisions native/ring.c makes, in the same order, with the same
answers (tests compare the two entry by entry); only the speed differs.  Data moves with
``os.preadv``/``os.pwritev`` straight between the backing file and memoryviews of the
mapping, as the C loop does.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from typing import TYPE_CHECKING

from tcmu_pr import scsi
from tcmu_pr.ring import layout as L
from tcmu_pr.ring.abi import (
    ERR_ENTRY,
    ERR_HEAD,
    ERR_IOV,
    ERR_MAILBOX,
    ERR_NOT_CMD,
    ERR_PENDING,
    MAX_PUNTS,
    NEXUS_SLOTS,
    VERDICT_KNOWN,
    VERDICT_READ,
    VERDICT_UA,
    VERDICT_WRITE,
)
from tcmu_pr.ring.loop import NO_LEASE, RingError, coarse_ms, wait_batch_over
from tcmu_pr.ring.rw import NO_TRANSFER_LIMIT, PR_CHANGERS, RW_OPCODES, decode_rw
from tcmu_pr.scsi import INTERNAL_TARGET_FAILURE, CheckCondition

if TYPE_CHECKING:
    from tcmu_pr.cbt.mapfile import CbtMap

_U32, _U64, _IOVEC = L.U32, L.U64, L.IOVEC


class PyRing:
    """A device ring served in Python; same contract as NativeRing (``max_transfer`` and
    ``write_through`` as there)."""

    def __init__(
        self,
        mm: mmap.mmap,
        kick_fd: int,
        backend_fd: int,
        dev_size: int,
        block_size: int,
        *,
        max_transfer: int = 0,
        write_through: bool = False,
        cbt: CbtMap | None = None,
    ) -> None:
        if len(mm) < L.MAILBOX_SIZE or block_size <= 0:
            raise RingError(ERR_MAILBOX, "init")
        version = L.U16.unpack_from(mm, L.MB_VERSION)[0]
        off = _U32.unpack_from(mm, L.MB_CMDR_OFF)[0]
        size = _U32.unpack_from(mm, L.MB_CMDR_SIZE)[0]
        tail = _U32.unpack_from(mm, L.MB_CMD_TAIL)[0]
        if (
            version != L.MAILBOX_VERSION
            or off < L.MAILBOX_SIZE
            or size < L.ENTRY_SIZE
            or size % L.ALIGN
            or off % 8  # as the C loop: entries are read with aligned loads
            or off + size > min(len(mm), 0xFFFFFFFF)  # entry offsets travel as u32
            or tail >= size
            or tail % L.ALIGN
        ):
            raise RingError(ERR_MAILBOX, "init")
        self._mm = mm
        self._mv = memoryview(mm)
        self._mailbox = L.Mailbox(mm)
        self._map_size = len(mm)
        self._off, self._size = off, size
        self._data_off = off + size
        self._flags = L.U16.unpack_from(mm, L.MB_FLAGS)[0]
        self._kick_fd = kick_fd
        self._fd = backend_fd
        self._block_size = block_size
        self._num_blocks = dev_size // block_size
        self._max_transfer = max_transfer or NO_TRANSFER_LIMIT
        self._write_through = write_through
        self._cbt = cbt
        self.verdict = VERDICT_READ | VERDICT_WRITE
        self.lease_ms = NO_LEASE
        #: Odd while process() serves a batch; what publish() saw, for drain().
        self.busy = 0
        self._seen = 0
        self._busy_lock = threading.Lock()
        self._scan = tail
        #: punted entries still owed an answer -> the length seen when they were scanned
        #: (a header rewritten after the scan must not change what we act on)
        self._pending: dict[int, int] = {}
        #: ... and their nexus handles and kflags as read then (handle 0: none)
        self._pending_nexus: dict[int, tuple[int, int]] = {}
        self._nexus_mode = False
        self._slots = [0] * NEXUS_SLOTS
        self._closed = False
        self._stats = dict.fromkeys(
            ("cmds", "fast", "punted", "conflicts", "bad", "tmrs", "pads", "kicks", "submitted",
             "flushes"),
            0,  # submitted: never (one command at a time)
        )

    # -- the loop ---------------------------------------------------------------------

    def publish(self, verdict: int, lease_ms: int = NO_LEASE) -> None:
        with self._busy_lock:
            self.lease_ms, self.verdict = lease_ms, verdict
            self._seen = self.busy

    def nexus_mode(self, on: bool) -> None:
        with self._busy_lock:
            if not on:
                self._slots = [0] * NEXUS_SLOTS
            self._nexus_mode = on

    def publish_nexus(self, handle: int, verdict: int, lease_ms: int = NO_LEASE) -> None:
        with self._busy_lock:
            self.lease_ms = lease_ms
            if 0 < handle < NEXUS_SLOTS:
                self._slots[handle] = verdict | VERDICT_KNOWN
            self._seen = self.busy

    def nexus(self, entry_off: int) -> int:
        self._pending_entry(entry_off)
        return self._pending_nexus[entry_off][0]

    def kflags(self, entry_off: int) -> int:
        self._pending_entry(entry_off)
        return self._pending_nexus[entry_off][1]

    def _entry_verdict(self, handle: int, kflags: int) -> tuple[int, int]:
        """(verdict, why unknown): 0 known, 1 no usable handle, 2 handle not resolved (or
        the entry opens a new session of its nexus)."""
        if not self._nexus_mode:
            return self.verdict, 0
        if not 0 < handle < NEXUS_SLOTS:
            return 0, 1
        v = self._slots[handle]
        if not v & VERDICT_KNOWN or kflags & L.KFLAG_NEXUS_NEW_SESSION:
            return 0, 2
        return v, 0

    def drain(self, timeout: float) -> bool:
        return wait_batch_over(lambda: self.busy, self._seen, timeout)

    def process(self) -> list[int]:
        with self._busy_lock:
            self.busy += 1
            lease = self.lease_ms
        try:
            return self._process(lease != NO_LEASE and coarse_ms() >= lease)
        finally:
            with self._busy_lock:
                self.busy += 1

    def _process(self, expired: bool) -> list[int]:
        if self._closed:
            raise RingError(-errno.EBADF, "the ring is closed")
        if self._pending:
            raise RingError(ERR_PENDING, "process")
        mm, off, size = self._mm, self._off, self._size
        head = self._mailbox.head
        if head >= size or head % L.ALIGN:
            raise RingError(ERR_HEAD, "process")
        punts: dict[int, int] = {}
        handles: dict[int, tuple[int, int]] = {}
        err = 0
        while self._scan != head:
            scan = self._scan
            len_op = _U32.unpack_from(mm, off + scan)[0]
            length, op = len_op & ~L.OP_MASK, len_op & L.OP_MASK
            if not length or length > size - scan or length > (head + size - scan) % size:
                err = ERR_ENTRY
                break
            if op == L.OP_PAD:
                self._stats["pads"] += 1
            elif op == L.OP_TMR:
                self._stats["tmrs"] += 1
            elif op == L.OP_CMD and length >= L.ENTRY_SIZE:
                if len(punts) == MAX_PUNTS:
                    break
                self._stats["cmds"] += 1
                handle, kflags = self._handle(off + scan)
                disposition = self._serve(off + scan, length, expired, handle, kflags)
                if disposition:
                    punts[off + scan] = length
                    handles[off + scan] = (handle, kflags)
                    self._stats["punted"] += 1
                    self._scan = (scan + length) % size
                    if disposition == 2:
                        break
                    continue
            else:
                err = ERR_ENTRY
                break
            self._scan = (scan + length) % size
        if punts:
            self._pending = punts
            self._pending_nexus = handles
            return list(punts)
        self.commit()
        if err:
            raise RingError(err, "process")
        return []

    def commit(self) -> None:
        if self._pending:
            raise RingError(ERR_PENDING, "commit")
        if self._mailbox.tail != self._scan:
            self._mailbox.tail = self._scan
            os.write(self._kick_fd, b"\0\0\0\0")
            self._stats["kicks"] += 1

    def _handle(self, ent: int) -> tuple[int, int]:
        """The entry's nexus handle (0 without KFLAG_NEXUS) and kflags, each read once."""
        kflags = self._mm[ent + L.HDR_KFLAGS]
        if not kflags & L.KFLAG_NEXUS:
            return 0, kflags
        # as tcmu_ring_nexus reports it: 63 bits (the kernel's are u32)
        handle = _U64.unpack_from(self._mm, ent + L.REQ_NEXUS_HANDLE)[0] & 0x7FFF_FFFF_FFFF_FFFF
        return handle, kflags

    def _serve(self, ent: int, length: int, expired: bool, handle: int, kflags: int) -> int:
        """0: completed here; 1: punt; 2: punt and end the batch (verdict may change)."""
        try:
            cnt = self._iov_cnt(ent, length)
            cdb = self._read_cdb(_U64.unpack_from(self._mm, ent + L.REQ_CDB_OFF)[0])
        except CheckCondition as bad:
            self._fail(ent, bad.sense)
            return 0
        verdict, unknown = self._entry_verdict(handle, kflags)
        pr_change = cdb is not None and cdb[0] in PR_CHANGERS
        punt = 2 if pr_change or verdict & VERDICT_UA else (unknown or 1)
        if cdb is None or cdb[0] not in RW_OPCODES:
            return punt
        range_error = None
        try:
            rw = decode_rw(cdb, self._block_size, self._num_blocks, self._max_transfer)
        except CheckCondition as e:
            rw, range_error = None, e.sense
        else:
            if rw is None:  # the emulation refuses it, with its field pointer
                return punt
        if expired:  # the PR state is not vouched for: the handler re-validates first
            return 1
        if unknown:  # whose command this is, the handler finds out
            return unknown
        if verdict & VERDICT_UA:
            return 2
        write = cdb[0] & 0x0F == 0x0A
        if not verdict & (VERDICT_WRITE if write else VERDICT_READ):
            self._mm[ent + L.RSP_SCSI_STATUS] = scsi.RESERVATION_CONFLICT
            self._stats["conflicts"] += 1
            return 0
        if rw is None:
            assert range_error is not None
            self._fail(ent, range_error)
            return 0
        cbt = self._cbt if rw.write else None
        # as native/cbt.c: mark first; a freeze or a pending copy-on-write goes to Python
        if cbt is not None and cbt.lib.tcmu_cbt_write_begin(cbt.c, rw.offset, rw.length):
            return 1
        try:
            self._data_io(ent, cnt, rw.write, rw.offset, rw.length)
            if rw.fua or (rw.write and self._write_through):
                self._stats["flushes"] += 1
                os.fdatasync(self._fd)
        except CheckCondition as bad:
            self._fail(ent, bad.sense)
        except OSError:
            self._fail(ent, scsi.WRITE_ERROR if rw.write else scsi.READ_ERROR)
        else:
            self._mm[ent + L.RSP_SCSI_STATUS] = scsi.GOOD
        finally:
            if cbt is not None:
                cbt.lib.tcmu_cbt_leave(cbt.c)
        self._stats["fast"] += 1
        return 0

    # -- entry fields, all bounds-checked ------------------------------------------------

    def _iov_cnt(self, ent: int, length: int) -> int:
        cnt = _U32.unpack_from(self._mm, ent + L.REQ_IOV_CNT)[0]
        if cnt > (length - L.REQ_IOV) // L.IOVEC_SIZE:
            raise CheckCondition(INTERNAL_TARGET_FAILURE)
        return cnt

    def _iovecs(self, ent: int, cnt: int) -> list[tuple[int, int]]:
        out = []
        for i in range(cnt):
            base, ln = _IOVEC.unpack_from(self._mm, ent + L.REQ_IOV + i * L.IOVEC_SIZE)
            if base < self._data_off or base > self._map_size or ln > self._map_size - base:
                raise CheckCondition(INTERNAL_TARGET_FAILURE)
            out.append((base, ln))
        return out

    def _read_cdb(self, cdb_off: int) -> bytes | None:
        """The CDB, or None when it is longer than 16 bytes (never a fast-path command)."""
        size = self._map_size
        if cdb_off > size - 6:
            raise CheckCondition(scsi.INVALID_FIELD_IN_CDB)
        if self._mm[cdb_off] == L.VARIABLE_LENGTH_CDB and cdb_off > size - 8:
            raise CheckCondition(scsi.INVALID_FIELD_IN_CDB)
        n = L.cdb_length(self._mm[cdb_off : cdb_off + 8])
        if n > size - cdb_off:
            raise CheckCondition(scsi.INVALID_FIELD_IN_CDB)
        return bytes(self._mm[cdb_off : cdb_off + n]) if n <= 16 else None

    def _data_io(self, ent: int, cnt: int, write: bool, offset: int, length: int) -> None:
        views = []
        for base, ln in self._iovecs(ent, cnt):
            take = min(ln, length)
            if take:
                views.append(self._mv[base : base + take])
            length -= take
            if not length:
                break
        while views:
            n = os.pwritev(self._fd, views, offset) if write else os.preadv(self._fd, views, offset)
            if n <= 0:
                raise OSError(errno.EIO, "short transfer")
            offset += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if views and n:
                views[0] = views[0][n:]

    def _fail(self, ent: int, sense: scsi.Sense) -> None:
        self._write_rsp(ent, scsi.CHECK_CONDITION, sense.to_bytes())
        self._stats["bad"] += sense in (INTERNAL_TARGET_FAILURE, scsi.INVALID_FIELD_IN_CDB)

    def _write_rsp(self, ent: int, status: int, sense: bytes | None) -> None:
        if sense:
            # The response overlays the request: zero the rest so no iovec bytes leak out.
            sense = sense[: L.SENSE_BUFFERSIZE].ljust(L.SENSE_BUFFERSIZE, b"\0")
            self._mm[ent + L.RSP_SENSE : ent + L.RSP_SENSE + L.SENSE_BUFFERSIZE] = sense
        self._mm[ent + L.RSP_SCSI_STATUS] = status

    # -- punted commands ---------------------------------------------------------------

    def _pending_entry(self, entry_off: int) -> int:
        """The length the entry had when scanned (checked then)."""
        if entry_off not in self._pending:
            raise RingError(ERR_NOT_CMD)
        return self._pending[entry_off]

    def cdb(self, entry_off: int) -> bytes:
        self._pending_entry(entry_off)
        cdb_off = _U64.unpack_from(self._mm, entry_off + L.REQ_CDB_OFF)[0]
        try:
            first = self._read_cdb(cdb_off)
        except CheckCondition:
            raise RingError(-errno.EFAULT, "cdb") from None
        if first is not None:
            return first
        n = L.cdb_length(self._mm[cdb_off : cdb_off + 8])
        return bytes(self._mm[cdb_off : cdb_off + n])

    def _entry_iovecs(self, entry_off: int) -> list[tuple[int, int]]:
        length = self._pending_entry(entry_off)
        try:
            return self._iovecs(entry_off, self._iov_cnt(entry_off, length))
        except CheckCondition:
            raise RingError(ERR_IOV) from None

    def data_out(self, entry_off: int) -> bytes:
        iovs = self._entry_iovecs(entry_off)
        # Overlapping iovecs may add up to more than the data area: refuse, as the C loop does.
        if sum(n for _, n in iovs) > self._map_size - self._data_off:
            raise RingError(ERR_IOV)
        return b"".join(self._mm[b : b + n] for b, n in iovs)

    def complete(
        self, entry_off: int, status: int, sense: bytes | None, data: bytes | None
    ) -> int:
        self._pending_entry(entry_off)
        copied = 0
        if data is not None:  # data-in: scatter before the response overwrites the iovecs
            try:
                iovs = self._entry_iovecs(entry_off)
            except RingError:  # answered, but not with what the caller meant
                self._fail(entry_off, INTERNAL_TARGET_FAILURE)
                del self._pending[entry_off]
                self._pending_nexus.pop(entry_off, None)
                return 0
            room = sum(n for _, n in iovs)
            for base, n in iovs:
                take = min(n, len(data) - copied)
                self._mm[base : base + take] = data[copied : copied + take]
                copied += take
            if copied < room and self._flags & L.FLAG_CAP_READ_LEN:
                self._mm[entry_off + L.HDR_UFLAGS] |= L.UFLAG_READ_LEN
                _U32.pack_into(self._mm, entry_off + L.RSP_READ_LEN, copied)
        self._write_rsp(entry_off, status, sense)
        del self._pending[entry_off]
        self._pending_nexus.pop(entry_off, None)
        return copied

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def close(self) -> None:
        self._closed = True
        self._mailbox.release()
        self._mv.release()
