"""The ``pr_info`` blob: SUSE's version 1 and our version 2, both strict, both canonical.

Version 1 is what SUSE's target_core_rbd reads and writes; we write it whenever the state
fits, so such peers keep working.  Version 2 keeps v1's line layout and adds what v1
cannot say (ALL_TG_PT, APTPL, relative target port ids, pending unit attentions, up to
2048 registrations); its first line makes a v1-only reader refuse it instead of
misreading it.  docs/format.md is the specification.

Decoding guesses nothing: anything but the exact canonical text raises :class:`BlobError`
naming the 1-based line.  Hence a blob that decodes re-encodes byte for byte (in its own
version), which matters because the raw bytes are the compare-and-swap token.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tcmu_pr.pr.nexus import NEXUS_MAX_LEN, Nexus, NexusError
from tcmu_pr.pr.state import (
    MAX_REGISTRATIONS,
    PR_TYPES,
    PRState,
    Registration,
    Reservation,
    UnitAttention,
)
from tcmu_pr.pr.validate import StateError, check_state

__all__ = [
    "V1_MAX_REGISTRATIONS",
    "V1_MAX_SIZE",
    "V2_MAX_SIZE",
    "BlobError",
    "StateError",
    "TooLargeError",
    "decode",
    "decode_versioned",
    "encode",
    "fits_v1",
    "v1_obstacle",
]

V1 = 1
V2 = 2
#: Bytes including the trailing NUL; SUSE's reader fetches at most this much.
V1_MAX_SIZE = 8192
V2_MAX_SIZE = 2 * 1024 * 1024
#: SUSE's encoder reserves 1067 + 507*n bytes, so a 15th registration fails on its side.
V1_MAX_REGISTRATIONS = 14

NO_SCSI2 = "No SPC-2 Reservation holder"
NO_SCSI3 = "No SPC-3 Reservation holder"
NO_RTPI = "-"

# v2 flag bits; every other bit is reserved and must be 0 (a reader refuses the blob).
STATE_APTPL = 0x1
REG_ALL_TG_PT = 0x1
UA_ALL_TG_PT = 0x1

# Line numbers (1-based) of the fixed header lines.
LINE_VERS, LINE_SCSI2, LINE_RSV = 1, 3, 5

# Fixed-width lowercase hex, as the C side's %08x / %016llx prints it.
_HEX = {digits: re.compile(f"0x[0-9a-f]{{{digits}}}") for digits in (2, 4, 8, 16)}
_NON_ASCII = re.compile(rb"[^\x00-\x7f]")


class BlobError(ValueError):
    """A malformed ``pr_info`` blob; ``line`` is 1-based (None: the blob as a whole)."""

    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(f"line {line}: {reason}" if line is not None else reason)
        self.line = line
        self.reason = reason


class TooLargeError(StateError):
    """A valid state whose blob would exceed the format's size cap (a resource limit)."""


# ---------------------------------------------------------------------------- decoding


class _Lines:
    """The blob's lines with their numbers, consumed in order."""

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self._next = 0

    def take(self, what: str) -> tuple[int, str]:
        if self._next >= len(self._lines):
            raise BlobError(self._next + 1, f"missing {what}: the blob ends here")
        self._next += 1
        return self._next, self._lines[self._next - 1]

    def expect_end(self, after: str) -> None:
        if self._next < len(self._lines):
            raise BlobError(self._next + 1, f"unexpected extra line after {after}")


def _show(text: str) -> str:
    """A line quoted for an error message, cut short: v2 lines may be long."""
    return repr(text) if len(text) <= 120 else repr(text[:117]) + "..."


def _hex(line: int, text: str, digits: int, what: str) -> int:
    if not _HEX[digits].fullmatch(text):
        raise BlobError(
            line, f"bad {what} {_show(text)}: expected 0x and {digits} lowercase hex digits"
        )
    return int(text[2:], 16)


def _nexus(line: int, text: str, version: int) -> Nexus:
    if len(text) > NEXUS_MAX_LEN:
        raise BlobError(line, f"nexus is {len(text)} characters, more than {NEXUS_MAX_LEN}")
    try:
        nexus = Nexus.parse(text)
    except NexusError as e:
        raise BlobError(line, f"bad nexus: {e}") from None
    if version == V1 and not nexus.isid:
        # SUSE's reader would keep it verbatim and match it against no session at all,
        # while we read it as "any ISID": the two would disagree, so v1 never carries it.
        raise BlobError(line, f"empty ISID in {_show(text)}: only version 2 may carry it")
    return nexus


