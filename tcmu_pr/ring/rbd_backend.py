"""An RBD image as the native ring loop's backend: READ/WRITE go from the ring's iovecs
straight to librbd (rbd_aio_readv/writev in native/rbd_io.c), with no copy and no Python.

The ops table ``rbd_ring_ops`` is compiled into ``tcmu_pr._rbd_io`` (which links librbd),
not into the ring module: the ring module gets the table's address through
:class:`~tcmu_pr.ring.native.NativeOps` and stays free of Ceph libraries. While a ring uses
the image, the image is pinned and refuses to close (no call into a freed handle).

Usage, the one entry point a device needs::

    image = RbdImage(pool, name)
    ring = NativeRing(mm, kick_fd, RbdRingBackend(image), size, block_size)
    ...
    ring.close()   # detaches: the image may be closed now
    image.close()
"""

from __future__ import annotations

from tcmu_pr.backends.rbd_data import RbdImage, native_module
from tcmu_pr.ring.native import NativeOps


class RbdRingBackend:
    """Adapter from an open :class:`RbdImage` to the C loop's backend ops."""

    def __init__(self, image: RbdImage) -> None:
        self.image = image
        self._attached = False

    def attach(self) -> NativeOps:
        if self._attached:
            raise RuntimeError(f"rbd image {self.image.name} is already attached to a ring")
        mod = native_module()
        ffi = mod.ffi
        ops = int(ffi.cast("uintptr_t", mod.lib.rbd_io_ring_ops()))
        context = self.image.pin()
        self._attached = True
        return NativeOps(ops, context, ffi.sizeof("struct ring_backend_ops"))

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            self.image.unpin()
