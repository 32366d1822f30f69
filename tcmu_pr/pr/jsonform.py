"""The JSON form of a PR state, for people and scripts (``tcmu-pr pr decode/encode``).

Keys are written as ``"0x%016x"`` strings because JSON numbers lose precision above
2**53 in most readers; on input an int is accepted too.  Reading is strict -- unknown
keys, wrong types and invalid states are refused with a path such as
``registrations[3].key`` -- because a hand-edited file that is half understood would be
written to the shared store as something nobody meant.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from tcmu_pr.pr.nexus import Nexus, NexusError
from tcmu_pr.pr.state import U32, PRState, Registration, Reservation, UnitAttention
from tcmu_pr.pr.validate import U8, U16, U64, StateError, check_state

__all__ = ["JSONFormError", "state_from_json", "state_to_json"]

VERSIONS = (1, 2)
_HEX_KEY = re.compile(r"0x[0-9a-fA-F]{1,16}")
T = TypeVar("T")


class JSONFormError(ValueError):
    """A JSON document that is not a PR state; ``path`` names the offending value."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def _key_text(key: int) -> str:
    return f"0x{key:016x}"


def state_to_json(state: PRState, *, version: int) -> dict[str, Any]:
    """A JSON-ready dict of ``state``; ``version`` is the blob format it was read from."""
    res = state.reservation
    return {
        "version": version,
        "seq": state.seq,
        "generation": state.generation,
        "scsi2_holder": None if state.scsi2_holder is None else str(state.scsi2_holder),
        "reservation": None
        if res is None
        else {"key": _key_text(res.key), "nexus": str(res.nexus), "type": res.type},
        "registrations": [
            {
                "key": _key_text(r.key),
                "nexus": str(r.nexus),
                "rtpi": r.rtpi,
                "all_tg_pt": r.all_tg_pt,
            }
            for r in state.registrations
        ],
        "aptpl": state.aptpl,
        "unit_attentions": [
            {"nexus": str(ua.nexus), "asc": ua.asc, "ascq": ua.ascq, "all_tg_pt": ua.all_tg_pt}
            for ua in state.unit_attentions
        ],
    }


# ---------------------------------------------------------------------------- reading


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _object(path: str, value: object, required: set[str], optional: set[str]) -> dict:
    if not isinstance(value, dict):
        raise JSONFormError(path, f"expected an object, got {_kind(value)}")
    for name in value:
        if name not in required and name not in optional:
            raise JSONFormError(_join(path, str(name)), "unknown key")
    for name in sorted(required - value.keys()):
        raise JSONFormError(_join(path, name), "missing")
    return value


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _int(path: str, value: object, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise JSONFormError(path, f"expected an integer, got {_kind(value)}")
    if not 0 <= value <= top:
        raise JSONFormError(path, f"{value} is outside 0..{top:#x}")
    return value


def _key(path: str, value: object) -> int:
    """A reservation key: an int or a ``0x`` hex string of up to 16 digits."""
    if isinstance(value, str):
        if not _HEX_KEY.fullmatch(value):
            raise JSONFormError(path, f"{value!r} is not 0x and 1-16 hex digits")
        return int(value, 16)
    return _int(path, value, U64)


def _bool(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise JSONFormError(path, f"expected true or false, got {_kind(value)}")
    return value


def _nexus(path: str, value: object) -> Nexus:
    if not isinstance(value, str):
        raise JSONFormError(path, f"expected a nexus string, got {_kind(value)}")
    try:
        return Nexus.parse(value)
    except NexusError as e:
        raise JSONFormError(path, str(e)) from None


def _array(path: str, value: object, item: Callable[[str, object], T]) -> tuple[T, ...]:
    if not isinstance(value, list):
        raise JSONFormError(path, f"expected an array, got {_kind(value)}")
    return tuple(item(f"{path}[{i}]", v) for i, v in enumerate(value))


def _reservation(path: str, value: object) -> Reservation | None:
    if value is None:
        return None
    obj = _object(path, value, {"key", "nexus", "type"}, set())
    return Reservation(
        _key(f"{path}.key", obj["key"]),
        _nexus(f"{path}.nexus", obj["nexus"]),
        _int(f"{path}.type", obj["type"], U32),
    )


def _registration(path: str, value: object) -> Registration:
    obj = _object(path, value, {"key", "nexus"}, {"rtpi", "all_tg_pt"})
    rtpi = obj.get("rtpi")
    return Registration(
        _key(f"{path}.key", obj["key"]),
        _nexus(f"{path}.nexus", obj["nexus"]),
        None if rtpi is None else _int(f"{path}.rtpi", rtpi, U16),
        _bool(f"{path}.all_tg_pt", obj.get("all_tg_pt", False)),
    )


def _unit_attention(path: str, value: object) -> UnitAttention:
    obj = _object(path, value, {"nexus", "asc", "ascq"}, {"all_tg_pt"})
    return UnitAttention(
        _nexus(f"{path}.nexus", obj["nexus"]),
        _int(f"{path}.asc", obj["asc"], U8),
        _int(f"{path}.ascq", obj["ascq"], U8),
        _bool(f"{path}.all_tg_pt", obj.get("all_tg_pt", False)),
    )


_TOP = {
    "version",
    "seq",
    "generation",
    "scsi2_holder",
    "reservation",
    "registrations",
    "aptpl",
    "unit_attentions",
}


def state_from_json(obj: object) -> tuple[PRState, int | None]:
    """The state a JSON document describes, and the blob version it asks for (or None).

    Every top-level field is optional and defaults as in :class:`PRState`.  Raises
    :class:`JSONFormError` (a ValueError) whose message starts with the path of the
    offending value, also for a well-typed state that breaks an invariant of
    :func:`~tcmu_pr.pr.validate.check_state` (the same rules the blob decoder applies).
    """
    top = _object("", obj, set(), _TOP)
    version = top.get("version")
    if version is not None and (type(version) is not int or version not in VERSIONS):
        raise JSONFormError("version", f"{version!r} is not a blob version (1 or 2)")
    holder = top.get("scsi2_holder")
    state = PRState(
        seq=_int("seq", top.get("seq", 0), U32),
        generation=_int("generation", top.get("generation", 0), U32),
        scsi2_holder=None if holder is None else _nexus("scsi2_holder", holder),
        reservation=_reservation("reservation", top.get("reservation")),
        registrations=_array("registrations", top.get("registrations", []), _registration),
        aptpl=_bool("aptpl", top.get("aptpl", False)),
        unit_attentions=_array("unit_attentions", top.get("unit_attentions", []), _unit_attention),
    )
    try:
        check_state(state)
    except StateError as e:
        raise JSONFormError(e.path, e.reason) from None
    return state, version
