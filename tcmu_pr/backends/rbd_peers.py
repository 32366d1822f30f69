"""Change announcements with acknowledgements between the gateways of one RBD image.

Every gateway that serves the image watches one RADOS object, ``tcmu_pr.<image id>`` in the
image's pool, and lists its client address on it (xattr ``peer.<gid>``).  Whoever lands a PR
change notifies that object and waits, bounded by the ack timeout, for every watcher's ack;
a gateway acks only after it applied the new state (``on_change`` returned True).

Why a dedicated object rather than the header: every librbd client of the image (VMs, krbd,
our own data path) watches the header, and would be woken by our notifies and counted among the
watchers; here every watcher is a tcmu-pr gateway, so a silent watcher is a silent gateway.

A watcher that does not ack in time is cut off the way Ceph's gateways fence each other for an
image's exclusive lock: its client address (from the registry) is added to the OSD blocklist
through the monitor, and the change is answered only once this client has the OSD map that
says so.  The gateway's data path shares that client (rbd_store.py), so from then on no OSD
serves it anything: whatever it had admitted fails instead of landing.  This needs the mon cap
``profile rbd`` (which allows ``osd blocklist add``); without it the change answers CHECK
CONDITION (docs/consistency.md).

A gateway learns it was cut off from its watch's error callback (and every op failing with
EBLOCKLISTED); it reports the loss and its owner reconnects with a new client before serving.
Until then, and whenever a change is announced but not applied yet, :meth:`still_current` is
False, which is what keeps a gateway that was frozen past the timeout from answering on the
state it had.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import socket
import threading
import time

from tcmu_pr.backends.base import (
    ChangeHandler,
    Confirmation,
    LossHandler,
    StoreError,
    StoreOptions,
)
from tcmu_pr.backends.rados_cas import EBLOCKLISTED, Cluster, IoCtx

log = logging.getLogger(__name__)

CHANGE = b"tcmu-pr change"
#: Asks every watcher to ack at once, without applying anything: lists the live watchers.
PING = b"tcmu-pr ping"
ACK = b"tcmu-pr ack"
PEER_PREFIX = "peer."
#: How long a departed gateway stays blocklisted (it reconnects with a new address anyway).
BLOCKLIST_SECONDS = 3600
_PING_TIMEOUT_MS = 1000


def notify_oid(image_id: str) -> str:
    return f"tcmu_pr.{image_id}"


class RbdPeers:
    """This gateway's place among the gateways of one image (see the module docstring)."""

    def __init__(
        self, cluster: Cluster, ioctx: IoCtx, image_id: str, options: StoreOptions, name: str
    ) -> None:
        self.cluster = cluster
        self.ioctx = ioctx
        self.oid = notify_oid(image_id)
        self.options = options
        self.name = name
        self.gid = cluster.gid
        self._cookie: int | None = None
        self._on_change: ChangeHandler | None = None
        self._on_loss: LossHandler | None = None
        self._lock = threading.Lock()
        self._announced = 0  # change notifies received (from others)
        self._applied = 0  # ... of which applied
        self._lost: str | None = None
        self._work: queue.Queue[tuple[str, int, int]] = queue.Queue()
        self._acks: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self.handled = 0

    def __repr__(self) -> str:
        return f"RbdPeers({self.ioctx.pool}/{self.name}, client.{self.gid})"

    @property
    def timeout_ms(self) -> int:
        """The ack timeout as the OSD takes it: whole seconds (0 would mean its 30 s)."""
        return max(1, round(self.options.ack_timeout)) * 1000

    # -- taking part -------------------------------------------------------------------------

    def join(self, on_change: ChangeHandler, on_loss: LossHandler) -> None:
        """List our address, watch the object, then drop registry entries nobody watches."""
        self._on_change, self._on_loss = on_change, on_loss
        self.ioctx.create(self.oid)
        entry = f"{self.cluster.addrs} {socket.gethostname()} pid {os.getpid()}"
        self.ioctx.setxattr(self.oid, f"{PEER_PREFIX}{self.gid}", entry.encode())
        for target, label in ((self._run, "apply"), (self._run_acks, "ack")):
            t = threading.Thread(target=target, name=f"rbd-peers {label} {self.oid}", daemon=True)
            t.start()
            self._threads.append(t)
        self._cookie = self.ioctx.watch(self.oid, self._on_notify, self._on_error)
        self._prune()

    def _prune(self) -> None:
        """Remove the registry entries of clients that no longer watch (crashed gateways)."""
        try:
            result = self.ioctx.notify(self.oid, PING, timeout_ms=_PING_TIMEOUT_MS)
            live = {gid for gid, _, _ in result.acks} | {gid for gid, _ in result.timeouts}
            for key in self.ioctx.xattrs(self.oid):
                gid = key.removeprefix(PEER_PREFIX)
                if key.startswith(PEER_PREFIX) and gid.isdigit() and int(gid) not in live:
                    self.ioctx.rmxattr(self.oid, key)
        except StoreError as err:  # only housekeeping: the registry may stay a little larger
            log.warning("%r: cannot prune the participant registry: %s", self, err)

    # -- librados callbacks: no I/O here, only hand-off ---------------------------------------

    def _on_notify(self, notify_id: int, cookie: int, notifier: int, payload: bytes) -> None:
        if payload == CHANGE and notifier != self.gid:
            with self._lock:
                self._announced += 1
            self._work.put(("change", notify_id, cookie))
        else:  # a ping, or our own change (applied before it was announced): ack at once
            self._acks.put((notify_id, cookie))

    def _on_error(self, cookie: int, err: int) -> None:
        self._work.put(("error", cookie, err))

    # -- the two threads: acks must never wait behind an application ----------------------------

    def _run_acks(self) -> None:
        while (item := self._acks.get()) is not None:
            self._ack(*item)

    def _run(self) -> None:
        while True:
            kind, a, b = self._work.get()
            if kind == "stop":
                return
            if kind == "error":
                self._watch_lost(a, b)
                continue
            batch = [(a, b)]  # every change queued meanwhile is answered by one application
            while not self._work.empty():
                item = self._work.get_nowait()
                if item[0] != "change":
                    self._work.put(item)  # errors and stop after this batch
                    break
                batch.append(item[1:])
            self._apply(batch)

    def _apply(self, batch: list[tuple[int, int]]) -> None:
        with self._lock:
            target = self._announced
        assert self._on_change is not None
        try:
            applied = self._on_change()
        except Exception:
            log.exception("%r: applying a change failed; not acknowledging", self)
            applied = False
        if not applied:
            return  # the changer cuts this gateway off: nothing stale survives
        with self._lock:
            self._applied = max(self._applied, target)
        self.handled += len(batch)  # before the acks: a changer may look once it has them
        for notify_id, cookie in batch:
            self._ack(notify_id, cookie)

    def _ack(self, notify_id: int, cookie: int) -> None:
        try:
            self.ioctx.notify_ack(self.oid, notify_id, cookie, ACK)
        except StoreError as err:
            log.warning("%r: ack failed: %s", self, err)

    def _watch_lost(self, cookie: int, err: int) -> None:
        if self._closing or cookie != self._cookie:
            return
        reason = os.strerror(-err) if err < 0 else str(err)
        with self._lock:
            self._lost = f"watch lost ({reason})"
        log.warning("%r: watch lost (%s): not current until re-established", self, reason)
        try:
            self.ioctx.unwatch(cookie)
        except StoreError as e:
            log.debug("unwatch of a broken watch: %s", e)
        self._cookie = None
        delay = 0.2
        while not self._closing:
            try:
                self._cookie = self.ioctx.watch(self.oid, self._on_notify, self._on_error)
                break
            except StoreError as e:
                if e.errno == EBLOCKLISTED:
                    self._report_loss("this gateway was blocklisted (cut off by another)")
                    return
                log.warning("%r: re-watch failed, retrying: %s", self, e)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if self._closing:
            return
        # Announcements may have been missed while the watch was down: re-read first.
        with self._lock:
            target = self._announced
        assert self._on_change is not None
        if self._on_change():
            with self._lock:
                self._applied, self._lost = max(self._applied, target), None
            log.info("%r: watch re-established", self)

    def _report_loss(self, why: str) -> None:
        with self._lock:
            self._lost = why
        log.error("%r: %s", self, why)
        if self._on_loss is not None:
            self._on_loss(why)

    # -- what the owner asks -----------------------------------------------------------------

    def still_current(self, lease: float) -> bool:
        """No announcement pending, the watch up, and confirmed within ``lease`` seconds."""
        with self._lock:
            if self._lost is not None or self._applied != self._announced:
                return False
        cookie = self._cookie
        if cookie is None:
            return False
        try:
            return self.ioctx.watch_check(cookie) < lease * 1000
        except StoreError:
            return False

    def confirm_change(self) -> Confirmation:
        """Notify every watcher; blocklist the silent ones (see the module docstring)."""
        try:
            result = self.ioctx.notify(self.oid, CHANGE, timeout_ms=self.timeout_ms)
        except StoreError as err:
            if err.errno == errno.ENOENT:  # no gateway ever joined: nobody to tell
                return Confirmation()
            log.error("%r: cannot announce a PR change: %s", self, err)
            return Confirmation(failed=(f"notify ({err})",))
        others_acked = [gid for gid, _, _ in result.acks if gid != self.gid]
        silent = sorted({gid for gid, _ in result.timeouts})
        told = len(others_acked) + len([g for g in silent if g != self.gid])
        if result.rc < 0 and not result.timeouts:
            return Confirmation(told, len(others_acked), failed=(os.strerror(-result.rc),))
        fenced, failed = [], []
        for gid in silent:
            (fenced if self._cut_off(gid) else failed).append(f"client.{gid}")
        return Confirmation(told, len(others_acked), tuple(fenced), tuple(failed))

    def _cut_off(self, gid: int) -> bool:
        if gid == self.gid:
            log.error("%r: our own watch did not acknowledge: cannot vouch for this gateway",
                      self)  # fmt: skip
            return False
        if not self.options.fence:
            log.error("%r: client.%d did not acknowledge within %d s (fencing off)",
                      self, gid, self.timeout_ms // 1000)  # fmt: skip
            return False
        try:
            entry = self.ioctx.getxattr(self.oid, f"{PEER_PREFIX}{gid}", cap=4096)
        except StoreError as err:
            log.error("%r: cannot look up client.%d's address: %s", self, gid, err)
            return False
        if not entry:
            log.error("%r: client.%d watches %s but never listed its address: cannot cut it off",
                      self, gid, self.oid)  # fmt: skip
            return False
        addrs = entry.decode(errors="replace").split()[0]
        log.error("%r: client.%d (%s) did not acknowledge a PR change within %d s: "
                  "blocklisting it", self, gid, entry.decode(errors="replace"),
                  self.timeout_ms // 1000)  # fmt: skip
        try:
            self.cluster.blocklist(addrs, BLOCKLIST_SECONDS)
        except StoreError as err:
            hint = " (the mon cap 'profile rbd' allows it)" if err.errno == errno.EACCES else ""
            log.error("%r: cannot blocklist client.%d: %s%s", self, gid, err, hint)
            return False
        try:
            self.ioctx.rmxattr(self.oid, f"{PEER_PREFIX}{gid}")
        except StoreError as err:
            log.debug("registry entry of client.%d stays: %s", gid, err)
        return True

    def close(self) -> None:
        self._closing = True
        cookie, self._cookie = self._cookie, None
        if cookie is not None:
            try:
                self.ioctx.unwatch(cookie)
            except StoreError as err:
                log.debug("unwatch on close: %s", err)
            try:
                self.ioctx.rmxattr(self.oid, f"{PEER_PREFIX}{self.gid}")
            except StoreError as err:
                log.debug("registry entry stays: %s", err)
        self._work.put(("stop", 0, 0))
        self._acks.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)
        self._threads = []
