"""Backing stores: where a LU's data, its ``pr_info`` slot and its change watch live.

:func:`open_store` is the only place that knows which implementation a
:class:`~tcmu_pr.backends.store_spec.StoreSpec` names; everything above works on the
:class:`~tcmu_pr.backends.base.Store` interface.
"""

from __future__ import annotations

import errno

from tcmu_pr.backends.base import Store, StoreError, StoreOptions
from tcmu_pr.backends.store_spec import StoreSpec


def open_store(spec: StoreSpec, options: StoreOptions | None = None) -> Store:
    """Connect to the store ``spec`` names (nothing is joined, no slot or data opened yet).

    Raises StoreError when it cannot be reached: a missing image, RBD support not installed,
    the cluster unreachable.
    """
    if spec.is_file:
        from tcmu_pr.backends.file_store import FileStore

        if not _is_data_file(spec.path):
            raise StoreError(
                errno.ENOENT, f"image {spec.path} does not exist or is not a file or block device"
            )
        return FileStore(spec, options)
    # Imported lazily: librados is optional and slow to load, file-only hosts never need it.
    try:
        from tcmu_pr.backends.rbd_store import RbdStore
    except (ImportError, OSError) as err:
        raise StoreError(errno.ENOENT, f"store {spec}: RBD support is unavailable ({err})") from err
    return RbdStore(spec, options)


def _is_data_file(path: str) -> bool:
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISBLK(mode)
