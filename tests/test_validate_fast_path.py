"""The one-pass check of registrations agrees with the precise one it stands in for."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import registrations

from tcmu_pr.pr.state import Registration
from tcmu_pr.pr.validate import StateError, _check_registrations, _plainly_valid

# Registrations that are sometimes malformed: wrong types, out-of-range values, duplicates.
_odd_values = st.one_of(st.just(-1), st.just(2**64), st.just(True), st.just("1"), st.none())


@st.composite
def maybe_broken(draw: st.DrawFn) -> object:
    reg = draw(registrations())
    field = draw(st.sampled_from([None, "key", "rtpi", "all_tg_pt", "nexus", "whole"]))
    if field is None:
        return reg
    if field == "whole":
        return draw(st.sampled_from([None, "reg", (1, reg.nexus)]))
    return dataclasses.replace(reg, **{field: draw(_odd_values)})


@settings(max_examples=600)
@given(st.lists(st.one_of(registrations(), maybe_broken()), max_size=12),
       st.data())  # fmt: skip
def test_fast_path_never_passes_what_the_precise_checks_refuse(regs: list, data) -> None:
    if regs and data.draw(st.booleans()):
        regs.append(regs[data.draw(st.integers(0, len(regs) - 1))])  # a duplicate nexus
    regs_t = tuple(regs)
    if _plainly_valid(regs_t):
        _check_registrations(regs_t)  # must not raise


@settings(max_examples=300)
@given(st.lists(registrations(), max_size=12))
def test_fast_path_takes_the_common_case(regs: list[Registration]) -> None:
    """Well-formed, ISID-bearing, single-port registrations of distinct nexuses: no fallback."""
    plain = tuple(r for r in regs if r.nexus.isid and not r.all_tg_pt)
    seen, distinct = set(), []
    for r in plain:
        if r.nexus not in seen:
            seen.add(r.nexus)
            distinct.append(r)
    try:
        _check_registrations(tuple(distinct))
    except StateError:
        return  # the strategy can still make an invalid mix (not this test's concern)
    assert _plainly_valid(tuple(distinct))
