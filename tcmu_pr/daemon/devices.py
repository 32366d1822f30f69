"""The daemon's DeviceManager: one TCMU device = ring loop + emulator + PR hooks + thread.

On ADDED_DEVICE the netlink service calls :meth:`DeviceManager.open_device`; we place the
device (topology.py), take its stores, map its ring (rings.py), join it to its LU
(tcmu_pr/unit/lu.py), and start one thread that waits on the ring and serves it.  One thread per
ring: the kernel answers each ring in order anyway, a slow command on one LU never stalls
another, and the native loop releases the GIL while it moves data.

Ownership, so that each store has one connection per daemon:

- **stores**: one :class:`~tcmu_pr.backends.base.Store` per store spec, shared (counted) by
  every device whose data lives there and by the LU whose PR state lives there;
- **LUs**: one :class:`~tcmu_pr.unit.lu.LogicalUnit` per PR store spec, shared by its devices and
  by the netlink GET/SET_PR_INFO service;
- **devices**: borrow the data backend and the LU; own their ring, emulator and thread.

PR wiring of a device (docs/daemon.md, docs/consistency.md):

- PR IN/OUT, RESERVE/RELEASE: ``lu.execute(nexus, ...)``; a change answers GOOD only once
  every local device and every other gateway enforce it (the LU's rule).
- Unit attentions: the verdict's UA bit makes the loop punt; the handler takes the UA out of
  the shared state (``lu.take_unit_attention``) and answers CHECK CONDITION / UNIT ATTENTION.
- A device with no known nexus answers PR commands with CHECK CONDITION (HARDWARE ERROR,
  LOGICAL UNIT COMMUNICATION FAILURE) and runs data commands as an unregistered
  non-holder would.
- When another gateway cut this one off (RBD: blocklisted), the LU's devices refuse every
  command (NOT READY) while the manager reconnects: their rings stop, the store is reopened
  with a new client, the state re-read, and the rings rebuilt on the new connection.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend, Store, StoreError, StoreOptions
from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.daemon import topology
from tcmu_pr.daemon.attrib import BackstoreAttribs, PRMode, choose
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.rings import RingEndpoint, RingSource, UioRingSource, make_ring
from tcmu_pr.emulation import DeviceConfigError, Emulator
from tcmu_pr.emulation import DeviceInfo as EmuDevice
from tcmu_pr.emulation.provisioning import unmap_granularity
from tcmu_pr.netlink.devconfig import DevConfig, DeviceInfo
from tcmu_pr.netlink.nexus import NexusInfo, NexusLookupError
from tcmu_pr.netlink.service import DeviceError, Reconfig
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.ring.handler import Emulate, NexusRoute, PRHooks, Reply, RingHandler
from tcmu_pr.ring.layout import KFLAG_NEXUS_NEW_SESSION
from tcmu_pr.ring.loop import RingError, RingLoop
from tcmu_pr.unit.apply import ApplyError
from tcmu_pr.unit.lu import LogicalUnit, PRInfoRefused

log = logging.getLogger(__name__)

_NO_NEXUS = scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE
#: Seconds between attempts to reconnect a LU that was cut off.
RECONNECT_DELAY = 1.0

StoreOpener = Callable[[StoreSpec, StoreOptions], Store]
#: GET_NEXUS: (device id, handle) -> what the handle names (NexusLookupError otherwise).
NexusResolver = Callable[[int, int], NexusInfo]
#: Seconds before a handle whose lookup failed is asked about again.
NEXUS_RETRY = 10.0


def _default_open_store(spec: StoreSpec, options: StoreOptions) -> Store:
    from tcmu_pr.backends import open_store

    return open_store(spec, options)


@dataclass(frozen=True, slots=True)
class Params:
    """Everything a device's ring and emulator are built from; RECONFIG replaces it."""

    config: DevConfig
    placement: topology.Placement
    size: int  # bytes exported (a whole number of blocks)
    write_cache: bool
    pr_mode: PRMode = PRMode.TOPOLOGY


