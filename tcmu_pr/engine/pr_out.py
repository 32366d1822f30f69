"""PERSISTENT RESERVE OUT (SPC-4 §6.16, §5.12): one pure function per service action.

Each function takes the decoded command and the current state and returns an Outcome; a
refusal raises :class:`~tcmu_pr.scsi.CheckCondition` or returns ``Outcome.conflict``, and in
both cases the state object is returned untouched.  Section numbers are SPC-4 r37's.

Decisions the standard leaves open (documented once here):

* PRGENERATION (§6.15.2) is incremented by every REGISTER, REGISTER AND IGNORE EXISTING KEY,
  CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE that completes with GOOD — except
  a REGISTER / REGISTER AND IGNORE EXISTING KEY from an unregistered I_T nexus with a zero
  SERVICE ACTION RESERVATION KEY, which §5.12.7 (tables "Register behaviors") says shall "do
  nothing except return GOOD status": nothing changes, the state object is returned as is.
  RESERVE and RELEASE never increment it.
* APTPL (§6.16.3, §5.12.5): ``PRState.aptpl`` is the APTPL bit of the most recent REGISTER,
  REGISTER AND IGNORE EXISTING KEY or REGISTER AND MOVE that completed with GOOD (including
  one that unregisters), the "do nothing" case above excepted.
* ALL_TG_PT matters only when a registration is created; changing or removing a key acts on
  the nexus's existing registration, which keeps its scope.  One ALL_TG_PT registration is
  one record (Registration.all_tg_pt); unregistering it from any port removes it everywhere.
  An unregistered nexus asking REGISTER with ALL_TG_PT=1 while its initiator port is already
  registered through another target port gets RESERVATION CONFLICT (those I_T nexuses are
  registered and the RESERVATION KEY, zero, is not theirs); REGISTER AND IGNORE EXISTING KEY
  instead folds those registrations into the new one.
* A SCSI-2 reservation blocks every PR OUT, from any nexus (SPC-2 §5.5.1, as LIO does), so
  registrations and a SCSI-2 reservation never coexist.
* REPLACE LOST RESERVATION (§5.12.11.3): this device never loses PR information, so it is
  answered as the standard says for that case: ILLEGAL REQUEST, INVALID RELEASE OF
  PERSISTENT RESERVATION (REPORT CAPABILITIES says RLR_C=0).
* PREEMPT AND ABORT: the aborting of the preempted nexuses' tasks is the transport's job;
  the REGISTRATIONS PREEMPTED unit attentions in ``Outcome.unit_attentions`` name them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from tcmu_pr import scsi
from tcmu_pr.engine import changes
from tcmu_pr.engine.cdb import (
    CLEAR,
    PREEMPT,
    PREEMPT_AND_ABORT,
    REGISTER,
    REGISTER_AND_IGNORE_EXISTING_KEY,
    REGISTER_AND_MOVE,
    RELEASE,
    REPLACE_LOST_RESERVATION,
    RESERVE,
    BasicParams,
    MoveParams,
    ProutCdb,
    check_scope_type,
    decode_basic,
    decode_move,
    decode_prout_cdb,
    parameter_list,
)
from tcmu_pr.pr.nexus import Nexus, NexusError
from tcmu_pr.pr.state import (
    ALL_REGISTRANTS_TYPES,
    MAX_REGISTRATIONS,
    REGISTRANTS_ONLY_TYPES,
    UA_REGISTRATIONS_PREEMPTED,
    UA_RESERVATIONS_PREEMPTED,
    UA_RESERVATIONS_RELEASED,
    PRState,
    Registration,
    Reservation,
    UnitAttention,
)
from tcmu_pr.pr.transport_id import tid_to_nexus
from tcmu_pr.scsi import CheckCondition, Outcome

_BAD_LIST = scsi.INVALID_FIELD_IN_PARAMETER_LIST


def _done(before: PRState, after: PRState, uas: list[UnitAttention] | None = None) -> Outcome:
    """GOOD with ``after`` settled and ``uas`` queued (identity kept if nothing changed)."""
    after = changes.settle_reservation(after)
    after, queued = changes.queue_uas(after, uas or [])
    return Outcome(before if after == before else after, scsi.GOOD, None, None, queued)


def _check_key(state: PRState, nexus: Nexus, key: int) -> Registration | None:
    """The nexus's registration if RESERVATION KEY matches it (§6.16.3), else None."""
    reg = state.registration_of(nexus)
    return reg if reg is not None and reg.key == key else None


