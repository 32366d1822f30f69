"""The PR slot of an RBD image: the ``pr_info`` xattr of its header object.

Where the blob lives: xattr ``pr_info`` of ``rbd_header.<image id>``, exactly where SUSE's
target_core_rbd keeps it, so a v1 gateway and this one interlock: both guard their writes with
``cmpxattr(pr_info == bytes read)`` in the same RADOS op as the ``setxattr``.  RADOS acks the op
after it commits, so a True compare-and-swap is durable.  Telling the other gateways about a
change is not the slot's job: see rbd_peers.py.
"""

from __future__ import annotations

import errno

from tcmu_pr.backends.base import StoreError
from tcmu_pr.backends.rados_cas import IoCtx

PR_XATTR = "pr_info"
#: Largest blob read or written: a v2 blob with MAX_REGISTRATIONS long nexuses stays below.
MAX_BLOB = 2 * 1024 * 1024


def header_oid(image_id: str) -> str:
    return f"rbd_header.{image_id}"


class RbdPRSlot:
    """The ``pr_info`` xattr on one image's header object (a :class:`PRSlot`)."""

    def __init__(self, ioctx: IoCtx, image_id: str, *, name: str = "") -> None:
        self.ioctx = ioctx
        self.oid = header_oid(image_id)
        self.name = name or self.oid

    def __repr__(self) -> str:
        return f"RbdPRSlot({self.ioctx.pool}/{self.name})"

    def read(self) -> bytes:
        """The stored blob; ``b""`` when the header object has no ``pr_info`` yet."""
        return self.ioctx.getxattr(self.oid, PR_XATTR, cap=MAX_BLOB) or b""

    def compare_and_swap(self, expected: bytes, new: bytes) -> bool:
        """Guarded setxattr in one RADOS op; False when another writer won."""
        if len(new) > MAX_BLOB:
            raise StoreError(errno.EFBIG, f"pr_info of {len(new)} bytes exceeds {MAX_BLOB}")
        return self.ioctx.compare_and_set_xattr(self.oid, PR_XATTR, expected, new)
