"""The C ring loop (native/ring.c, built by cffi as ``tcmu_pr._ring_native``) as a RingLoop.

The loop reaches the data through a ``struct ring_backend_ops`` table: its own file table
for a file descriptor, or a table another native module defines (the RBD one lives in
``tcmu_pr._rbd_io``, see :mod:`tcmu_pr.ring.rbd_backend`). Such a table crosses from one
cffi module to the other as an address (:class:`NativeOps`), so this module never links
librbd and file-only hosts need no Ceph libraries.
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from tcmu_pr.ring.abi import MAX_PUNTS
from tcmu_pr.ring.loop import RingError, wait_batch_over

if TYPE_CHECKING:
    from tcmu_pr.cbt.mapfile import CbtMap


@dataclass(frozen=True, slots=True)
class NativeOps:
    """A backend as the C loop sees it: addresses valid until :meth:`NativeBackend.detach`."""

    ops: int  # address of a const struct ring_backend_ops
    context: int  # the void *backend its functions get
    ops_size: int  # sizeof(struct ring_backend_ops) where the table was compiled


class NativeBackend(Protocol):
    """Data behind a NativeRing other than a plain file descriptor."""

    def attach(self) -> NativeOps:
        """The table and context; both must stay valid until :meth:`detach`."""
        ...

    def detach(self) -> None: ...


_STATS = (
    "cmds", "fast", "punted", "conflicts", "bad", "tmrs", "pads", "kicks", "submitted", "flushes"
)  # fmt: skip


def load(module: ModuleType | None = None) -> ModuleType:
    """The compiled module (``scripts/setup`` builds it); tests may pass another build."""
    if module is not None:
        return module
    try:
        from tcmu_pr import _ring_native  # type: ignore[attr-defined]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("tcmu_pr._ring_native is not built: run scripts/setup") from exc
    return _ring_native


class NativeRing:
    """A device ring served by the C loop.

    ``mm`` is the whole mapping (mailbox, command ring, data area); ``kick_fd`` is what the
    kernel is told about completions through (the uio fd itself, or the simulator's pipe).
    ``backend`` holds the data: a file descriptor, or a :class:`NativeBackend` such as
    ``RbdRingBackend(image)``, which the ring attaches now and detaches in :meth:`close`.
    ``deferred`` serves a file descriptor through the loop's submit/reap path, the one RBD
    takes, so that path is tested and measured without Ceph.

    What the loop must honour of the device's SCSI face: ``max_transfer`` is the Block
    Limits MAXIMUM TRANSFER LENGTH in blocks (0: none), longer READ/WRITEs are punted so the
    emulation refuses them; ``write_through`` flushes after writes before GOOD, for a
    Caching mode page WCE=0 on a backend whose completed writes may still sit in a cache
    (librbd's); a file opened O_DSYNC needs none.
    """

    def __init__(
        self,
        mm: mmap.mmap,
        kick_fd: int,
        backend: int | NativeBackend,
        dev_size: int,
        block_size: int,
        *,
        module: ModuleType | None = None,
        deferred: bool = False,
        max_transfer: int = 0,
        write_through: bool = False,
        cbt: CbtMap | None = None,
    ) -> None:
        mod = load(module)
        self._ffi: Any = mod.ffi
        self._lib: Any = mod.lib
        self._buf: Any = None
        self._native: NativeBackend | None = None
        self._seen = 0  # ctx->busy when the verdict was last published
        self._cbt: CbtMap | None = None  # kept alive while the loop may mark it
        if isinstance(backend, int):
            self._backend = self._ffi.new("struct ring_file_backend *")
            self._backend.fd = backend
            # deferred: the loop's submit/reap path on a plain file (tests, benchmarks)
            lib = self._lib
            ops = lib.tcmu_ring_file_deferred_ops() if deferred else lib.tcmu_ring_file_ops()
        else:
            ops, self._backend = self._attach(backend)
        self._buf = self._ffi.from_buffer(mm)
        self._ctx = self._ffi.new("struct ring_ctx *")
        self._punts = self._ffi.new("uint32_t[]", MAX_PUNTS)
        self._cdb = self._ffi.new("uint8_t[]", 272)
        rc = self._lib.tcmu_ring_init(
            self._ctx, self._buf, len(mm), kick_fd, ops, self._backend, dev_size, block_size
        )
        if not rc:
            rc = self._lib.tcmu_ring_configure(self._ctx, max_transfer, write_through)
        if not rc and cbt is not None:
            rc = self.track(cbt)
        if rc:
            self.close()
            raise RingError(rc, "init")

    def track(self, cbt: CbtMap | None) -> int:
        """Mark writes in ``cbt`` from now on (None: stop); 0 or -EINVAL."""
        if cbt is None:
            self._cbt = None
            return int(self._lib.tcmu_ring_cbt(self._ctx, self._ffi.NULL))
        # the map's own cffi module attached it; this one may be another build of the same
        # sources (sanitizers): hand the struct over by address
        address = int(cbt.ffi.cast("uintptr_t", cbt.c))
        rc = int(self._lib.tcmu_ring_cbt(self._ctx, self._ffi.cast("struct cbt_map *", address)))
        self._cbt = cbt if rc == 0 else None
        return rc

    def _attach(self, backend: NativeBackend) -> tuple[Any, Any]:
        """Cast another module's table and context into this module's types, after checking
        that both modules agree on the table's layout (they include the same ring.h)."""
        native = backend.attach()
        self._native = backend
        if native.ops_size != self._ffi.sizeof("struct ring_backend_ops") or not native.ops:
            self.close()
            raise ValueError("backend ops table built against another ring.h: rebuild native/")
        ops = self._ffi.cast("const struct ring_backend_ops *", native.ops)
        return ops, self._ffi.cast("void *", native.context)

    @property
    def verdict(self) -> int:
        return int(self._ctx.verdict)

    @verdict.setter
    def verdict(self, value: int) -> None:
        self.publish(value, int(self._ctx.lease_ms))

    def publish(self, verdict: int, lease_ms: int = 0) -> None:
        """New verdict and lease deadline (0: none); remembers whether a batch that may have
        read the old ones was running, for :meth:`drain`."""
        self._seen = int(self._lib.tcmu_ring_publish(self._ctx, verdict, lease_ms))

    def nexus_mode(self, on: bool) -> None:
        self._lib.tcmu_ring_nexus_mode(self._ctx, 1 if on else 0)

    def publish_nexus(self, handle: int, verdict: int, lease_ms: int = 0) -> None:
        if not 0 <= handle < 1 << 64:
            return
        self._seen = int(self._lib.tcmu_ring_publish_nexus(self._ctx, handle, verdict, lease_ms))

    def nexus(self, entry_off: int) -> int:
        n = self._lib.tcmu_ring_nexus(self._ctx, entry_off)
        if n < 0:
            raise RingError(n, "nexus")
        return int(n)

    def kflags(self, entry_off: int) -> int:
        n = self._lib.tcmu_ring_kflags(self._ctx, entry_off)
        if n < 0:
            raise RingError(n, "kflags")
        return int(n)

    def _closed(self) -> RingError:
        return RingError(-errno.EBADF, "the ring is closed")

    def process(self) -> list[int]:
        if self._buf is None:  # the mapping and the backend may be gone
            raise self._closed()
        n = self._lib.tcmu_ring_process(self._ctx, self._punts, MAX_PUNTS)
        if n < 0:
            raise RingError(n, "process")
        return list(self._punts[0:n]) if n else []

    def process_count(self) -> int:
        """process() without building a list: the benchmark's call (punts must not occur)."""
        if self._buf is None:
            raise self._closed()
        return self._lib.tcmu_ring_process(self._ctx, self._punts, MAX_PUNTS)

    def run(self, wait_fd: int, event_size: int, timeout_ms: int) -> list[int]:
        """Serve in C until punted commands are pending (returned, as from :meth:`process`)
        or ``timeout_ms`` has passed ([] then, busy or not): waiting on ``wait_fd``, reading
        its ``event_size``-byte events (uio 4, eventfd 8) and kicking all happen in C, with
        the GIL released.  RingError for a corrupt ring, OSError when the fd fails (EIO:
        the uio device is gone)."""
        if self._buf is None:
            raise self._closed()
        n = self._lib.tcmu_ring_run(
            self._ctx, wait_fd, event_size, timeout_ms, self._punts, MAX_PUNTS
        )
        if n <= -1000:
            raise RingError(n, "run")
        if n < 0:
            raise OSError(-n, f"ring wait: {os.strerror(-n)}")
        return list(self._punts[0:n]) if n else []

    @property
    def busy(self) -> int:
        """Odd while C serves a batch (:meth:`process`, :meth:`run`)."""
        return int(self._ctx.busy)

    def drain(self, timeout: float) -> bool:
        """Wait until the batch that was running at the last :meth:`publish` (if any) is
        over: every command it admitted on the old verdict is answered."""
        return wait_batch_over(lambda: self.busy, self._seen, timeout)

    def cdb(self, entry_off: int) -> bytes:
        n = self._lib.tcmu_ring_cdb(self._ctx, entry_off, self._cdb, len(self._cdb))
        if n < 0:
            raise RingError(n, "cdb")
        return bytes(self._ffi.buffer(self._cdb, n))

    def data_out(self, entry_off: int) -> bytes:
        size = self._lib.tcmu_ring_data_len(self._ctx, entry_off)
        if size < 0:
            raise RingError(size, "data_out")
        buf = bytearray(size)
        n = self._lib.tcmu_ring_gather(self._ctx, entry_off, self._ffi.from_buffer(buf), size)
        if n < 0:
            raise RingError(n, "data_out")
        return bytes(buf[:n])

    def complete(
        self, entry_off: int, status: int, sense: bytes | None, data: bytes | None
    ) -> int:
        ffi = self._ffi
        n = self._lib.tcmu_ring_complete(
            self._ctx, entry_off, status, sense if sense else ffi.NULL, len(sense or b""),
            ffi.NULL if data is None else ffi.from_buffer(data), len(data or b""),
        )  # fmt: skip
        if n < 0:
            raise RingError(n, "complete")
        return n

    def commit(self) -> None:
        rc = self._lib.tcmu_ring_commit(self._ctx)
        if rc:
            raise RingError(rc, "commit")

    def stats(self) -> dict[str, int]:
        st = self._ctx.stats
        return {name: int(getattr(st, name)) for name in _STATS}

    def close(self) -> None:
        """Drop the pointer into the mapping so the mmap can be closed; detach the backend
        (after this the ring calls nothing of it, so its owner may close it)."""
        if self._cbt is not None and self._buf is not None:
            self._lib.tcmu_ring_cbt(self._ctx, self._ffi.NULL)
        self._cbt = None
        if self._buf is not None:
            self._ffi.release(self._buf)
            self._buf = None
        if self._native is not None:
            self._native.detach()
            self._native = None