def _without(state: PRState, removed: list[Registration]) -> PRState:
    return replace(state, registrations=tuple(r for r in state.registrations if r not in removed))


def _with_resources(state: PRState, adding: int) -> None:
    if len(state.registrations) + adding > MAX_REGISTRATIONS:
        raise CheckCondition(scsi.INSUFFICIENT_REGISTRATION_RESOURCES, "registration table full")


def _unregister(
    state: PRState, nexus: Nexus, reg: Registration
) -> tuple[PRState, list[UnitAttention]]:
    """§5.12.11.2.3: remove ``reg``; a non-all-registrants holder loses the reservation.

    Releasing a registrants-only reservation this way tells every other registrant
    RESERVATIONS RELEASED; an all-registrants one goes only with its last registrant.
    """
    uas: list[UnitAttention] = []
    after = _without(state, [reg])
    res = state.reservation
    if res is not None and res.type not in ALL_REGISTRANTS_TYPES and state.is_holder(nexus):
        after = replace(after, reservation=None)
        if res.type in REGISTRANTS_ONLY_TYPES:
            uas = [changes.ua_for(r, UA_RESERVATIONS_RELEASED) for r in after.registrations]
    return after, uas


def _spec_i_pt_records(
    state: PRState, nexus: Nexus, params: BasicParams, rtpi: int | None
) -> list[Registration]:
    """The extra registrations SPEC_I_PT asks for (§5.12.7 table "I_T nexuses being registered").

    Each TransportID names an initiator port on the receiving target port (or on every port
    with ALL_TG_PT).  One naming the receiving nexus itself, or repeating another, adds
    nothing; one that is already registered, or that overlaps another without being equal,
    makes the whole command INVALID FIELD IN PARAMETER LIST and registers nobody.
    """
    records: list[Registration] = []
    own = (nexus, params.all_tg_pt)
    for tid in params.transport_ids:
        try:
            dest = tid_to_nexus(tid, nexus)
        except (NexusError, ValueError) as exc:
            raise CheckCondition(_BAD_LIST, f"TransportID names no valid nexus: {exc}") from exc
        rec = (dest, params.all_tg_pt)
        if rec == own or any((r.nexus, r.all_tg_pt) == rec for r in records):
            continue
        clash = changes.overlaps(dest, params.all_tg_pt, nexus, params.all_tg_pt) or any(
            changes.overlaps(dest, params.all_tg_pt, r.nexus, r.all_tg_pt) for r in records
        )
        if clash or changes.overlapping(state, dest, params.all_tg_pt):
            raise CheckCondition(_BAD_LIST, f"SPEC_I_PT names {dest}, which is already registered")
        records.append(Registration(params.sa_key, dest, rtpi, params.all_tg_pt))
    return records


