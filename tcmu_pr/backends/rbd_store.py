"""An RBD-backed LU as a :class:`~tcmu_pr.backends.base.Store`: one RADOS client per store
per process, shared by the PR slot (rbd.py), the data path (rbd_data.py, native/rbd_io.c) and
the change watch (rbd_peers.py).

Why one client: blocklisting is per client address, so when another gateway cuts this one off,
the blocklist must cover the data path as well as the PR state; and a daemon serving a LU
through several devices should not hold one RADOS session per device.

Lease: a gateway may be frozen (SIGSTOP, a VM pause) past the ack timeout and then resume
holding the state it had.  Its verdicts are therefore only good for half the ack timeout
without proof that it missed nothing (:meth:`still_current`: the watch was confirmed within
the lease and no announcement waits); past that its devices punt every command to the slow
path, which re-reads before answering (tcmu_pr/unit/lu.py).  librados confirms a watch at
each objecter tick, so the tick is set to a third of the lease.
"""

from __future__ import annotations

import logging

from tcmu_pr.backends.base import ChangeHandler, Confirmation, LossHandler, StoreOptions
from tcmu_pr.backends.rados_cas import Cluster
from tcmu_pr.backends.rbd import RbdPRSlot
from tcmu_pr.backends.rbd_data import RbdImage
from tcmu_pr.backends.rbd_peers import RbdPeers
from tcmu_pr.backends.store_spec import StoreSpec

log = logging.getLogger(__name__)

RBD_FEATURE_EXCLUSIVE_LOCK = 1 << 2


class RbdStore:
    """One process's connection to one RBD image (a Store)."""

    def __init__(self, spec: StoreSpec, options: StoreOptions | None = None) -> None:
        if spec.kind != "rbd":
            raise ValueError(f"{spec} is not an rbd store")
        self.spec = spec
        self.options = options or StoreOptions()
        self._lease = self.options.ack_timeout / 2
        self.cluster = Cluster(self.options.ceph_conf, self.options.ceph_id,
                               tick=self._lease / 3)  # fmt: skip
        try:
            self.ioctx = self.cluster.open_ioctx(spec.pool)
            self.image_id, features = self.ioctx.rbd_image_id(spec.image)
        except BaseException:
            self.cluster.shutdown()
            raise
        if features & RBD_FEATURE_EXCLUSIVE_LOCK:
            log.warning(
                "%s has the exclusive-lock feature: with several gateways writing it, librbd "
                "hands the lock from one to the other on every write and may blocklist a slow "
                "one. Gateways serving a LU active/active want it off: rbd feature disable "
                "%s/%s fast-diff object-map exclusive-lock", spec, spec.pool, spec.image)
        self._slot: RbdPRSlot | None = None
        self._data: RbdImage | None = None
        self.peers = RbdPeers(self.cluster, self.ioctx, self.image_id, self.options, spec.image)

    def __repr__(self) -> str:
        return f"RbdStore({self.spec}, client.{self.cluster.client_id})"

    @property
    def lease(self) -> float:
        return self._lease

    def slot(self) -> RbdPRSlot:
        if self._slot is None:
            self._slot = RbdPRSlot(self.ioctx, self.image_id, name=self.spec.image)
        return self._slot

    def data(self) -> RbdImage:
        if self._data is None:
            self._data = RbdImage(self.spec.pool, self.spec.image, ioctx=self.ioctx.handle)
        return self._data

    def join(self, on_change: ChangeHandler, on_loss: LossHandler) -> None:
        self.peers.join(on_change, on_loss)

    def confirm_change(self) -> Confirmation:
        return self.peers.confirm_change()

    def still_current(self) -> bool:
        return self.peers.still_current(self._lease)

    def close(self) -> None:
        """Leave and disconnect; the data must no longer be pinned by a ring."""
        self.peers.close()
        if self._data is not None:
            self._data.close()
            self._data = None
        self._slot = None
        self.ioctx.close()
        self.cluster.shutdown()