def _fields(line: int, text: str, count: int, what: str) -> list[str]:
    parts = text.split(" ")
    if len(parts) != count:
        raise BlobError(line, f"bad {what} {_show(text)}: expected {count} space-separated fields")
    return parts


def _pr_type(line: int, text: str) -> int:
    value = _hex(line, text, 8, "reservation type")
    if value not in PR_TYPES:
        raise BlobError(line, f"bad reservation type code {value:#x}")
    return value


def _flags(line: int, text: str, known: int, what: str) -> int:
    value = _hex(line, text, 8, what)
    if value & ~known:
        raise BlobError(line, f"unknown {what} bits {value & ~known:#x} (reserved, must be 0)")
    return value


def _header(lines: _Lines, version: int) -> tuple[int, Nexus | None, int, Reservation | None]:
    """Lines 2-5, the same in both versions: seq, SCSI-2 holder, generation, reservation."""
    seq = _hex(*lines.take("seq"), 8, "seq")
    line, text = lines.take("SCSI-2 reservation line")
    scsi2 = None if text == NO_SCSI2 else _nexus(line, text, version)
    gen = _hex(*lines.take("generation"), 8, "generation")
    line, text = lines.take("SCSI-3 reservation line")
    res = None
    if text != NO_SCSI3:
        key, nexus, pr_type = _fields(line, text, 3, "reservation")
        res = Reservation(
            _hex(line, key, 16, "reservation key"),
            _nexus(line, nexus, version),
            _pr_type(line, pr_type),
        )
    return seq, scsi2, gen, res


def _count(lines: _Lines, what: str, top: int) -> tuple[int, int]:
    line, text = lines.take(f"{what} count")
    n = _hex(line, text, 8, f"{what} count")
    if n > top:
        raise BlobError(line, f"{n} {what}, at most {top}")
    return line, n


def _entries(
    lines: _Lines, what: str, n: int, count_line: int, parse: Callable[[int, str], object]
) -> list:
    return [
        parse(*lines.take(f"{what} {i + 1} of {n} (count on line {count_line})")) for i in range(n)
    ]


#: Registration lines seen before (version, text) -> the Registration they decode to.
#: Between two blobs of a LU almost every line is the same, and parsing one (hex fields,
#: nexus syntax) costs ~10 us: a re-read of 2048 registrations would cost ~20 ms.  Only
#: lines that decoded are kept (an error must still name its line); the values are immutable.
_REG_LINES: dict[tuple[int, str], Registration] = {}
_REG_LINES_MAX = 2 * MAX_REGISTRATIONS


def _remember(key: tuple[int, str], reg: Registration) -> Registration:
    if len(_REG_LINES) >= _REG_LINES_MAX:
        _REG_LINES.clear()
    _REG_LINES[key] = reg
    return reg


def _reg_v1(line: int, text: str) -> Registration:
    reg = _REG_LINES.get((V1, text))
    if reg is not None:
        return reg
    key, nexus = _fields(line, text, 2, "registration")
    return _remember((V1, text), Registration(_hex(line, key, 16, "key"), _nexus(line, nexus, V1)))


def _reg_v2(line: int, text: str) -> Registration:
    reg = _REG_LINES.get((V2, text))
    if reg is not None:
        return reg
    key, nexus, flags, rtpi = _fields(line, text, 4, "registration")
    return _remember((V2, text), Registration(
        _hex(line, key, 16, "key"),
        _nexus(line, nexus, V2),
        None if rtpi == NO_RTPI else _hex(line, rtpi, 4, "rtpi"),
        bool(_flags(line, flags, REG_ALL_TG_PT, "registration flag") & REG_ALL_TG_PT),
    ))  # fmt: skip


def _ua_v2(line: int, text: str) -> UnitAttention:
    nexus, asc, ascq, flags = _fields(line, text, 4, "unit attention")
    return UnitAttention(
        _nexus(line, nexus, V2),
        _hex(line, asc, 2, "ASC"),
        _hex(line, ascq, 2, "ASCQ"),
        bool(_flags(line, flags, UA_ALL_TG_PT, "unit attention flag") & UA_ALL_TG_PT),
    )