def register(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """REGISTER (§5.12.7, table "Register behaviors for a REGISTER service action")."""
    reg = state.registration_of(nexus)
    if reg is None:
        if params.key != 0:
            return Outcome.conflict(state)
        if params.sa_key == 0:
            return Outcome.good(state)  # "do nothing except return GOOD status"
        if changes.overlapping(state, nexus, params.all_tg_pt):
            return Outcome.conflict(state)  # ALL_TG_PT over another port's registration
        extra = _spec_i_pt_records(state, nexus, params, rtpi) if params.spec_i_pt else []
        _with_resources(state, 1 + len(extra))
        new = Registration(params.sa_key, nexus, rtpi, params.all_tg_pt)
        after = replace(state, registrations=(*state.registrations, new, *extra))
        return _done(state, changes.bump_generation(replace(after, aptpl=params.aptpl)))
    if params.key != reg.key:
        return Outcome.conflict(state)
    if params.spec_i_pt:
        raise CheckCondition(_BAD_LIST, "SPEC_I_PT=1 from a registered I_T nexus")
    return _reregister(state, nexus, reg, params)


def _reregister(state: PRState, nexus: Nexus, reg: Registration, params: BasicParams) -> Outcome:
    """Change or remove the key of a registered nexus (§5.12.7, §5.12.11.2.3)."""
    uas: list[UnitAttention] = []
    if params.sa_key == 0:
        after, uas = _unregister(state, nexus, reg)
    else:
        regs = tuple(replace(r, key=params.sa_key) if r == reg else r for r in state.registrations)
        after = replace(state, registrations=regs)
    after = changes.bump_generation(replace(after, aptpl=params.aptpl))
    return _done(state, after, uas)


def register_and_ignore(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """REGISTER AND IGNORE EXISTING KEY (§5.12.7, its "Register behaviors" table)."""
    reg = state.registration_of(nexus)
    if reg is not None:
        return _reregister(state, nexus, reg, params)
    if params.sa_key == 0:
        return Outcome.good(state)  # "do nothing except return GOOD status"
    folded = changes.overlapping(state, nexus, params.all_tg_pt)
    _with_resources(state, 1 - len(folded))
    new = Registration(params.sa_key, nexus, rtpi, params.all_tg_pt)
    regs = (*(r for r in state.registrations if r not in folded), new)
    res = state.reservation
    if res is not None and any(r.covers(res.nexus) for r in folded):
        # The holder's registration was folded in: the new one now covers the holder.
        res = replace(res, nexus=nexus) if not new.covers(res.nexus) else res
    after = replace(state, registrations=regs, reservation=res, aptpl=params.aptpl)
    return _done(state, changes.bump_generation(after))


def reserve(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """RESERVE (§5.12.9): create the reservation, or GOOD if the holder repeats it."""
    reg = _check_key(state, nexus, params.key)
    if reg is None:
        return Outcome.conflict(state)
    res = state.reservation
    if res is not None:
        # Same type from a holder: no change; another type, or a non-holder: conflict.
        same = state.is_holder(nexus) and res.type == cmd.type
        return Outcome.good(state) if same else Outcome.conflict(state)
    return _done(state, replace(state, reservation=Reservation(reg.key, nexus, cmd.type)))


def release(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """RELEASE (§5.12.11.2.2).

    Non-holders and "no reservation" get GOOD with no change; a holder naming another type
    or scope gets INVALID RELEASE OF PERSISTENT RESERVATION.  Releasing a registrants-only or
    all-registrants reservation tells every other registrant RESERVATIONS RELEASED (NUAR=0).
    """
    if _check_key(state, nexus, params.key) is None:
        return Outcome.conflict(state)
    res = state.reservation
    if res is None or not state.is_holder(nexus):
        return Outcome.good(state)
    if res.type != cmd.type or cmd.scope != 0:
        raise CheckCondition(scsi.INVALID_RELEASE_OF_PERSISTENT_RESERVATION, "type/scope mismatch")
    uas: list[UnitAttention] = []
    if res.type in REGISTRANTS_ONLY_TYPES | ALL_REGISTRANTS_TYPES:
        others = changes.others(state.registrations, nexus)
        uas = [changes.ua_for(r, UA_RESERVATIONS_RELEASED) for r in others]
    return _done(state, replace(state, reservation=None), uas)


def clear(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """CLEAR (§5.12.11.2.7): release, remove every registration, RESERVATIONS PREEMPTED."""
    if _check_key(state, nexus, params.key) is None:
        return Outcome.conflict(state)
    others = changes.others(state.registrations, nexus)
    uas = [changes.ua_for(r, UA_RESERVATIONS_PREEMPTED) for r in others]
    after = replace(state, reservation=None, registrations=())
    return _done(state, changes.bump_generation(after), uas)


def preempt(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """PREEMPT and PREEMPT AND ABORT (§5.12.11.2.4 to §5.12.11.2.6, table "Preempting actions").

    * all-registrants reservation, SA key 0: remove every other registration, replace the
      reservation by one of this nexus with the CDB's type (§5.12.11.2.4.3);
    * SA key = the holder's key (not all-registrants): the same, removing only the
      registrations with that key, the preempting nexus's own excepted;
    * otherwise (no reservation, a non-holder key, or all-registrants with a non-zero key):
      remove the registrations with that key, this nexus's own included (§5.12.11.2.5); no
      match is RESERVATION CONFLICT;
    * SA key 0 without an all-registrants reservation: INVALID FIELD IN PARAMETER LIST.

    Nexuses that lose a registration get REGISTRATIONS PREEMPTED; when the type changes, the
    remaining other registrants get RESERVATIONS RELEASED.
    """
    reg = _check_key(state, nexus, params.key)
    if reg is None:
        return Outcome.conflict(state)
    res = state.reservation
    all_reg = res is not None and res.type in ALL_REGISTRANTS_TYPES
    sa_key = params.sa_key
    if sa_key == 0 and not all_reg:
        raise CheckCondition(
            _BAD_LIST, "SERVICE ACTION RESERVATION KEY 0 without an AR reservation"
        )
    if res is not None and ((all_reg and sa_key == 0) or (not all_reg and sa_key == res.key)):
        removed = [r for r in state.registrations if r != reg and (sa_key in (0, r.key))]
        after = _without(state, removed)
        after = replace(after, reservation=Reservation(reg.key, nexus, cmd.type))
        uas = [changes.ua_for(r, UA_REGISTRATIONS_PREEMPTED) for r in removed]
        if res.type != cmd.type:
            kept = changes.others(after.registrations, nexus)
            uas += [changes.ua_for(r, UA_RESERVATIONS_RELEASED) for r in kept]
        return _done(state, changes.bump_generation(after), uas)
    removed = [r for r in state.registrations if r.key == sa_key]
    if not removed:
        return Outcome.conflict(state)
    uas = [changes.ua_for(r, UA_REGISTRATIONS_PREEMPTED) for r in removed if r != reg]
    return _done(state, changes.bump_generation(_without(state, removed)), uas)


def _target_port_of(state: PRState, nexus: Nexus, rtpi: int | None, wanted: int) -> Nexus:
    """A nexus on the target port whose relative target port identifier is ``wanted``.

    The engine knows a port's identifier only from where it meets one: the receiving port
    (``rtpi``, else its TPG tag, as READ FULL STATUS reports it) and the ports registrations
    were made through.  Anything else is an unknown port: INVALID FIELD IN PARAMETER LIST.
    """
    seen = [(rtpi if rtpi is not None else nexus.tpgt_value, nexus)]
    for reg in state.registrations:
        seen.append((reg.rtpi if reg.rtpi is not None else reg.nexus.tpgt_value, reg.nexus))
    for port_id, where in seen:
        if port_id == wanted:
            return where
    raise CheckCondition(_BAD_LIST, f"no known target port has relative identifier {wanted}")


def register_and_move(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: MoveParams, rtpi: int | None
) -> Outcome:
    """REGISTER AND MOVE (§5.12.8, table "Register behaviors for a REGISTER AND MOVE").

    Registers the TransportID's initiator port on the port named by RELATIVE TARGET PORT
    IDENTIFIER with the SA key (replacing its key if registered) and moves the reservation,
    same type, to it; UNREG then unregisters the sender.  No unit attention is specified.
    """
    reg = _check_key(state, nexus, params.key)
    if reg is None:
        return Outcome.conflict(state)
    if params.sa_key == 0:
        raise CheckCondition(_BAD_LIST, "REGISTER AND MOVE with SERVICE ACTION RESERVATION KEY 0")
    res = state.reservation
    if res is None:
        raise CheckCondition(scsi.INVALID_FIELD_IN_CDB, "REGISTER AND MOVE without a reservation")
    if not state.is_holder(nexus) or res.type in ALL_REGISTRANTS_TYPES:
        return Outcome.conflict(state)
    port = _target_port_of(state, nexus, rtpi, params.rtpi)
    try:
        dest = tid_to_nexus(params.transport_id, port)
    except (NexusError, ValueError) as exc:
        raise CheckCondition(_BAD_LIST, f"TransportID names no valid nexus: {exc}") from exc
    if changes.same_initiator_port(dest, nexus):
        raise CheckCondition(_BAD_LIST, "REGISTER AND MOVE to the sender's own initiator port")
    hits = changes.overlapping(state, dest, False)
    if reg in hits:
        raise CheckCondition(_BAD_LIST, "REGISTER AND MOVE within the sender's own registration")
    if len(hits) > 1 or (hits and not hits[0].covers(dest)):
        raise CheckCondition(_BAD_LIST, f"{dest} overlaps several registrations")
    if hits:
        regs = tuple(
            replace(r, key=params.sa_key) if r == hits[0] else r for r in state.registrations
        )
    else:
        _with_resources(state, 1)
        regs = (*state.registrations, Registration(params.sa_key, dest, params.rtpi))
    after = replace(
        state, registrations=regs, reservation=Reservation(params.sa_key, dest, res.type)
    )
    if params.unreg:
        after = _without(after, [reg])
    after = changes.bump_generation(replace(after, aptpl=params.aptpl))
    return _done(state, after)


def replace_lost_reservation(
    state: PRState, nexus: Nexus, cmd: ProutCdb, params: BasicParams, rtpi: int | None
) -> Outcome:
    """REPLACE LOST RESERVATION (§5.12.11.3): nothing is ever lost here, so refuse it."""
    raise CheckCondition(scsi.INVALID_RELEASE_OF_PERSISTENT_RESERVATION, "no reservation was lost")


_Action = Callable[[PRState, Nexus, ProutCdb, BasicParams, int | None], Outcome]

_ACTIONS: dict[int, _Action] = {
    REGISTER: register,
    RESERVE: reserve,
    RELEASE: release,
    CLEAR: clear,
    PREEMPT: preempt,
    PREEMPT_AND_ABORT: preempt,
    REGISTER_AND_IGNORE_EXISTING_KEY: register_and_ignore,
    REPLACE_LOST_RESERVATION: replace_lost_reservation,
}

#: Service actions whose SCOPE and TYPE fields define a reservation (§6.16.3 table "valid
#: parameters"); RELEASE's are compared with the reservation instead.
_SCOPED = frozenset({RESERVE, PREEMPT, PREEMPT_AND_ABORT, REPLACE_LOST_RESERVATION})


def execute(state: PRState, nexus: Nexus, cdb: bytes, data: bytes, rtpi: int | None) -> Outcome:
    """Decode a PERSISTENT RESERVE OUT and run its service action."""
    try:
        if state.scsi2_holder is not None:
            return Outcome.conflict(state)  # SPC-2 §5.5.1, whoever holds it
        cmd = decode_prout_cdb(cdb)
        plist = parameter_list(cmd, data)
        if cmd.service_action == REGISTER_AND_MOVE:
            return register_and_move(state, nexus, cmd, decode_move(plist), rtpi)
        params = decode_basic(cmd.service_action, plist)
        if cmd.service_action in _SCOPED:
            check_scope_type(cmd)
        return _ACTIONS[cmd.service_action](state, nexus, cmd, params, rtpi)
    except CheckCondition as exc:
        return Outcome.refused(state, exc)
