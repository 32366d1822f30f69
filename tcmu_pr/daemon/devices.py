"""The daemon's DeviceManager: one TCMU device = data backend + ring loop + PR hooks + thread.

On ADDED_DEVICE the netlink service calls :meth:`DeviceManager.open_device`; we place the
device (topology.py), open its data file, map its ring (rings.py), join it to its LU
(lu.py), and start one thread that waits on the ring and serves it.  One thread per ring:
the kernel answers each ring in order anyway, a slow command on one LU never stalls
another, and the native loop releases the GIL while it moves data.

PR wiring of a device (docs/daemon.md has the why):

- PR IN/OUT, RESERVE/RELEASE: ``apply(slot, nexus, ...)`` on the LU's slot, then the LU
  re-reads its state and republishes the verdict of every local device before the command's
  status is returned, so a PREEMPT's GOOD is never seen before the preempted device's
  fast path refuses writes.  After a PREEMPT AND ABORT that landed, we also wait for the
  batch each other local device of the LU is running to finish (bounded): commands of the
  preempted nexus that were already inside the native loop complete normally, everything
  after that sees the unit attention, then RESERVATION CONFLICT.
- Unit attentions: the verdict's UA bit makes the loop punt; the handler takes the UA out of
  the shared state with ``apply_update`` and answers CHECK CONDITION / UNIT ATTENTION.
- A device with no known nexus answers PR commands with CHECK CONDITION (HARDWARE ERROR,
  LOGICAL UNIT COMMUNICATION FAILURE) and runs data commands as an unregistered
  non-holder would.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tcmu_pr import engine, scsi
from tcmu_pr.apply import ApplyError, apply, apply_update
from tcmu_pr.backends.base import PRSlot, StoreError
from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.daemon import topology
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.lu import LogicalUnit
from tcmu_pr.daemon.rings import RingEndpoint, RingSource, UioRingSource, make_ring
from tcmu_pr.emulation import DeviceConfigError, Emulator
from tcmu_pr.emulation import DeviceInfo as EmuDevice
from tcmu_pr.netlink.devconfig import DevConfig, DeviceInfo
from tcmu_pr.netlink.service import DeviceError, Reconfig
from tcmu_pr.nexus import Nexus
from tcmu_pr.ring.handler import PRHooks, Reply, RingHandler
from tcmu_pr.ring.loop import RingError, RingLoop
from tcmu_pr.state import PRState, UnitAttention

if TYPE_CHECKING:  # librbd is loaded only for LUs that live on RBD
    from tcmu_pr.backends.rbd_data import RbdImage
    from tcmu_pr.ring.rbd_backend import RbdRingBackend

log = logging.getLogger(__name__)

PREEMPT_AND_ABORT = 0x05
#: Longest a PREEMPT AND ABORT waits for another device's running batch (two of them
#: waiting on each other's devices at once would otherwise deadlock).
BARRIER_TIMEOUT = 2.0
_NO_NEXUS = scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE

SlotOpener = Callable[[str], PRSlot]


def _default_open_slot(spec: str) -> PRSlot:
    from tcmu_pr.backends import open_slot

    return open_slot(spec)


@dataclass(frozen=True, slots=True)
class Params:
    """Everything a device's ring and emulator are built from; RECONFIG replaces it."""

    config: DevConfig
    placement: topology.Placement
    size: int  # bytes exported (a whole number of blocks)
    write_cache: bool


class _GuardedRing:
    """The device's RingLoop as the handler sees it.

    Two jobs: (1) the verdict word has one writer, the LU, under its lock: the handler's own
    ``ring.verdict = ...`` only asks the LU to republish, so a value computed before a state
    change can never land after it; (2) a lock spans each batch (process() up to commit()),
    which is what a PREEMPT AND ABORT on another device waits for.
    """

    def __init__(self, ring: RingLoop, republish: Callable[[], None]) -> None:
        self.ring = ring
        self._republish = republish
        self.batch = threading.Lock()
        self._held = False
        # The C serve loop (NativeRing.run), when the ring has one: RingHandler.run uses it.
        if hasattr(ring, "run"):
            self.run = self._run

    def _run(self, wait_fd: int, event_size: int, timeout_ms: int) -> list[int]:
        """The ring's own serve loop; punted entries start a batch, as process() does.
        While C serves, the batch lock is free: wait_idle() covers that part."""
        entries = self.ring.run(wait_fd, event_size, timeout_ms)  # type: ignore[attr-defined]
        if entries:
            self.batch.acquire()
            self._held = True
        return entries

    def wait_idle(self, timeout: float) -> bool:
        """Wait for commands the C serve loop is answering right now (none: True)."""
        wait = getattr(self.ring, "wait_idle", None)
        return True if wait is None else wait(timeout)

    @property
    def verdict(self) -> int:
        return self.ring.verdict

    @verdict.setter
    def verdict(self, _value: int) -> None:
        self._republish()

    def process(self) -> list[int]:
        self.batch.acquire()
        self._held = True
        try:
            entries = self.ring.process()
        except BaseException:
            self.release()
            raise
        if not entries:
            self.release()
        return entries

    def commit(self) -> None:
        try:
            self.ring.commit()
        finally:
            self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self.batch.release()

    def cdb(self, entry_off: int) -> bytes:
        return self.ring.cdb(entry_off)

    def data_out(self, entry_off: int) -> bytes:
        return self.ring.data_out(entry_off)

    def complete(self, entry_off: int, status: int, sense: bytes | None, data: bytes | None) -> int:
        return self.ring.complete(entry_off, status, sense, data)

    def stats(self) -> dict[str, int]:
        return self.ring.stats()

    def close(self) -> None:
        self.ring.close()