class _LURing:
    """The device's ring as the handler sees it: the verdict word has one writer, the LU.

    The handler's own ``ring.verdict = ...`` only asks the LU to republish, so a value
    computed before a state change can never land after it.  Everything else passes through.
    """

    def __init__(self, ring: RingLoop, republish: Callable[[], None]) -> None:
        self.ring = ring
        self._republish = republish

    @property
    def verdict(self) -> int:
        return self.ring.verdict

    @verdict.setter
    def verdict(self, _value: int) -> None:
        self._republish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ring, name)


class NexusSlot:
    """One I_T nexus of a device in nexus mode: a LU member of its own, whose verdict goes
    to the handle's slot in the ring (tcmu_ring_publish_nexus) under the LU's lock."""

    def __init__(self, device: Device, info: NexusInfo, emulate: Emulate) -> None:
        self.device = device
        self.info = info
        self.handle = info.handle
        self.device_id = (device.device_id, info.handle)
        self.nexus: Nexus | None = info.nexus
        self._verdict = 0
        lu = device.lu
        self.route = NexusRoute(
            pr=PRHooks(
                execute=self._execute,
                allowed=lambda cdb: lu.allowed(self.nexus, cdb),
                take_unit_attention=lambda: device.take_unit_attention(self.nexus),
                verdict=lambda: self._verdict,
                current=lambda: lu.current(),
                admit=lambda: lu.inflight.admit(),
            ),
            emulate=emulate,
            republish=lambda: device.lu.republish(self),
        )

    def _execute(self, cdb: bytes, data: bytes) -> Reply:
        assert self.nexus is not None
        outcome = self.device.lu.execute(self.nexus, cdb, data, rtpi=self.info.rtpi)
        return outcome.status, outcome.sense, outcome.data

    def publish_verdict(self, word: int, lease_deadline_ms: int) -> None:
        self._verdict = word
        self.device.publish_nexus(self.handle, word, lease_deadline_ms)

    def drain(self, timeout: float) -> bool:
        return self.device.drain(timeout)