def _decode_v1(lines: _Lines) -> tuple[PRState, dict[str, int]]:
    seq, scsi2, gen, res = _header(lines, V1)
    count_line, n = _count(lines, "registrations", MAX_REGISTRATIONS)
    regs = tuple(_entries(lines, "registration", n, count_line, _reg_v1))
    lines.expect_end(f"the {n} registrations counted on line {count_line}")
    # v1 has no APTPL bit: SUSE forced it on, so it is on exactly while keys exist.
    state = PRState(seq, gen, scsi2, res, regs, aptpl=bool(regs))
    return state, {"registrations": count_line + 1}


def _decode_v2(lines: _Lines) -> tuple[PRState, dict[str, int]]:
    seq, scsi2, gen, res = _header(lines, V2)
    state_flags = _flags(*lines.take("state flags"), STATE_APTPL, "state flag")
    reg_line, n = _count(lines, "registrations", MAX_REGISTRATIONS)
    regs = tuple(_entries(lines, "registration", n, reg_line, _reg_v2))
    ua_line, m = _count(lines, "unit attentions", 0xFFFFFFFF)
    uas = tuple(_entries(lines, "unit attention", m, ua_line, _ua_v2))
    lines.expect_end(f"the {m} unit attentions counted on line {ua_line}")
    state = PRState(seq, gen, scsi2, res, regs, bool(state_flags & STATE_APTPL), uas)
    return state, {"registrations": reg_line + 1, "unit_attentions": ua_line + 1}


def _line_of(path: str, starts: dict[str, int]) -> int | None:
    """Map a :class:`StateError` path to the blob line that holds the field."""
    head = path.split(".")[0]
    if head.startswith("scsi2_holder"):
        return LINE_SCSI2
    if head.startswith("reservation"):
        return LINE_RSV
    name, _, index = head.partition("[")
    if name in starts and index:
        return starts[name] + int(index.rstrip("]"))
    return None