class Device:
    """One served TCMU device; its ring thread runs between start() and stop()."""

    def __init__(
        self,
        info: DeviceInfo,
        params: Params,
        lu: LogicalUnit,
        endpoint: RingEndpoint,
        data: FileDataBackend,
        cfg: DaemonConfig,
    ) -> None:
        self.info = info
        self.device_id = info.device_id
        self.params = params
        self.lu = lu
        self.endpoint = endpoint
        self.data = data
        self.cfg = cfg
        self.failed: BaseException | None = None
        self._verdict = 0
        self._ring_fd = -1
        self._guard: _GuardedRing | None = None
        self._handler: RingHandler | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._warned_no_nexus = False

    # -- identity ----------------------------------------------------------------------

    @property
    def nexus(self) -> Nexus | None:
        return self.params.placement.nexus

    @property
    def rtpi(self) -> int | None:
        return self.params.placement.rtpi

    @property
    def name(self) -> str:
        return f"{self.device_id} ({topology.device_key(self.info.hba, self.info.name)})"

    # -- build / run -----------------------------------------------------------------------

    def build(self) -> None:
        """Ring loop, emulator and handler from ``params`` (the thread is not started)."""
        p = self.params
        emu = EmuDevice.from_size(
            p.placement.identity,
            p.size,
            block_size=self.cfg.block_size,
            write_cache=p.write_cache,
            rtpi=p.placement.rtpi,
        )
        fd = -1
        if isinstance(self.data, FileDataBackend):
            # Write-through promised (WCE=0): the fast path's writes must be durable at GOOD.
            flags = os.O_RDWR | os.O_CLOEXEC | (0 if p.write_cache else os.O_DSYNC)
            fd = os.open(_data_path(p.config), flags)
            ring_backend: int | RbdRingBackend = fd
        else:  # librbd acknowledges a write once the OSDs have it
            from tcmu_pr.ring.rbd_backend import RbdRingBackend

            ring_backend = RbdRingBackend(self.data)
        try:
            ring = make_ring(
                self.cfg.ring,
                self.endpoint.mm,
                self.endpoint.kick_fd,
                ring_backend,
                emu.num_lbas * emu.block_size,
                emu.block_size,
            )
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._ring_fd = fd
        self._guard = _GuardedRing(ring, lambda: self.lu.republish(self))
        hooks = PRHooks(
            execute=self._pr_execute,
            allowed=lambda cdb: self.lu.allowed(self.nexus, cdb),
            take_unit_attention=self._take_unit_attention,
            verdict=lambda: self._verdict,
        )
        self._handler = RingHandler(
            self._guard,
            self.endpoint.wait_fd,
            emulate=Emulator(emu, self.data).emulate,
            pr=hooks,
            event_size=self.endpoint.event_size,
        )

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"ring {self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current batch (every punted command is answered)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def teardown(self) -> None:
        """Close the ring loop and its data fd (after stop())."""
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        self._handler = None
        if self._ring_fd >= 0:
            os.close(self._ring_fd)
            self._ring_fd = -1

    def _run(self) -> None:
        handler, guard = self._handler, self._guard
        assert handler is not None and guard is not None
        try:
            handler.run(self._stop.is_set, self.cfg.ring_poll_ms / 1000)
        except RingError as err:
            self.failed = err
            log.error("device %s: ring unusable, no longer served: %s", self.name, err)
        except OSError as err:
            # EIO: the kernel unregistered the uio device under us (backstore gone without a
            # REMOVED_DEVICE for us, e.g. another daemon answered it): nothing left to serve.
            self.failed = err
            log.error("device %s: its uio device failed, no longer served: %s", self.name, err)
        except Exception as err:  # a bug: stop this device, keep the daemon
            self.failed = err
            log.exception("device %s: ring thread failed", self.name)
        finally:
            guard.release()

    # -- the LU's side -------------------------------------------------------------------

    def publish_verdict(self, word: int) -> None:
        """Called by the LU, under its lock: the only writer of the ring's verdict word."""
        self._verdict = word
        if self._guard is not None:
            self._guard.ring.verdict = word

    def wait_batch(self, timeout: float) -> bool:
        """Wait until the batch this device's thread runs (if any) is over."""
        guard = self._guard
        if guard is None:
            return True
        if not guard.batch.acquire(timeout=timeout):
            return False
        guard.batch.release()
        return guard.wait_idle(timeout)

    # -- PR hooks (called on this device's ring thread) ----------------------------------

    def _refuse_no_nexus(self, cdb: bytes) -> Reply:
        if not self._warned_no_nexus:
            self._warned_no_nexus = True
            log.warning(
                "device %s: refusing PR command 0x%02x (and any later one): no I_T nexus "
                "is configured for it (dev_config nexus= or the topology file)",
                self.name,
                cdb[0],
            )
        return scsi.CHECK_CONDITION, _NO_NEXUS.to_bytes(), None

    def _pr_execute(self, cdb: bytes, data: bytes) -> Reply:
        nexus = self.nexus
        if nexus is None:
            return self._refuse_no_nexus(cdb)
        outcome = apply(self.lu.slot, nexus, cdb, data, rtpi=self.rtpi)
        self.lu.refresh()
        if (
            outcome.status == scsi.GOOD
            and cdb[0] == scsi.PERSISTENT_RESERVE_OUT
            and len(cdb) > 1
            and cdb[1] & 0x1F == PREEMPT_AND_ABORT
        ):
            self._abort_barrier()
        return outcome.status, outcome.sense, outcome.data

    def _abort_barrier(self) -> None:
        for other in self.lu.others(self.device_id):
            if not other.wait_batch(BARRIER_TIMEOUT):
                log.warning(
                    "PREEMPT AND ABORT on %s: device %s still busy after %.1f s",
                    self.name,
                    other.device_id,
                    BARRIER_TIMEOUT,
                )

    def _take_unit_attention(self) -> bytes | None:
        nexus = self.nexus
        if nexus is None:
            return None
        taken: list[UnitAttention | None] = [None]

        def take(state: PRState) -> PRState:
            new, taken[0] = engine.take_unit_attention(state, nexus)
            return new

        try:
            apply_update(self.lu.slot, take)
        except (ApplyError, StoreError) as err:
            # The UA stays queued; this command fails rather than run without it.
            log.error("device %s: cannot deliver a unit attention: %s", self.name, err)
            self.lu.refresh()
            return _NO_NEXUS.to_bytes()
        self.lu.refresh()
        ua = taken[0]
        if ua is None:
            return None
        log.info("device %s: unit attention %02x/%02x delivered", self.name, ua.asc, ua.ascq)
        return scsi.Sense(scsi.UNIT_ATTENTION, ua.asc, ua.ascq).to_bytes()