class Device:
    """One served TCMU device; its ring thread runs between start() and stop()."""

    def __init__(
        self,
        info: DeviceInfo,
        params: Params,
        lu: LogicalUnit,
        endpoint: RingEndpoint,
        data: DataBackend,
        cfg: DaemonConfig,
        resolve: NexusResolver | None = None,
    ) -> None:
        """``resolve``: GET_NEXUS, needed in nexus mode only."""
        self.info = info
        self.resolve = resolve
        #: nexus mode: handle -> its slot (a handle's meaning never changes while the
        #: device exists), and handles whose lookup failed -> when to ask again
        self.slots: dict[int, NexusSlot] = {}
        self._unresolved: dict[int, float] = {}
        self._emu: EmuDevice | None = None
        self._anon_route: NexusRoute | None = None
        self.device_id = info.device_id
        self.params = params
        self.lu = lu
        self.endpoint = endpoint
        self.data = data
        self.cfg = cfg
        self.failed: BaseException | None = None
        self._verdict = 0
        self._lease = 0
        self._ring_fd = -1
        self._ring: RingLoop | None = None
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
    def nexus_mode(self) -> bool:
        return self.params.pr_mode is PRMode.NEXUS

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
            unmap_granularity=unmap_granularity(self.data, self.cfg.block_size),
            # PR IN/OUT go to the LU's engine, which needs this device's nexus
            persistent_reservations=p.placement.nexus is not None,
        )
        fd = -1
        # Write-through promised (WCE=0): the fast path's writes must be durable at GOOD.
        write_through = False
        cbt = None
        if isinstance(self.data, FileDataBackend):
            cbt = self.data.cbt  # the image's change-block map: the loop marks writes too
            # O_DSYNC: each write returns once it is on stable storage, no flush needed
            flags = os.O_RDWR | os.O_CLOEXEC | (0 if p.write_cache else os.O_DSYNC)
            fd = os.open(p.config.store.path, flags)
            ring_backend: Any = fd
        else:
            from tcmu_pr.ring.rbd_backend import RbdRingBackend

            ring_backend = RbdRingBackend(self.data)  # type: ignore[arg-type]
            # librbd's cache (on by default, write-back once it saw a flush) completes writes
            # before the OSDs have them: the loop flushes each batch's writes before GOOD
            write_through = not p.write_cache
        try:
            ring = make_ring(
                self.cfg.ring,
                self.endpoint.mm,
                self.endpoint.kick_fd,
                ring_backend,
                emu.num_lbas * emu.block_size,
                emu.block_size,
                max_transfer=emu.max_transfer_lbas,
                write_through=write_through,
                cbt=cbt,
            )
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._ring_fd = fd
        self._ring = ring
        self._emu = emu
        if self.nexus_mode:
            ring.nexus_mode(True)
        ring.publish(self._verdict, self._lease)
        hooks = PRHooks(
            execute=self._pr_execute,
            allowed=lambda cdb: self.lu.allowed(self.nexus, cdb),
            take_unit_attention=self._take_unit_attention,
            verdict=lambda: self._verdict,
            current=lambda: self.lu.current(),
            admit=lambda: self.lu.inflight.admit(),
        )
        emulate = Emulator(emu, self.data).emulate
        self._anon_route = NexusRoute(hooks, emulate, lambda: self.lu.republish(self))
        # rebuilt (reconfig, reconnect): known nexuses keep their handles, new emulators
        for slot in self.slots.values():
            slot.route = replace(slot.route, emulate=self._emulator_for(slot.info.rtpi))
        self._handler = RingHandler(
            _LURing(ring, lambda: self.lu.republish(self)),  # type: ignore[arg-type]
            self.endpoint.wait_fd,
            emulate=emulate,
            pr=hooks,
            event_size=self.endpoint.event_size,
            route=self._route if self.nexus_mode else None,
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
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._handler = None
        if self._ring_fd >= 0:
            os.close(self._ring_fd)
            self._ring_fd = -1

    def _run(self) -> None:
        handler = self._handler
        assert handler is not None
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

    # -- the LU's side (tcmu_pr.unit.lu.Member) ------------------------------------------------

    def publish_verdict(self, word: int, lease_deadline_ms: int) -> None:
        """Called by the LU, under its lock: the only writer of the ring's verdict word."""
        self._verdict, self._lease = word, lease_deadline_ms
        if self._ring is not None:
            self._ring.publish(word, lease_deadline_ms)

    def publish_nexus(self, handle: int, word: int, lease_deadline_ms: int) -> None:
        """A slot's verdict (called by the LU, under its lock, through the slot)."""
        self._lease = lease_deadline_ms
        if self._ring is not None:
            self._ring.publish_nexus(handle, word, lease_deadline_ms)

    def drain(self, timeout: float) -> bool:
        ring = self._ring
        return True if ring is None else ring.drain(timeout)

    # -- nexus mode: the handle in each entry names the nexus --------------------------------

    def _emulator_for(self, rtpi: int | None) -> Emulate:
        """The emulator as seen through one target port (VPD 0x83's relative port)."""
        assert self._emu is not None
        return Emulator(replace(self._emu, rtpi=rtpi), self.data).emulate

    def _route(self, handle: int, kflags: int = 0) -> NexusRoute:
        """On the ring thread: the hooks of the entry's nexus; a handle seen for the first
        time is resolved (GET_NEXUS) and its slot joins the LU, which publishes its verdict,
        so the handle's later commands take the fast path.  The first command of a new
        session of the nexus (kflags) first applies the I_T nexus loss."""
        route = self._slot_route(handle)
        slot = self.slots.get(handle)
        if slot is not None and kflags & KFLAG_NEXUS_NEW_SESSION:
            log.info("device %s: new session of nexus %s", self.name, slot.nexus)
            try:
                if self.lu.nexus_lost(slot.info.nexus):
                    log.warning("device %s: I_T nexus loss of %s released its SCSI-2 "
                                "reservation (unit attention 29/07 queued)", self.name,
                                slot.nexus)  # fmt: skip
            except (ApplyError, StoreError) as err:
                log.error("device %s: I_T nexus loss of %s not applied: %s", self.name,
                          slot.nexus, err)  # fmt: skip
            self.lu.republish(slot)  # the ring punts the flagged entry: publish again
        return route

    def _slot_route(self, handle: int) -> NexusRoute:
        slot = self.slots.get(handle)
        if slot is not None:
            return slot.route
        assert self._anon_route is not None
        if handle == 0 or time.monotonic() < self._unresolved.get(handle, 0.0):
            return self._anon_route
        try:
            if self.resolve is None:
                raise NexusLookupError(errno.ENOTCONN, "no GET_NEXUS channel to the kernel")
            info = self.resolve(self.device_id, handle)
        except NexusLookupError as err:
            self._unresolved[handle] = time.monotonic() + NEXUS_RETRY
            log.error("device %s: nexus handle %d not resolved (%s): its PR commands are "
                      "refused, its data commands run as an unregistered initiator's",
                      self.name, handle, err)  # fmt: skip
            return self._anon_route
        slot = NexusSlot(self, info, self._emulator_for(info.rtpi))
        self.slots[handle] = slot
        self._unresolved.pop(handle, None)
        self.lu.add(slot)
        log.info("device %s: handle %d is nexus %s (rtpi %s, protocol %d)", self.name, handle,
                 info.nexus, info.rtpi, info.proto)  # fmt: skip
        return slot.route

    def republish(self) -> None:
        """The device's verdict and every known nexus slot's, after the ring was rebuilt."""
        self.lu.republish(self)
        for slot in self.slots.values():
            self.lu.republish(slot)

    def leave_lu(self) -> None:
        """Remove the device and its nexus slots from the LU."""
        for slot in self.slots.values():
            self.lu.remove(slot.device_id)
        self.lu.remove(self.device_id)

    # -- PR hooks (called on this device's ring thread) ----------------------------------

    def _refuse_no_nexus(self, cdb: bytes) -> Reply:
        if not self._warned_no_nexus:
            self._warned_no_nexus = True
            why = ("its ring entry named no resolvable nexus handle" if self.nexus_mode else
                   "no I_T nexus is configured for it (dev_config nexus= or the topology file)")
            log.warning("device %s: refusing PR command 0x%02x (and any later one like it): %s",
                        self.name, cdb[0], why)  # fmt: skip
        return scsi.CHECK_CONDITION, _NO_NEXUS.to_bytes(), None

    def _pr_execute(self, cdb: bytes, data: bytes) -> Reply:
        nexus = self.nexus
        if nexus is None:
            return self._refuse_no_nexus(cdb)
        outcome = self.lu.execute(nexus, cdb, data, rtpi=self.rtpi)
        return outcome.status, outcome.sense, outcome.data

    def _take_unit_attention(self) -> bytes | None:
        return self.take_unit_attention(self.nexus)

    def take_unit_attention(self, nexus: Nexus | None) -> bytes | None:
        if nexus is None:
            return None
        try:
            ua = self.lu.take_unit_attention(nexus)
        except (ApplyError, StoreError) as err:
            # The UA stays queued; this command fails rather than run without it.
            log.error("device %s: cannot deliver a unit attention: %s", self.name, err)
            return _NO_NEXUS.to_bytes()
        if ua is None:
            return None
        log.info("device %s: unit attention %02x/%02x delivered", self.name, ua.asc, ua.ascq)
        return scsi.Sense(scsi.UNIT_ATTENTION, ua.asc, ua.ascq).to_bytes()


@dataclass(slots=True)
class _Held:
    store: Store
    users: int = 0


class DeviceManager:
    """Implements the netlink service's DeviceManager protocol for the daemon."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        ring_source: RingSource | None = None,
        open_store: StoreOpener = _default_open_store,
        attribs: BackstoreAttribs | None = None,
        resolve: NexusResolver | None = None,
    ) -> None:
        """``attribs``: the backstores' configfs attributes (default: the kernel's, when
        the rings are the kernel's; none with a test ring source: PR mode from the topology
        only). ``resolve``: GET_NEXUS (default: a netlink socket, opened when first needed)."""
        self.cfg = cfg
        self.ring_source = ring_source or UioRingSource()
        self.open_store = open_store
        self.attribs = attribs if attribs is not None or ring_source else BackstoreAttribs()
        self._resolve = resolve
        self._nexus_client: Any = None
        self._nexus_lock = threading.Lock()
        self.devices: dict[int, Device] = {}
        self.lus: dict[StoreSpec, LogicalUnit] = {}
        self.stores: dict[StoreSpec, _Held] = {}
        # Structure (devices, LUs, stores) changes under this lock: netlink's thread and a
        # reconnecting LU's thread both change it.
        self._lock = threading.RLock()
        self._closing = False

    # -- stores and LUs -------------------------------------------------------------------

    def _acquire(self, spec: StoreSpec) -> Store:
        held = self.stores.get(spec)
        if held is None:
            try:
                store = self.open_store(spec, self.cfg.store_options)
            except StoreError as err:
                raise DeviceError(err.errno or errno.EIO, f"store {spec}: {err}") from err
            held = self.stores[spec] = _Held(store)
        held.users += 1
        return held.store

    def _release(self, spec: StoreSpec) -> None:
        held = self.stores.get(spec)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del self.stores[spec]
            held.store.close()

    def _lu_for(self, spec: StoreSpec) -> LogicalUnit:
        lu = self.lus.get(spec)
        if lu is None:
            store = self._acquire(spec)
            try:
                lu = LogicalUnit(store, on_loss=self._on_loss)
            except BaseException:
                self._release(spec)
                raise
            self.lus[spec] = lu
        return lu

    def _drop_lu_if_unused(self, lu: LogicalUnit) -> None:
        if not lu.members and self.lus.get(lu.spec) is lu:
            del self.lus[lu.spec]
            lu.close()
            self._release(lu.spec)

    # -- DeviceManager protocol ------------------------------------------------------------

    def open_device(self, info: DeviceInfo) -> None:
        """Serve ``info``'s ring."""
        with self._lock:
            self._open_device(info)

    def _pr_mode(self, info: DeviceInfo, placement: topology.Placement) -> PRMode:
        has_nexus = placement.nexus is not None
        if self.attribs is None:
            return PRMode.TOPOLOGY if has_nexus else PRMode.NONE
        return choose(self.attribs, info.hba, info.name, has_nexus=has_nexus)

    def _resolver(self, device_id: int, handle: int) -> NexusInfo:
        """GET_NEXUS through the injected resolver or our own request socket."""
        if self._resolve is not None:
            return self._resolve(device_id, handle)
        with self._nexus_lock:
            if self._nexus_client is None:
                from tcmu_pr.netlink.nexus import NexusClient

                try:
                    self._nexus_client = NexusClient.connect()
                except (OSError, RuntimeError) as err:
                    raise NexusLookupError(errno.ENOTCONN, f"no GET_NEXUS socket: {err}") from err
            client = self._nexus_client
        return client.resolve(device_id, handle)  # type: ignore[no-any-return]

    def _open_device(self, info: DeviceInfo) -> None:
        config = info.config
        placement = self._place(info, config)
        cleanup: list[Callable[[], Any]] = []
        try:
            data = self._acquire(config.store).data()
            cleanup.append(lambda: self._release(config.store))
            size = data.size - data.size % self.cfg.block_size
            mode = self._pr_mode(info, placement)
            params = Params(config, placement, size, write_cache=True, pr_mode=mode)
            lu = self._lu_for(config.pr_store)
            endpoint = self.ring_source.open(info)
            cleanup.append(endpoint.close)
            device = Device(info, params, lu, endpoint, data, self.cfg, resolve=self._resolver)
            cleanup.append(lambda: self._drop_lu_if_unused(lu))
            try:
                device.build()
            except DeviceConfigError as err:
                raise DeviceError(errno.EINVAL, str(err)) from err
            cleanup.append(device.teardown)
            lu.add(device)
            cleanup.append(device.leave_lu)
            device.start()
        except BaseException:
            for undo in reversed(cleanup):
                with contextlib.suppress(Exception):
                    undo()
            raise
        self.devices[info.device_id] = device
        if mode is PRMode.NONE:
            log.warning(
                "device %s serves no known I_T nexus: PR commands will be refused", device.name
            )
        if config.store != config.pr_store and config.store.kind == "rbd":
            log.warning("device %s: PR state on %s, data on %s: a gateway cut off from the PR "
                        "state is not cut off from the data", device.name, config.pr_store,
                        config.store)  # fmt: skip
        log.info(
            "device %s: LU %s, nexus %s (from %s), rtpi %s, %d bytes, PR store %s",
            device.name,
            placement.lu,
            "per ring entry" if mode is PRMode.NEXUS else placement.nexus,
            "the kernel's nexus handles" if mode is PRMode.NEXUS else placement.source,
            placement.rtpi,
            size,
            config.pr_store,
        )

    def close_device(self, device_id: int) -> None:
        with self._lock:
            device = self.devices.pop(device_id, None)
            if device is None:
                return
            device.stop()
            device.leave_lu()
            device.teardown()
            device.endpoint.close()
            self._drop_lu_if_unused(device.lu)
            self._release(device.params.config.store)
        log.info("device %s closed", device.name)

    def reconfig_device(self, device_id: int, changes: Reconfig) -> None:
        with self._lock:
            self._reconfig_device(device_id, changes)

    def _reconfig_device(self, device_id: int, changes: Reconfig) -> None:
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
            device.republish()
            device.start()
        log.info("device %s reconfigured: %s", device.name, changes)

    def get_pr_info(self, device_id: int) -> bytes:
        device = self._device(device_id)
        try:
            return device.lu.get_pr_info()
        except PRInfoRefused as err:
            raise DeviceError(err.errno, str(err)) from err

    def set_pr_info(self, device_id: int, blob: bytes) -> None:
        device = self._device(device_id)
        try:
            device.lu.set_pr_info(blob)
        except PRInfoRefused as err:
            raise DeviceError(err.errno, str(err)) from err

    def _device(self, device_id: int) -> Device:
        device = self.devices.get(device_id)
        if device is None:
            raise DeviceError(errno.ENODEV, f"device {device_id} is not served")
        return device

    # -- a LU that was cut off --------------------------------------------------------------

    def _on_loss(self, lu: LogicalUnit, why: str) -> None:
        """Called on a store thread: reconnect on a thread of our own."""
        threading.Thread(target=self._reconnect, args=(lu,), name=f"reconnect {lu.spec}",
                         daemon=True).start()  # fmt: skip

    def _reconnect(self, lu: LogicalUnit) -> None:
        """Stop the LU's rings, reopen its store with a new client, rebuild the rings."""
        spec = lu.spec
        while True:
            with self._lock:
                if self._closing or self.lus.get(spec) is not lu:
                    return
                try:
                    self._reopen(lu)
                    return
                except Exception as err:
                    log.error("LU %s: reconnecting failed, retrying in %.0f s: %s", spec,
                              RECONNECT_DELAY, err)  # fmt: skip
            time.sleep(RECONNECT_DELAY)

    def _reopen(self, lu: LogicalUnit) -> None:
        spec = lu.spec
        held = self.stores[spec]
        users = [d for d in self.devices.values() if d.params.config.store == spec]
        members = [d for d in self.devices.values() if d.lu is lu]
        affected = list({id(d): d for d in users + members}.values())
        for device in affected:  # idempotent: a failed attempt left them stopped already
            device.stop()
            device.teardown()
        new = self.open_store(spec, self.cfg.store_options)
        try:
            lu.rebind(new)
        except BaseException:
            new.close()
            raise
        old, held.store = held.store, new
        with contextlib.suppress(Exception):
            old.close()
        for device in affected:
            if device in users:
                device.data = new.data()
            try:
                device.build()
            except Exception as err:  # the others still come back
                device.failed = err
                log.error("device %s: not rebuilt after reconnecting: %s", device.name, err)
                continue
            device.republish()
            device.start()
        log.info("LU %s: reconnected (%d device(s) rebuilt)", spec, len(affected))

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

    def close(self) -> None:
        """Stop every device still served (the netlink service normally did already)."""
        self._closing = True
        for device_id in list(self.devices):
            self.close_device(device_id)
        if self._nexus_client is not None:
            self._nexus_client.close()
            self._nexus_client = None