def _text(blob: bytes) -> str:
    """The blob's text after the byte-level checks (size, NUL, ASCII, final newline)."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise TypeError(f"blob must be bytes, not {type(blob).__name__}")
    body = bytes(blob)
    if body.endswith(b"\0"):
        body = body[:-1]
    if len(body) + 1 > V2_MAX_SIZE:
        raise BlobError(None, f"blob is {len(body) + 1} bytes with its NUL, over {V2_MAX_SIZE}")
    if not body:
        raise BlobError(LINE_VERS, "empty blob: no version line")
    nul = body.find(b"\0")
    if nul >= 0:
        raise BlobError(body.count(b"\n", 0, nul) + 1, f"NUL byte inside the blob at offset {nul}")
    bad = _NON_ASCII.search(body)
    if bad:
        at = bad.start()
        raise BlobError(body.count(b"\n", 0, at) + 1, f"non-ASCII byte {body[at]:#04x}")
    text = body.decode("ascii")
    if not text.endswith("\n"):
        raise BlobError(text.count("\n") + 1, "missing final newline")
    return text


def decode_versioned(blob: bytes) -> tuple[PRState, int]:
    """Decode a stored blob (trailing NUL optional) into its state and format version."""
    text = _text(blob)
    lines = _Lines(text[:-1].split("\n"))
    version = _hex(*lines.take("version"), 8, "version")
    if version not in (V1, V2):
        raise BlobError(LINE_VERS, f"unsupported version {version} (this reader knows 1 and 2)")
    size = len(text) + 1
    if version == V1 and size > V1_MAX_SIZE:
        raise BlobError(LINE_VERS, f"version 1 blob is {size} bytes with its NUL, over 8192")
    state, starts = _decode_v1(lines) if version == V1 else _decode_v2(lines)
    try:
        check_state(state)
    except StateError as e:
        raise BlobError(_line_of(e.path, starts), str(e)) from None
    return state, version


def decode(blob: bytes) -> PRState:
    """Decode a stored blob; raises :class:`BlobError` (a ValueError) naming the line."""
    return decode_versioned(blob)[0]


# ---------------------------------------------------------------------------- encoding


def _rsv_line(res: Reservation | None) -> str:
    if res is None:
        return NO_SCSI3
    return f"0x{res.key:016x} {res.nexus} 0x{res.type:08x}"


def _header_lines(version: int, state: PRState) -> list[str]:
    holder = state.scsi2_holder
    return [
        f"0x{version:08x}",
        f"0x{state.seq:08x}",
        NO_SCSI2 if holder is None else str(holder),
        f"0x{state.generation:08x}",
        _rsv_line(state.reservation),
    ]


def _finish(lines: list[str]) -> bytes:
    lines.append("")  # every line, the last included, ends in a newline
    return "\n".join(lines).encode("ascii") + b"\0"


def _encode_v1(state: PRState) -> bytes:
    lines = _header_lines(V1, state)
    lines.append(f"0x{len(state.registrations):08x}")
    lines.extend(f"0x{r.key:016x} {r.nexus}" for r in state.registrations)
    return _finish(lines)


def _encode_v2(state: PRState) -> bytes:
    lines = _header_lines(V2, state)
    lines.append(f"0x{STATE_APTPL if state.aptpl else 0:08x}")
    lines.append(f"0x{len(state.registrations):08x}")
    for r in state.registrations:
        rtpi = NO_RTPI if r.rtpi is None else f"0x{r.rtpi:04x}"
        flags = REG_ALL_TG_PT if r.all_tg_pt else 0
        lines.append(f"0x{r.key:016x} {r.nexus} 0x{flags:08x} {rtpi}")
    lines.append(f"0x{len(state.unit_attentions):08x}")
    for ua in state.unit_attentions:
        flags = UA_ALL_TG_PT if ua.all_tg_pt else 0
        lines.append(f"{ua.nexus} 0x{ua.asc:02x} 0x{ua.ascq:02x} 0x{flags:08x}")
    return _finish(lines)


def _v1_shape_obstacle(state: PRState) -> StateError | None:
    """What keeps a valid state out of v1, size aside; None when nothing does."""
    regs = state.registrations
    if state.unit_attentions:
        return StateError("unit_attentions", "version 1 cannot hold pending unit attentions")
    if len(regs) > V1_MAX_REGISTRATIONS:
        return StateError(
            "registrations",
            f"{len(regs)} registrations; version 1 holds at most {V1_MAX_REGISTRATIONS} "
            "(a SUSE peer must be able to re-encode them in 8192 bytes)",
        )
    if state.aptpl != bool(regs):
        return StateError("aptpl", "version 1 implies APTPL on exactly while registrations exist")
    if state.scsi2_holder is not None and not state.scsi2_holder.isid:
        return StateError("scsi2_holder", "version 1 cannot hold an empty ISID")
    if state.reservation is not None and not state.reservation.nexus.isid:
        return StateError("reservation.nexus", "version 1 cannot hold an empty ISID")
    for i, r in enumerate(regs):
        if r.all_tg_pt:
            return StateError(f"registrations[{i}].all_tg_pt", "version 1 cannot hold ALL_TG_PT")
        if r.rtpi is not None:
            return StateError(
                f"registrations[{i}].rtpi", "version 1 cannot hold a relative target port id"
            )
        if not r.nexus.isid:
            return StateError(f"registrations[{i}].nexus", "version 1 cannot hold an empty ISID")
    return None


def _v1_size_obstacle(blob: bytes) -> StateError | None:
    if len(blob) > V1_MAX_SIZE:
        return TooLargeError("", f"version 1 blob would be {len(blob)} bytes, over {V1_MAX_SIZE}")
    return None


def v1_obstacle(state: PRState) -> StateError | None:
    """Why ``state`` cannot be written as version 1 (invalid states included), or None."""
    try:
        check_state(state)
    except StateError as e:
        return e
    return _v1_shape_obstacle(state) or _v1_size_obstacle(_encode_v1(state))


def fits_v1(state: PRState) -> bool:
    """Whether ``state`` is valid and a version 1 blob (and so a SUSE peer) holds all of it."""
    return v1_obstacle(state) is None


def encode(state: PRState, *, version: int | None = None) -> bytes:
    """The stored bytes for ``state``, trailing NUL included.

    Without ``version``, v1 when :func:`fits_v1` (so v1 peers keep working), else v2.
    Raises :class:`StateError` (a ValueError) for a state that is invalid in itself, that
    the forced version cannot hold, or whose v2 text would exceed 2 MiB.
    """
    if version not in (None, V1, V2):
        raise ValueError(f"unknown blob version {version!r} (1 or 2)")
    check_state(state)
    if version != V2:
        problem = _v1_shape_obstacle(state)
        if problem is None:
            blob = _encode_v1(state)
            problem = _v1_size_obstacle(blob)
            if problem is None:
                return blob
        if version == V1:
            raise problem
    blob = _encode_v2(state)
    if len(blob) > V2_MAX_SIZE:
        raise TooLargeError("", f"version 2 blob would be {len(blob)} bytes, over {V2_MAX_SIZE}")
    return blob
