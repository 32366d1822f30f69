"""The name of a LU's backing store, parsed once: ``file:/srv/lu0.img`` or ``rbd:pool/image``.

Every edge that receives a store name (the kernel's dev_config, the command line, a layout or
topology file, targetcli's CheckConfig) turns it into a :class:`StoreSpec` here and passes the
value on; nothing else splits store strings.

Two spellings are accepted: ``file:/abs/path`` / ``rbd:pool/image`` (the canonical one, what
``str()`` gives) and the slash spelling ``file//abs/path`` / ``rbd/pool/image`` that a TCMU
dev_config needs, because rtslib-fb (so targetcli) refuses ``:`` in a user backstore's config.

File paths must be absolute: a daemon's working directory is not the administrator's.  Where a
person types the spec (the CLI, a layout file), the caller passes ``base`` and a relative path
is resolved against it instead of being refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

KINDS = ("file", "rbd")
#: Pool and image names as RADOS and rbd(8) accept them, minus what our grammars reserve:
#: "/" separates pool and image, "@" marks a snapshot, ";" separates dev_config options.
_RBD_NAME = re.compile(r"[^/@;\s]+")


class StoreSpecError(ValueError):
    """A string that names no store: the message says what was expected."""


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A parsed store name; equal specs name the same store (paths are normalised)."""

    kind: Literal["file", "rbd"]
    path: str = ""  # file: absolute, normalised
    pool: str = ""  # rbd
    image: str = ""  # rbd

    @classmethod
    def parse(cls, text: str, *, base: str | os.PathLike[str] | None = None) -> StoreSpec:
        """Parse either spelling; ``base`` resolves a relative file path (else refused)."""
        if not isinstance(text, str) or not text:
            raise StoreSpecError("empty store: expected file:PATH or rbd:POOL/IMAGE")
        colon, slash = text.find(":"), text.find("/")
        at = colon if colon != -1 and (slash == -1 or colon < slash) else slash
        if at <= 0:
            raise StoreSpecError(f"store {text!r}: expected file:PATH or rbd:POOL/IMAGE")
        kind, where = text[:at], text[at + 1 :]
        if kind == "file":
            return cls.file(where, base=base, original=text)
        if kind == "rbd":
            pool, sep, image = where.partition("/")
            if not sep or not _RBD_NAME.fullmatch(pool) or not _RBD_NAME.fullmatch(image):
                raise StoreSpecError(f"store {text!r}: expected rbd:POOL/IMAGE")
            return cls("rbd", pool=pool, image=image)
        raise StoreSpecError(
            f"store {text!r}: unknown store type {kind!r} (expected file:PATH or rbd:POOL/IMAGE)"
        )

    @classmethod
    def file(
        cls,
        path: str | os.PathLike[str],
        *,
        base: str | os.PathLike[str] | None = None,
        original: str | None = None,
    ) -> StoreSpec:
        """The spec of an image file (``base`` as in :meth:`parse`)."""
        where = os.fspath(path)
        shown = original or f"file:{where}"
        if not where or "\0" in where or where.endswith("/"):
            raise StoreSpecError(f"store {shown!r}: expected file:PATH of an image file")
        if not where.startswith("/"):
            if base is None:
                raise StoreSpecError(f"store {shown!r}: the file path must be absolute")
            where = os.path.join(os.fspath(base), where)
        return cls("file", path=os.path.normpath(where))

    def __post_init__(self) -> None:
        if self.kind == "file":
            ok = self.path.startswith("/") and not (self.pool or self.image)
        elif self.kind == "rbd":
            ok = bool(_RBD_NAME.fullmatch(self.pool) and _RBD_NAME.fullmatch(self.image))
            ok = ok and not self.path
        else:
            ok = False
        if not ok:
            raise StoreSpecError(f"not a store: {self.kind!r} {self.path or self.pool}")

    def __str__(self) -> str:
        return f"file:{self.path}" if self.kind == "file" else f"rbd:{self.pool}/{self.image}"

    @property
    def slashed(self) -> str:
        """The dev_config spelling (``file//abs/path``, ``rbd/pool/image``)."""
        return f"file/{self.path}" if self.kind == "file" else f"rbd/{self.pool}/{self.image}"

    @property
    def is_file(self) -> bool:
        return self.kind == "file"
