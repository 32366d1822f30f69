"""The compiled half, ``tcmu_pr._ublk_native`` (native/ublk.c), loaded once."""

from __future__ import annotations

from typing import Any


class UblkError(Exception):
    """A ublk operation that could not be carried out; the message says what and why."""


def load() -> Any:
    """The cffi module, or UblkError naming how to build it."""
    try:
        from tcmu_pr import _ublk_native  # type: ignore[attr-defined]
    except ImportError as err:
        raise UblkError(
            f"the native ublk server is not built ({err}); run scripts/setup "
            "(needs liburing-dev)"
        ) from err
    return _ublk_native
