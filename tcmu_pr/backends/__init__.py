"""Backing stores: where a LU's data and its ``pr_info`` slot live.

``open_slot("file:PATH")`` / ``open_slot("rbd:POOL/IMAGE")`` is the only place that knows
which implementation a store spec names.
"""

from __future__ import annotations

from tcmu_pr.backends.base import PRSlot, StoreError

SCHEMES = ("file", "rbd")


class StoreSpecError(ValueError):
    """A store spec that names no store: unknown scheme or malformed location."""


def parse_spec(spec: str) -> tuple[str, str]:
    """Split ``"scheme:location"``; rejects what :func:`open_slot` could never open."""
    scheme, sep, location = spec.partition(":")
    if not sep or scheme not in SCHEMES:
        raise StoreSpecError(f"store {spec!r}: expected file:PATH or rbd:POOL/IMAGE")
    if not location:
        raise StoreSpecError(f"store {spec!r}: empty location")
    if scheme == "rbd":
        pool, slash, image = location.partition("/")
        if not slash or not pool or not image:
            raise StoreSpecError(f"store {spec!r}: expected rbd:POOL/IMAGE")
    return scheme, location


def open_slot(spec: str) -> PRSlot:
    """Open the PR slot a store spec names.

    Raises StoreSpecError for a malformed spec and StoreError when the store cannot be opened
    (missing image, the RBD support not installed, cluster unreachable).
    """
    scheme, location = parse_spec(spec)
    if scheme == "file":
        from tcmu_pr.backends.file import FileSlot

        return FileSlot(location)
    # Imported lazily: librados is optional and slow to load, file-only hosts never need it.
    try:
        from tcmu_pr.backends.rbd import open_rbd_slot
    except (ImportError, OSError) as err:
        raise StoreError(f"store {spec!r}: RBD support is unavailable ({err})") from err
    return open_rbd_slot(location)
