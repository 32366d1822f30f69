"""The structural invariants every stored :class:`PRState` satisfies.

The codec refuses to write a state that breaks them and refuses to read a blob that
decodes to one, so every gateway can rely on them without re-checking: values fit their
wire fields, each I_T nexus has at most one registration, and a reservation that needs a
holder registration has one.  SPC semantics beyond that (which key a REGISTER may use,
how a reservation came about) are the engine's business, not the store's.

Errors carry a ``path`` such as ``registrations[3].key`` so the blob decoder can turn it
into a line number and the JSON reader can report it as is.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable

from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import (
    ALL_REGISTRANTS_TYPES,
    MAX_REGISTRATIONS,
    PR_TYPES,
    U32,
    PRState,
    Registration,
    Reservation,
    UnitAttention,
)

U64 = 2**64 - 1
U16 = 0xFFFF
U8 = 0xFF


class StateError(ValueError):
    """A PR state that no blob may hold (or that the requested format cannot hold)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


def _int(path: str, value: object, top: int) -> None:
    # bool is an int subclass; a True key is a bug upstream, not a key.
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateError(path, f"expected an integer, got {type(value).__name__}")
    if not 0 <= value <= top:
        raise StateError(path, f"{value} is outside 0..{top:#x}")


def _bool(path: str, value: object) -> None:
    if not isinstance(value, bool):
        raise StateError(path, f"expected a bool, got {type(value).__name__}")


def _nexus(path: str, value: object) -> None:
    if not isinstance(value, Nexus):
        raise StateError(path, f"expected a Nexus, got {type(value).__name__}")


def _coverage_key(reg: Registration) -> tuple[str, Hashable]:
    """The bucket of nexuses ``reg`` covers: same initiator, same ISID unless its ISID is
    empty (any ISID), same target port unless ALL_TG_PT (any port)."""
    n = reg.nexus
    if n.isid and not reg.all_tg_pt:
        return ("port", (n.initiator, n.isid, n.target, n.tpgt))
    if n.isid:
        return ("isid", (n.initiator, n.isid))
    if not reg.all_tg_pt:
        return ("tport", (n.initiator, n.target, n.tpgt))
    return ("init", n.initiator)


def _check_unique(regs: tuple[Registration, ...]) -> None:
    """No registration covers another's nexus (SPC-4 §5.12.7: one per I_T nexus).

    Every registration is filed under all four bucket kinds; one that finds anybody but
    itself in the bucket it covers is a duplicate.  Linear, so 2048 registrations cost
    nothing, unlike the pairwise ``covers`` test.
    """
    buckets: dict[tuple[str, Hashable], list[int]] = defaultdict(list)
    for i, reg in enumerate(regs):
        n = reg.nexus
        buckets[("port", (n.initiator, n.isid, n.target, n.tpgt))].append(i)
        buckets[("isid", (n.initiator, n.isid))].append(i)
        buckets[("tport", (n.initiator, n.target, n.tpgt))].append(i)
        buckets[("init", n.initiator)].append(i)
    clashes: list[tuple[int, int]] = []
    for i, reg in enumerate(regs):
        bucket = buckets[_coverage_key(reg)]
        if len(bucket) > 1:  # it is always in its own bucket
            other = bucket[1] if bucket[0] == i else bucket[0]
            clashes.append((max(i, other), min(i, other)))
    if clashes:
        later, earlier = min(clashes)  # report the first line a reader would trip on
        raise StateError(
            f"registrations[{later}]",
            f"same I_T nexus as registrations[{earlier}] "
            f"({regs[later].nexus} / {regs[earlier].nexus})",
        )


def _check_reservation(res: Reservation, regs: tuple[Registration, ...]) -> None:
    _int("reservation.key", res.key, U64)
    _nexus("reservation.nexus", res.nexus)
    _int("reservation.type", res.type, U32)
    if res.type not in PR_TYPES:
        raise StateError("reservation.type", f"{res.type:#x} is not a PR type code")
    if res.type in ALL_REGISTRANTS_TYPES:
        # Every registrant holds it; the recorded nexus may have unregistered since.
        if not regs:
            raise StateError("reservation", "all-registrants reservation without registrations")
    elif not any(reg.covers(res.nexus) for reg in regs):
        raise StateError("reservation.nexus", f"{res.nexus} holds it but is not registered")


def _plainly_valid(regs: tuple[Registration, ...]) -> bool:
    """One pass over the common case: every registration well-formed, each with an ISID and
    no ALL_TG_PT (so it covers only its own I_T nexus), no two for one nexus.

    True means the field checks and :func:`_check_unique` below would pass; False only that
    they must run to find (and name) a fault, if there is one.  Why: every change re-encodes
    the whole state, and with thousands of registrations the per-field helper calls cost
    milliseconds per PR OUT.
    """
    ports = set()
    for reg in regs:
        if type(reg) is not Registration or reg.all_tg_pt is not False:
            return False
        key, nexus, rtpi = reg.key, reg.nexus, reg.rtpi
        if type(key) is not int or not 0 <= key <= U64 or type(nexus) is not Nexus:
            return False
        if rtpi is not None and (type(rtpi) is not int or not 0 <= rtpi <= U16):
            return False
        if not nexus.isid:
            return False
        ports.add((nexus.initiator, nexus.isid, nexus.target, nexus.tpgt))
    return len(ports) == len(regs)


def _check_registrations(regs: tuple[Registration, ...]) -> None:
    for i, reg in enumerate(regs):
        path = f"registrations[{i}]"
        if not isinstance(reg, Registration):
            raise StateError(path, f"expected a Registration, got {type(reg).__name__}")
        _int(f"{path}.key", reg.key, U64)
        _nexus(f"{path}.nexus", reg.nexus)
        if reg.rtpi is not None:
            _int(f"{path}.rtpi", reg.rtpi, U16)
        _bool(f"{path}.all_tg_pt", reg.all_tg_pt)
    _check_unique(regs)


def check_state(state: PRState) -> None:
    """Raise :class:`StateError` naming the first field that breaks an invariant."""
    if not isinstance(state, PRState):
        raise StateError("", f"expected a PRState, got {type(state).__name__}")
    _int("seq", state.seq, U32)
    _int("generation", state.generation, U32)
    if state.scsi2_holder is not None:
        _nexus("scsi2_holder", state.scsi2_holder)
    _bool("aptpl", state.aptpl)
    regs = state.registrations
    if not isinstance(regs, tuple):
        raise StateError("registrations", "expected a tuple")
    if len(regs) > MAX_REGISTRATIONS:
        raise StateError("registrations", f"{len(regs)} entries, at most {MAX_REGISTRATIONS}")
    if not _plainly_valid(regs):
        _check_registrations(regs)
    if state.reservation is not None:
        if not isinstance(state.reservation, Reservation):
            raise StateError("reservation", "expected a Reservation")
        _check_reservation(state.reservation, regs)
    uas = state.unit_attentions
    if not isinstance(uas, tuple):
        raise StateError("unit_attentions", "expected a tuple")
    for i, ua in enumerate(uas):
        path = f"unit_attentions[{i}]"
        if not isinstance(ua, UnitAttention):
            raise StateError(path, f"expected a UnitAttention, got {type(ua).__name__}")
        _nexus(f"{path}.nexus", ua.nexus)
        _int(f"{path}.asc", ua.asc, U8)
        _int(f"{path}.ascq", ua.ascq, U8)
        _bool(f"{path}.all_tg_pt", ua.all_tg_pt)
