"""PR state as a table for humans (``tcmu-pr pr show``, ``tcmu-pr demo``).

Only presentation: the JSON form (jsonform) is the one for programs.
"""

from __future__ import annotations

from tcmu_pr.pr.state import PRState

TYPE_NAMES = {
    0x1: "Write Exclusive",
    0x3: "Exclusive Access",
    0x5: "Write Exclusive, Registrants Only",
    0x6: "Exclusive Access, Registrants Only",
    0x7: "Write Exclusive, All Registrants",
    0x8: "Exclusive Access, All Registrants",
}

UA_NAMES = {
    (0x2A, 0x03): "RESERVATIONS PREEMPTED",
    (0x2A, 0x04): "RESERVATIONS RELEASED",
    (0x2A, 0x05): "REGISTRATIONS PREEMPTED",
}


def type_name(pr_type: int) -> str:
    return f"{pr_type} ({TYPE_NAMES.get(pr_type, 'unknown type')})"


def format_state(state: PRState, *, version: int | None = None) -> str:
    """Multi-line table: header fields, reservation, registrations, pending UAs."""
    res = state.reservation
    lines = [
        f"format version  {'(empty store)' if version is None else f'v{version}'}",
        f"seq             0x{state.seq:08x}",
        f"generation      0x{state.generation:08x}",
        f"aptpl           {'yes' if state.aptpl else 'no'}",
        f"SCSI-2 holder   {state.scsi2_holder or 'none'}",
        "reservation     "
        + (
            "none"
            if res is None
            else f"type {type_name(res.type)}, key 0x{res.key:016x}, by {res.nexus}"
        ),
        f"registrations   {len(state.registrations)}",
    ]
    if state.registrations:
        lines.append(f"  {'':1} {'KEY':18}  {'RTPI':>5}  {'ALL_TG_PT':9}  NEXUS")
        for reg in state.registrations:
            mark = "*" if state.is_holder(reg.nexus) else " "
            rtpi = "-" if reg.rtpi is None else str(reg.rtpi)
            all_tg = "yes" if reg.all_tg_pt else "no"
            lines.append(f"  {mark} 0x{reg.key:016x}  {rtpi:>5}  {all_tg:9}  {reg.nexus}")
        if res is not None:
            lines.append("  (* = reservation holder)")
    lines.append(f"unit attentions {len(state.unit_attentions)}")
    for ua in state.unit_attentions:
        name = UA_NAMES.get((ua.asc, ua.ascq), f"ASC 0x{ua.asc:02x}/0x{ua.ascq:02x}")
        scope = " (all target ports)" if ua.all_tg_pt else ""
        lines.append(f"  {name} for {ua.nexus}{scope}")
    return "\n".join(lines)
