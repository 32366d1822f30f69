"""The JSON form: exact shape, lossless round trips, strict reading with paths."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import pr_states

from tcmu_pr.pr.codec import decode_versioned, encode
from tcmu_pr.pr.jsonform import JSONFormError, state_from_json, state_to_json
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import PRState, Registration, Reservation, UnitAttention

GW = "iqn.2003-01.org.linux-iscsi.gw:rbd"
N1 = f"iqn.1994-05.com.redhat:client1,i,0x23d000001,{GW},t,0x1"
N2 = f"iqn.1994-05.com.redhat:client2,i,0x23d000002,{GW},t,0x2"

STATE = PRState(
    seq=7,
    generation=3,
    scsi2_holder=None,
    reservation=Reservation(0xABC123, Nexus.parse(N1), 5),
    registrations=(
        Registration(0xABC123, Nexus.parse(N1)),
        Registration(2**64 - 1, Nexus.parse(N2), rtpi=2, all_tg_pt=True),
    ),
    aptpl=True,
    unit_attentions=(UnitAttention(Nexus.parse(N2), 0x2A, 0x03),),
)

DOC = {
    "version": 2,
    "seq": 7,
    "generation": 3,
    "scsi2_holder": None,
    "reservation": {"key": "0x0000000000abc123", "nexus": N1, "type": 5},
    "registrations": [
        {"key": "0x0000000000abc123", "nexus": N1, "rtpi": None, "all_tg_pt": False},
        {"key": "0xffffffffffffffff", "nexus": N2, "rtpi": 2, "all_tg_pt": True},
    ],
    "aptpl": True,
    "unit_attentions": [{"nexus": N2, "asc": 0x2A, "ascq": 0x03, "all_tg_pt": False}],
}


def test_state_to_json_has_the_documented_shape() -> None:
    assert state_to_json(STATE, version=2) == DOC
    assert list(state_to_json(STATE, version=2)) == list(DOC)  # key order is stable too


def test_document_reads_back() -> None:
    assert state_from_json(DOC) == (STATE, 2)


def test_blob_to_json_to_blob() -> None:
    blob = encode(STATE)
    state, version = decode_versioned(blob)
    doc = json.loads(json.dumps(state_to_json(state, version=version)))
    again, wanted = state_from_json(doc)
    assert encode(again, version=wanted) == blob


def test_minimal_document_defaults_like_prstate() -> None:
    assert state_from_json({}) == (PRState(), None)
    doc = {"registrations": [{"key": 5, "nexus": N1}], "aptpl": True}
    state, version = state_from_json(doc)
    assert version is None
    assert state.registrations == (Registration(5, Nexus.parse(N1)),)


@pytest.mark.parametrize("key", [0xABC123, "0xabc123", "0xABC123", "0x0000000000abc123"])
def test_keys_as_int_or_hex_string(key: object) -> None:
    doc = {"registrations": [{"key": key, "nexus": N1}], "aptpl": True}
    assert state_from_json(doc)[0].registrations[0].key == 0xABC123


def _edit(path: list, value: object, *, delete: bool = False) -> dict:
    doc = copy.deepcopy(DOC)
    target = doc
    for step in path[:-1]:
        target = target[step]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


BAD = {
    # id: (document, path the message starts with, fragment)
    "not-an-object": ([DOC], "", "expected an object"),
    "unknown-top-key": (_edit(["apltp"], True), "apltp", "unknown key"),
    "unknown-nested-key": (
        _edit(["registrations", 1, "tpgt"], 1),
        "registrations[1].tpgt",
        "unknown",
    ),
    "missing-key": (
        _edit(["registrations", 0, "key"], None, delete=True),
        "registrations[0].key",
        "missing",
    ),
    "key-not-hex": (_edit(["registrations", 1, "key"], "abc123"), "registrations[1].key", "hex"),
    "key-17-digits": (_edit(["reservation", "key"], "0x1" + "0" * 16), "reservation.key", "hex"),
    "key-over-u64": (_edit(["registrations", 0, "key"], 2**64), "registrations[0].key", "outside"),
    "key-negative": (_edit(["registrations", 0, "key"], -1), "registrations[0].key", "outside"),
    "key-float": (_edit(["registrations", 0, "key"], 1.5), "registrations[0].key", "integer"),
    "seq-string": (_edit(["seq"], "7"), "seq", "expected an integer"),
    "seq-bool": (_edit(["seq"], True), "seq", "expected an integer"),
    "generation-over-u32": (_edit(["generation"], 2**32), "generation", "outside"),
    "aptpl-int": (_edit(["aptpl"], 1), "aptpl", "true or false"),
    "all-tg-pt-null": (
        _edit(["registrations", 0, "all_tg_pt"], None),
        "registrations[0].all_tg_pt",
        "true or false",
    ),
    "rtpi-over-u16": (
        _edit(["registrations", 1, "rtpi"], 0x10000),
        "registrations[1].rtpi",
        "outside",
    ),
    "bad-nexus": (
        _edit(["registrations", 1, "nexus"], "client2"),
        "registrations[1].nexus",
        "I_T nexus",
    ),
    "nexus-number": (_edit(["scsi2_holder"], 5), "scsi2_holder", "nexus string"),
    "registrations-object": (_edit(["registrations"], {}), "registrations", "array"),
    "asc-over-u8": (_edit(["unit_attentions", 0, "asc"], 256), "unit_attentions[0].asc", "outside"),
    "ua-missing-ascq": (
        _edit(["unit_attentions", 0, "ascq"], None, delete=True),
        "unit_attentions[0].ascq",
        "missing",
    ),
    "version-3": (_edit(["version"], 3), "version", "1 or 2"),
    "version-float": (_edit(["version"], 1.0), "version", "1 or 2"),
    "version-true": (_edit(["version"], True), "version", "1 or 2"),
    "type-2": (_edit(["reservation", "type"], 2), "reservation.type", "not a PR type"),
    "duplicate-registration": (
        _edit(["registrations", 1, "nexus"], N1),
        "registrations[1]",
        "same I_T nexus",
    ),
    "reservation-unregistered": (
        _edit(["reservation", "nexus"], N1.replace("client1", "client9")),
        "reservation.nexus",
        "not registered",
    ),
}


@pytest.mark.parametrize(("doc", "path", "fragment"), list(BAD.values()), ids=list(BAD))
def test_bad_document_names_the_path(doc: object, path: str, fragment: str) -> None:
    with pytest.raises(JSONFormError) as info:
        state_from_json(doc)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: " if path else fragment)
    assert fragment in str(info.value)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pr_states(), st.sampled_from((1, 2)))
def test_json_round_trip(state: PRState, version: int) -> None:
    doc = json.loads(json.dumps(state_to_json(state, version=version)))
    assert state_from_json(doc) == (state, version)
