"""The pr_info codec: SUSE's v1 byte for byte, our v2, strict decoding, state validity."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import pr_states

from tcmu_pr.pr.codec import (
    V1_MAX_SIZE,
    V2_MAX_SIZE,
    BlobError,
    StateError,
    TooLargeError,
    decode,
    decode_versioned,
    encode,
    fits_v1,
    v1_obstacle,
)
from tcmu_pr.pr.nexus import NEXUS_MAX_LEN, Nexus
from tcmu_pr.pr.state import (
    MAX_REGISTRATIONS,
    PRState,
    Registration,
    Reservation,
    UnitAttention,
)
from tcmu_pr.pr.validate import check_state


def budget(examples: int) -> settings:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


CLIENT = "iqn.1994-05.com.redhat:client1"
GW = "iqn.2003-01.org.linux-iscsi.gw:rbd"
N1 = f"{CLIENT},i,0x23d000001,{GW},t,0x1"
N2 = f"{CLIENT},i,0x23d000001,{GW},t,0x2"
N3 = f"iqn.1994-05.com.redhat:client2,i,0x23d000002,{GW},t,0x1"

# REFERENCE.md §1, line by line (line numbers in errors are 1-based).
EXAMPLE_LINES = [
    "0x00000001",
    "0x00000007",
    "No SPC-2 Reservation holder",
    "0x00000003",
    f"0x0000000000abc123 {N1} 0x00000005",
    "0x00000002",
    f"0x0000000000abc123 {N1}",
    f"0x0000000000abc123 {N2}",
]


def blob_of(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode() + b"\0"


EXAMPLE = blob_of(EXAMPLE_LINES)


def with_line(lineno: int, text: str, lines: list[str] = EXAMPLE_LINES) -> list[str]:
    out = list(lines)
    out[lineno - 1] = text
    return out


def long_nexus(tag: str, length: int = NEXUS_MAX_LEN) -> str:
    tail = f",i,0x1,{GW},t,0x1"
    head = f"iqn.2024-01.org.example:{tag}-"
    return head + "x" * (length - len(head) - len(tail)) + tail


def suse_read(blob: bytes) -> dict:
    """A strict stand-in for SUSE's v1 reader (tcm_rbd_pr_info_decode): strsep on newlines
    up to the first empty field, sscanf-like fields, ``vers`` must be 1."""
    text = blob.split(b"\0", 1)[0].decode("ascii")
    fields = []
    for field in text.split("\n"):
        if not field:
            break
        fields.append(field)
    if len(fields) < 6:
        raise ValueError("missing basic fields")
    u32 = re.compile(r"0x([0-9a-fA-F]{1,8})")
    if not (m := u32.match(fields[0])) or int(m[1], 16) != 1:
        raise ValueError(f"unsupported PR info version: {fields[0]}")
    info = {"seq": int(u32.match(fields[1])[1], 16), "gen": int(u32.match(fields[3])[1], 16)}
    info["scsi2"] = None if fields[2] == "No SPC-2 Reservation holder" else fields[2]
    if len(fields[2]) >= 484:
        raise ValueError("SCSI-2 nexus too long")
    rsv = re.compile(r"0x([0-9a-fA-F]{1,16}) (\S{1,484}) 0x([0-9a-fA-F]{1,8})")
    if fields[4] == "No SPC-3 Reservation holder":
        info["rsv"] = None
    elif m := rsv.match(fields[4]):
        info["rsv"] = (int(m[1], 16), m[2], int(m[3], 16))
    else:
        raise ValueError("failed to parse PR rsv")
    reg = re.compile(r"0x([0-9a-fA-F]{1,16}) (\S{1,484})")
    info["regs"] = [(int(m[1], 16), m[2]) for f in fields[6:] if (m := reg.match(f))]
    if len(info["regs"]) != len(fields) - 6 or len(fields) - 6 != int(fields[5], 16):
        raise ValueError("registration count mismatch")
    return info


# ------------------------------------------------------------------------- v1 exactness


def test_reference_example_round_trips_byte_for_byte() -> None:
    state, version = decode_versioned(EXAMPLE)
    assert version == 1
    assert state.seq == 7 and state.generation == 3 and state.scsi2_holder is None
    assert state.reservation == Reservation(0xABC123, Nexus.parse(N1), 5)
    assert [str(r.nexus) for r in state.registrations] == [N1, N2]
    assert state.aptpl is True and state.unit_attentions == ()
    assert all(r.rtpi is None and not r.all_tg_pt for r in state.registrations)
    assert encode(state) == EXAMPLE
    assert EXAMPLE.endswith(b"\n\0")
    assert decode(EXAMPLE[:-1]) == state  # the NUL is optional on input


def test_empty_state_is_v1_with_the_two_literals() -> None:
    expected = (
        b"0x00000001\n0x00000000\nNo SPC-2 Reservation holder\n0x00000000\n"
        b"No SPC-3 Reservation holder\n0x00000000\n\0"
    )
    assert encode(PRState()) == expected
    assert decode(expected) == PRState()


def test_suse_reader_reads_our_v1_and_refuses_our_v2() -> None:
    state = decode(EXAMPLE)
    info = suse_read(encode(state))
    assert info["rsv"] == (0xABC123, N1, 5) and info["regs"] == [(0xABC123, N1), (0xABC123, N2)]
    with pytest.raises(ValueError, match="unsupported PR info version"):
        suse_read(encode(state, version=2))


# ------------------------------------------------------------------- malformed blobs

TOO_MANY_LONG = [
    *EXAMPLE_LINES[:4],
    "No SPC-3 Reservation holder",
    "0x00000011",
    *(f"0x{i:016x} {long_nexus(str(i))}" for i in range(17)),
]

MALFORMED = {
    # id: (blob, line, fragment of the reason)
    "unknown-version": (blob_of(with_line(1, "0x00000003")), 1, "unsupported version 3"),
    "version-zero": (blob_of(with_line(1, "0x00000000")), 1, "unsupported version 0"),
    "version-not-hex": (blob_of(with_line(1, "version 1")), 1, "bad version"),
    "bad-hex": (blob_of(with_line(2, "0x0000000g")), 2, "bad seq"),
    "uppercase-hex": (blob_of(with_line(4, "0x0000000A")), 4, "lowercase hex"),
    "short-hex": (blob_of(with_line(2, "0x7")), 2, "8 lowercase hex digits"),
    "long-hex": (blob_of(with_line(6, "0x000000002")), 6, "registrations count"),
    "key-15-digits": (blob_of(with_line(7, f"0x000000000abc123 {N1}")), 7, "bad key"),
    "too-few-registrations": (blob_of(with_line(6, "0x00000003")), 9, "registration 3 of 3"),
    "extra-line": (blob_of(with_line(6, "0x00000001")), 8, "unexpected extra line"),
    "count-over-max": (
        blob_of([*EXAMPLE_LINES[:5], "0x00000801"]),
        6,
        f"at most {MAX_REGISTRATIONS}",
    ),
    "overlong-nexus": (
        blob_of(with_line(7, f"0x0000000000abc123 {long_nexus('a', NEXUS_MAX_LEN + 1)}")),
        7,
        "484 characters",
    ),
    "malformed-nexus": (blob_of(with_line(3, f"{CLIENT},i,0x1,{GW}")), 3, "bad nexus"),
    "tpgt-without-0x": (blob_of(with_line(8, f"0x0000000000abc123 {N2[:-3]}2")), 8, "bad nexus"),
    "bad-type-code": (blob_of(with_line(5, f"0x0000000000abc123 {N1} 0x00000002")), 5, "type code"),
    "reservation-two-fields": (blob_of(with_line(5, f"0x0000000000abc123 {N1}")), 5, "3 space"),
    "double-space": (blob_of(with_line(7, f"0x0000000000abc123  {N1}")), 7, "2 space"),
    "oversized-v1": (blob_of(TOO_MANY_LONG), 1, f"over {V1_MAX_SIZE}"),
    "non-ascii": (blob_of(with_line(3, N1.replace("redhat", "r\u00e9dhat"))), 3, "non-ASCII"),
    "nul-inside": (EXAMPLE.replace(b"0x00000003\n", b"0x000\x0000003\n"), 4, "NUL"),
    "two-trailing-nuls": (EXAMPLE + b"\0", 9, "NUL"),
    "missing-final-newline": (EXAMPLE[:-2] + b"\0", 8, "final newline"),
    "empty-line": (blob_of([*EXAMPLE_LINES[:4], "", *EXAMPLE_LINES[4:]]), 5, "reservation"),
    "crlf": (EXAMPLE.replace(b"\n", b"\r\n"), 1, "bad version"),
    "empty-blob": (b"", 1, "empty blob"),
    "only-nul": (b"\0", 1, "empty blob"),
    "truncated-header": (blob_of(EXAMPLE_LINES[:3]), 4, "missing generation"),
    "empty-isid-in-v1": (
        blob_of(with_line(8, f"0x0000000000abc123 {CLIENT},i,0x,{GW},t,0x2")),
        8,
        "empty ISID",
    ),
    "duplicate-registration": (blob_of(with_line(8, EXAMPLE_LINES[6])), 8, "same I_T nexus"),
    "reservation-not-registered": (
        blob_of(with_line(5, f"0x0000000000abc123 {N1.replace('0x1', '0x9')} 0x00000005")),
        5,
        "not registered",
    ),
}

ZERO = "0x00000000"
V2_LINES = [
    "0x00000002",
    "0x00000007",
    "No SPC-2 Reservation holder",
    "0x00000003",
    f"0x0000000000abc123 {N1} 0x00000005",
    "0x00000001",
    "0x00000002",
    f"0x0000000000abc123 {N1} 0x00000000 0x0001",
    f"0x0000000000def456 {N3} 0x00000001 -",
    "0x00000001",
    f"{N3} 0x2a 0x03 0x00000000",
]

MALFORMED_V2 = {
    "state-flag-reserved": (blob_of(with_line(6, "0x00000002", V2_LINES)), 6, "state flag bits"),
    "reg-flag-reserved": (
        blob_of(with_line(9, f"0x0000000000def456 {N3} 0x00000100 -", V2_LINES)),
        9,
        "registration flag bits",
    ),
    "rtpi-digits": (
        blob_of(with_line(8, f"0x0000000000abc123 {N1} 0x00000000 0x1", V2_LINES)),
        8,
        "bad rtpi",
    ),
    "v1-style-registration": (
        blob_of(with_line(8, f"0x0000000000abc123 {N1}", V2_LINES)),
        8,
        "4 space",
    ),
    "missing-ua-count": (blob_of(V2_LINES[:9]), 10, "missing unit attentions count"),
    "ua-too-few": (blob_of(with_line(10, "0x00000002", V2_LINES)), 12, "unit attention 2 of 2"),
    "ua-bad-asc": (blob_of(with_line(11, f"{N3} 0x2a0 0x03 0x00000000", V2_LINES)), 11, "ASC"),
    "ua-extra-line": (blob_of([*V2_LINES, "junk"]), 12, "unexpected extra line"),
    "all-registrants-without-registrations": (
        blob_of([*with_line(5, f"0x0000000000000000 {N1} 0x00000007", V2_LINES)[:6], ZERO, ZERO]),
        5,
        "without registrations",
    ),
    "duplicate-via-all-tg-pt": (
        blob_of(with_line(9, f"0x0000000000abc123 {N2} 0x00000001 -", V2_LINES)),
        9,
        "same I_T nexus",
    ),
}


@pytest.mark.parametrize(
    ("blob", "line", "fragment"),
    list({**MALFORMED, **MALFORMED_V2}.values()),
    ids=list({**MALFORMED, **MALFORMED_V2}),
)
def test_malformed_blob_names_the_line(blob: bytes, line: int, fragment: str) -> None:
    with pytest.raises(BlobError) as info:
        decode(blob)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert fragment in str(info.value)


def test_v2_sample_decodes() -> None:
    """The base of the v2 cases above is itself valid, so each case breaks one thing."""
    state, version = decode_versioned(blob_of(V2_LINES))
    assert version == 2 and state.aptpl and len(state.unit_attentions) == 1
    assert state.registrations[0].rtpi == 1 and state.registrations[1].all_tg_pt
    assert encode(state) == blob_of(V2_LINES)


def test_blob_over_two_mib_is_refused_before_parsing() -> None:
    blob = b"0x00000002\n" + b"x" * V2_MAX_SIZE + b"\n\0"
    with pytest.raises(BlobError, match=f"over {V2_MAX_SIZE}"):
        decode(blob)


def test_decode_wants_bytes() -> None:
    with pytest.raises(TypeError):
        decode(EXAMPLE.decode())  # type: ignore[arg-type]


# ------------------------------------------------------------------------ state validity

REG1 = Registration(1, Nexus.parse(N1))
REG2 = Registration(2, Nexus.parse(N2))
EMPTY_ISID = Nexus.parse(f"{CLIENT},i,0x,{GW},t,0x1")

INVALID = {
    "duplicate": (PRState(registrations=(REG1, REG1)), "registrations[1]"),
    "empty-isid-covers": (
        PRState(registrations=(REG1, Registration(3, EMPTY_ISID))),
        "registrations[1]",
    ),
    "all-tg-pt-covers": (
        PRState(registrations=(REG2, Registration(3, REG1.nexus, all_tg_pt=True))),
        "registrations[1]",
    ),
    "reservation-unregistered": (
        PRState(reservation=Reservation(1, REG2.nexus, 1), registrations=(REG1,)),
        "reservation.nexus",
    ),
    "all-registrants-empty": (PRState(reservation=Reservation(0, REG1.nexus, 8)), "reservation"),
    "type-2": (
        PRState(reservation=Reservation(1, REG1.nexus, 2), registrations=(REG1,)),
        "reservation.type",
    ),
    "key-over-u64": (PRState(registrations=(Registration(2**64, REG1.nexus),)), "].key"),
    "key-negative": (PRState(registrations=(Registration(-1, REG1.nexus),)), "].key"),
    "key-bool": (PRState(registrations=(Registration(True, REG1.nexus),)), "].key"),
    "seq-over-u32": (PRState(seq=2**32), "seq"),
    "generation-negative": (PRState(generation=-1), "generation"),
    "rtpi-over-u16": (PRState(registrations=(Registration(1, REG1.nexus, 0x10000),)), "rtpi"),
    "asc-over-u8": (PRState(unit_attentions=(UnitAttention(REG1.nexus, 256, 0),)), "asc"),
    "aptpl-not-bool": (PRState(aptpl=1), "aptpl"),  # type: ignore[arg-type]
    "nexus-not-nexus": (PRState(scsi2_holder=N1), "scsi2_holder"),  # type: ignore[arg-type]
    "registrations-list": (PRState(registrations=[REG1]), "registrations"),  # type: ignore[arg-type]
    "too-many": (
        PRState(
            registrations=tuple(
                Registration(1, Nexus.make(f"iqn.x:{i}", GW)) for i in range(MAX_REGISTRATIONS + 1)
            )
        ),
        "registrations",
    ),
}


@pytest.mark.parametrize(("state", "path"), list(INVALID.values()), ids=list(INVALID))
def test_encode_rejects_invalid_state(state: PRState, path: str) -> None:
    with pytest.raises(StateError, match=re.escape(path)):
        encode(state)
    with pytest.raises(StateError):
        encode(state, version=2)
    assert not fits_v1(state)


def test_all_registrants_reservation_outlives_its_reserver() -> None:
    """SUSE keeps a type 7/8 reservation when the reserving nexus unregisters."""
    state = PRState(reservation=Reservation(0, REG1.nexus, 7), registrations=(REG2,), aptpl=True)
    assert fits_v1(state)
    assert decode(encode(state)) == state


# ------------------------------------------------------------------------ v1 or v2

NOT_V1 = {
    "all-tg-pt": (
        PRState(registrations=(Registration(1, REG1.nexus, all_tg_pt=True),), aptpl=True),
        "registrations[0].all_tg_pt",
    ),
    "rtpi": (PRState(registrations=(Registration(1, REG1.nexus, 2),), aptpl=True), "rtpi"),
    "unit-attention": (
        PRState(unit_attentions=(UnitAttention(REG1.nexus, 0x2A, 0x03),)),
        "unit_attentions",
    ),
    "aptpl-off-with-keys": (PRState(registrations=(REG1,), aptpl=False), "aptpl"),
    "aptpl-on-without-keys": (PRState(aptpl=True), "aptpl"),
    "empty-isid-registration": (
        PRState(registrations=(Registration(1, EMPTY_ISID),), aptpl=True),
        "registrations[0].nexus",
    ),
    "empty-isid-scsi2": (PRState(scsi2_holder=EMPTY_ISID), "scsi2_holder"),
    "empty-isid-reservation": (
        PRState(reservation=Reservation(1, EMPTY_ISID, 7), registrations=(REG1,), aptpl=True),
        "reservation.nexus",
    ),
    "fifteen-registrations": (
        PRState(
            registrations=tuple(Registration(i, Nexus.make(f"iqn.x:{i}", GW)) for i in range(15)),
            aptpl=True,
        ),
        "at most 14",
    ),
}


@pytest.mark.parametrize(("state", "why"), list(NOT_V1.values()), ids=list(NOT_V1))
def test_state_beyond_v1_is_written_as_v2(state: PRState, why: str) -> None:
    assert not fits_v1(state)
    assert why in str(v1_obstacle(state))
    with pytest.raises(StateError, match=re.escape(why)):
        encode(state, version=1)
    blob = encode(state)
    assert blob.startswith(b"0x00000002\n")
    assert decode_versioned(blob) == (state, 2)


def test_fourteen_longest_nexuses_fit_v1_and_fifteen_do_not() -> None:
    regs = tuple(Registration(2**64 - 1, Nexus.parse(long_nexus(str(i)))) for i in range(15))
    fits = PRState(seq=2**32 - 1, registrations=regs[:14], aptpl=True)
    blob = encode(fits)
    assert blob.startswith(b"0x00000001\n") and len(blob) <= V1_MAX_SIZE
    suse_read(blob)
    assert not fits_v1(PRState(registrations=regs, aptpl=True))


def test_v1_blob_with_fifteen_short_registrations_is_read_and_rewritten_as_v2() -> None:
    """No SUSE peer writes one, but it is well formed: read it rather than lock the LU."""
    lines = ["0x00000001", "0x00000001", EXAMPLE_LINES[2], "0x00000000", EXAMPLE_LINES[2]]
    lines[4] = "No SPC-3 Reservation holder"
    regs = [f"0x{i:016x} iqn.x:{i},i,0x1,{GW},t,0x1" for i in range(15)]
    state = decode(blob_of([*lines, "0x0000000f", *regs]))
    assert len(state.registrations) == 15
    assert encode(state).startswith(b"0x00000002\n")


def test_encode_refuses_unknown_version() -> None:
    with pytest.raises(ValueError, match="unknown blob version"):
        encode(PRState(), version=3)


# ------------------------------------------------------------------------ scale


def _big_state(nexus_len: int | None = None) -> PRState:
    regs = []
    for i in range(MAX_REGISTRATIONS):
        if nexus_len is None:
            nexus = Nexus.make(f"iqn.2024-01.com.example:host{i}", GW, isid=0x23D000000 + i)
        else:
            nexus = Nexus.parse(long_nexus(str(i), nexus_len))
        regs.append(Registration(i * 0x9E3779B97F4A7C15 % 2**64, nexus, i % 5 or None, i % 3 == 0))
    uas = tuple(UnitAttention(r.nexus, 0x2A, 0x05, r.all_tg_pt) for r in regs[:64])
    return PRState(9, 4, None, Reservation(1, regs[1].nexus, 5), tuple(regs), True, uas)


def test_v2_holds_2048_registrations_quickly() -> None:
    state = _big_state()
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        blob = encode(state)
        decoded = decode(blob)
        timings.append(time.perf_counter() - start)
    assert decoded == state
    assert blob.startswith(b"0x00000002\n")
    assert min(timings) < 0.050, f"decode+encode of 2048 registrations took {min(timings):.3f}s"


def test_2048_longest_nexuses_stay_under_two_mib() -> None:
    state = _big_state(NEXUS_MAX_LEN)
    blob = encode(state)
    assert len(blob) <= V2_MAX_SIZE
    assert decode(blob) == state


def test_v2_over_two_mib_is_a_size_error() -> None:
    big = _big_state(NEXUS_MAX_LEN)
    uas = tuple(UnitAttention(r.nexus, 0x2A, 0x03) for r in big.registrations) * 2
    with pytest.raises(TooLargeError, match="bytes, over"):
        encode(PRState(registrations=big.registrations, unit_attentions=uas))


@pytest.mark.parametrize("version", [1, 2])
def test_examples_in_the_format_doc_round_trip(version: int) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "format.md").read_text()
    match = re.search(f"<!-- example:v{version} -->\n```text\n(.*?)```", doc, re.DOTALL)
    assert match, f"docs/format.md lost its v{version} example"
    blob = match[1].encode() + b"\0"
    state, got = decode_versioned(blob)
    assert got == version
    assert encode(state) == blob


# ------------------------------------------------------------------------ properties


@budget(600)
@given(pr_states(v1=True, max_registrations=14))
def test_v1_states_round_trip_as_v1(state: PRState) -> None:
    blob = encode(state)
    assert blob.startswith(b"0x00000001\n") and len(blob) <= V1_MAX_SIZE
    assert decode_versioned(blob) == (state, 1)
    info = suse_read(blob)  # and a SUSE peer reads the same thing
    assert info["seq"] == state.seq and len(info["regs"]) == len(state.registrations)


@budget(800)
@given(pr_states())
def test_any_state_round_trips_and_v1_is_chosen_iff_it_fits(state: PRState) -> None:
    check_state(state)  # the strategy only draws valid states
    blob = encode(state)
    decoded, version = decode_versioned(blob)
    assert decoded == state
    assert (version == 1) == fits_v1(state)
    assert encode(decoded) == blob
    forced = encode(state, version=2)
    assert decode(forced) == state and encode(decode(forced), version=2) == forced
    if version == 2:
        with pytest.raises(ValueError, match="unsupported PR info version"):
            suse_read(blob)


@budget(1200)
@given(pr_states(), st.integers(0, 2**16), st.sampled_from(("flip", "drop", "insert")), st.data())
def test_mutated_blob_is_refused_or_read_exactly(
    state: PRState, where: int, how: str, data: st.DataObject
) -> None:
    """Nothing is guessed: a damaged blob either fails with BlobError or is canonical."""
    blob = bytearray(encode(state, version=data.draw(st.sampled_from((None, 2)))))
    at = where % len(blob)
    byte = data.draw(st.sampled_from(b"0 1ax\n,\x00\xff"))
    if how == "flip":
        blob[at] = byte
    elif how == "drop":
        del blob[at]
    else:
        blob.insert(at, byte)
    try:
        decoded, version = decode_versioned(bytes(blob))
    except BlobError:
        return
    body = bytes(blob) if blob.endswith(b"\0") else bytes(blob) + b"\0"
    if version == 2 or fits_v1(decoded):
        assert encode(decoded, version=version) == body