def _data_path(config: DevConfig) -> str:
    return config.store.partition(":")[2]


def _open_data(config: DevConfig) -> FileDataBackend | RbdImage:
    """The LU's data, by store type: a file, or an RBD image through librbd."""
    scheme, _, where = config.store.partition(":")
    if scheme == "file":
        return FileDataBackend(where)
    from tcmu_pr.backends.rbd_data import RbdImage

    pool, _, image = where.partition("/")
    return RbdImage(pool, image)


class DeviceManager:
    """Implements the netlink service's DeviceManager protocol for the daemon."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        ring_source: RingSource | None = None,
        open_slot: SlotOpener = _default_open_slot,
    ) -> None:
        self.cfg = cfg
        self.ring_source = ring_source or UioRingSource()
        self.open_slot = open_slot
        self.devices: dict[int, Device] = {}
        self.lus: dict[str, LogicalUnit] = {}
        self._lock = threading.Lock()

    # -- DeviceManager protocol ------------------------------------------------------------

    def open_device(self, info: DeviceInfo, slot: PRSlot) -> None:
        """Serve ``info``'s ring; ``slot`` is the service's (for GET/SET_PR_INFO), not ours."""
        placement = self._place(info, info.config)
        data = _open_data(info.config)
        cleanup: list[Callable[[], Any]] = [data.close]
        try:
            size = data.size - data.size % self.cfg.block_size
            params = Params(info.config, placement, size, write_cache=True)
            endpoint = self.ring_source.open(info)
            cleanup.append(endpoint.close)
            lu, created = self._lu_for(info.config.pr_store)
            if created:
                cleanup.append(lambda: self._drop_lu(lu))
            device = Device(info, params, lu, endpoint, data, self.cfg)
            try:
                device.build()
            except DeviceConfigError as err:
                raise DeviceError(errno.EINVAL, str(err)) from err
            cleanup.append(device.teardown)
            lu.add(device)
            cleanup.append(lambda: lu.remove(device.device_id))
            device.start()
        except BaseException:
            for undo in reversed(cleanup):
                with contextlib.suppress(Exception):
                    undo()
            raise
        with self._lock:
            self.devices[info.device_id] = device
        if placement.nexus is None:
            log.warning(
                "device %s serves no known I_T nexus: PR commands will be refused", device.name
            )
        log.info(
            "device %s: LU %s, nexus %s (from %s), rtpi %s, %d bytes, PR store %s",
            device.name,
            placement.lu,
            placement.nexus,
            placement.source,
            placement.rtpi,
            size,
            info.config.pr_store,
        )

    def close_device(self, device_id: int) -> None:
        with self._lock:
            device = self.devices.pop(device_id, None)
        if device is None:
            return
        device.stop()
        if device.lu.remove(device_id):
            self._drop_lu(device.lu)
        device.teardown()
        device.endpoint.close()
        device.data.close()
        log.info("device %s closed", device.name)

    def reconfig_device(self, device_id: int, changes: Reconfig) -> None:
        device = self.devices.get(device_id)
        if device is None:
            raise DeviceError(errno.ENODEV, f"device {device_id} is not served")
        old = device.params
        new = old
        if changes.config is not None:
            cfg = changes.config
            if cfg.store != old.config.store or cfg.pr_store != old.config.pr_store:
                raise DeviceError(
                    errno.EOPNOTSUPP,
                    "changing a device's store or PR store needs a remove and re-add",
                )
            new = replace(new, config=cfg, placement=self._place(device.info, cfg))
        if changes.size is not None:
            size = changes.size
            if size > device.data.size or size < self.cfg.block_size or size % self.cfg.block_size:
                raise DeviceError(
                    errno.EINVAL,
                    f"size {size} must be whole {self.cfg.block_size}-byte blocks, at most the "
                    f"backing file's {device.data.size} bytes (grow the file first)",
                )
            new = replace(new, size=size)
        if changes.writecache is not None:
            new = replace(new, write_cache=changes.writecache)
        try:  # validate before touching the running device
            EmuDevice.from_size(new.placement.identity, new.size, block_size=self.cfg.block_size)
        except DeviceConfigError as err:
            raise DeviceError(errno.EINVAL, str(err)) from err
        device.stop()
        device.teardown()
        device.params = new
        try:
            device.build()
        except BaseException:
            device.params = old
            device.build()
            raise
        finally:
            device.lu.republish(device)
            device.start()
        log.info("device %s reconfigured: %s", device.name, changes)

    # -- helpers --------------------------------------------------------------------------

    def _place(self, info: DeviceInfo, config: DevConfig) -> topology.Placement:
        key = topology.device_key(info.hba, info.name)
        try:
            entries = topology.load(self.cfg.topology)
            return topology.place(
                key, config.store, config.pr_store, config.nexus, config.rtpi, entries
            )
        except topology.TopologyError as err:
            raise DeviceError(errno.EINVAL, str(err)) from err

    def _lu_for(self, spec: str) -> tuple[LogicalUnit, bool]:
        with self._lock:
            lu = self.lus.get(spec)
        if lu is not None:
            return lu, False
        lu = LogicalUnit(spec, self.open_slot(spec))
        with self._lock:
            self.lus[spec] = lu
        return lu, True

    def _drop_lu(self, lu: LogicalUnit) -> None:
        with self._lock:
            if self.lus.get(lu.spec) is lu:
                del self.lus[lu.spec]
        lu.close()

    def poll_stores(self) -> None:
        """One pass of the store watcher: re-read every file-backed LU whose sidecar moved."""
        with self._lock:
            lus = list(self.lus.values())
        for lu in lus:
            if not lu.is_rbd and lu.changed():
                lu.refresh()

    def close(self) -> None:
        """Stop every device still served (the netlink service normally did already)."""
        for device_id in list(self.devices):
            self.close_device(device_id)
