"""A file-backed LU as a :class:`~tcmu_pr.backends.base.Store`: the image, its PR sidecar
(file.py) and the participants' sockets beside it (file_peers.py).

Participants of one file store share a host (the sidecar's flock and the sockets are local),
so a participant that stops answering can be cut off for certain: it is killed.  That is why
a file store needs no lease: a participant is either answering, or dead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tcmu_pr.backends.base import (
    ChangeHandler,
    Confirmation,
    LossHandler,
    StoreError,
    StoreOptions,
)
from tcmu_pr.backends.file import FileSlot
from tcmu_pr.backends.file_data import FileDataBackend
from tcmu_pr.backends.file_peers import FilePeers
from tcmu_pr.backends.store_spec import StoreSpec

if TYPE_CHECKING:
    from tcmu_pr.cbt.mapfile import CbtMap


class FileStore:
    """One process's connection to an image file (a Store)."""

    lease = None

    def __init__(self, spec: StoreSpec, options: StoreOptions | None = None) -> None:
        if not spec.is_file:
            raise StoreError(22, f"{spec} is not a file store")
        self.spec = spec
        self.options = options or StoreOptions()
        self._slot: FileSlot | None = None
        self._data: FileDataBackend | None = None
        self._cbt: CbtMap | None = None
        self._peers = FilePeers(spec.path, self.options)

    def __repr__(self) -> str:
        return f"FileStore({self.spec})"

    def slot(self) -> FileSlot:
        if self._slot is None:
            self._slot = FileSlot(self.spec.path)
        return self._slot

    def data(self) -> FileDataBackend:
        if self._data is None:
            from tcmu_pr.cbt.mapfile import CbtMap

            # the image is marked in use first, then the map looked for: every server that
            # opens a tracked image marks its writes (docs/cbt.md)
            data = FileDataBackend(self.spec.path)
            try:
                self._cbt = CbtMap.open_if_enabled(self.spec.path)
            except OSError as exc:
                data.close()
                raise StoreError(exc.errno or 22, f"change-block map: {exc}") from exc
            data.cbt = self._cbt
            self._data = data
        return self._data

    def join(self, on_change: ChangeHandler, on_loss: LossHandler) -> None:
        self._peers.join(on_change)

    def confirm_change(self) -> Confirmation:
        return self._peers.confirm_change()

    def still_current(self) -> bool:
        return True

    @property
    def peers(self) -> FilePeers:
        return self._peers

    def close(self) -> None:
        self._peers.close()
        if self._slot is not None:
            self._slot.close()
            self._slot = None
        if self._data is not None:
            self._data.close()
            self._data = None
        if self._cbt is not None:
            self._cbt.close()
            self._cbt = None
