"""GET LBA STATUS (16) (SBC-4): which blocks are mapped and which deallocated.

The answer comes from the backend's allocation map (a file's holes, the extents librbd lists
per object), which may call a block that holds only zeros allocated but never calls a block
that holds data unallocated; so a deallocated descriptor is a promise (the block reads as zeros,
LBPRZ) and a mapped one is "mapped or unknown", which is exactly PROVISIONING STATUS 0h.

Descriptors are computed only as far as the allocation length lets them be returned, and a
command scans at most the backend's ``allocation_scan_limit``: the client continues with a new
STARTING LOGICAL BLOCK ADDRESS (SBC-4: the device server may return less than the allocation
length allows; two identical commands may return different PARAMETER DATA LENGTHs).
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterable, Iterator

from tcmu_pr import scsi
from tcmu_pr.backends.base import DataBackend
from tcmu_pr.emulation.cdb import invalid_field, u
from tcmu_pr.emulation.device import DeviceInfo
from tcmu_pr.scsi import CheckCondition

#: SERVICE ACTION IN (16) service action for GET LBA STATUS (16).
SA_GET_LBA_STATUS = 0x12

# PROVISIONING STATUS.  0h is "mapped or unknown", not 3h "mapped": an RBD object counts as
# allocated from its start, written or not, and SBC-3 hosts know only 0h..2h.
MAPPED = 0x0
DEALLOCATED = 0x1

# REPORT TYPE (SBC-4 sbc4r12 on): which extents the descriptors describe.
REPORT_ALL = 0x00
REPORT_NONZERO = 0x01  # provisioning status other than 0h: deallocated or anchored
REPORT_MAPPED = 0x02
REPORT_DEALLOCATED = 0x03
REPORT_ANCHORED = 0x04
REPORT_UNRECOVERED = 0x10  # may return unrecovered errors: nothing here tracks that

_WANTED: dict[int, frozenset[int]] = {
    REPORT_ALL: frozenset({MAPPED, DEALLOCATED}),
    REPORT_NONZERO: frozenset({DEALLOCATED}),
    REPORT_MAPPED: frozenset({MAPPED}),
    REPORT_DEALLOCATED: frozenset({DEALLOCATED}),
    REPORT_ANCHORED: frozenset(),  # ANC_SUP = 0: no block is ever anchored
    REPORT_UNRECOVERED: frozenset(),
}

# COMPLETION CONDITION (parameter data byte 7, bits 3-1).
COMPLETION_UNKNOWN = 0x0
COMPLETION_ALLOCATION_LENGTH = 0x1
COMPLETION_CAPACITY = 0x3

_RTP = 0x01  # the REPORT TYPE field was processed
_HEADER = 8
_DESCRIPTOR = 16
_MAX_BLOCKS = 0xFFFFFFFF  # NUMBER OF LOGICAL BLOCKS is 32 bits: longer extents are split

#: Descriptors one command returns at most (1 MiB of parameter data), whatever it allows.
MAX_DESCRIPTORS = 1 << 16
#: Extents a filtered report may look at before it stops searching (see ``get_lba_status``).
MAX_EXTENTS_SCANNED = 4 * MAX_DESCRIPTORS

#: (first LBA, number of blocks, provisioning status)
Run = tuple[int, int, int]


def unmap_granularity(backend: DataBackend, block_size: int) -> int:
    """The backend's discard granularity in blocks (at least 1), for the Block Limits page."""
    return max(1, math.ceil(backend.discard_granularity / block_size))


def block_runs(backend: DataBackend, block_size: int, start: int, end: int) -> Iterator[Run]:
    """Maximal runs of equal provisioning status covering blocks [start, end) in order.

    A block is deallocated only when every byte of it is unallocated: allocated byte extents
    are widened to whole blocks (an RBD object may end mid-block), so a block holding data is
    always mapped.
    """
    pos = start  # first block not yet yielded
    mapped: list[int] | None = None  # [first, end) of the mapped run being grown
    for offset, length in backend.allocated(start * block_size, (end - start) * block_size):
        first = max(offset // block_size, start)
        last = min(-(-(offset + length) // block_size), end)
        if last <= first:
            continue
        if mapped is not None and first <= mapped[1]:
            mapped[1] = max(mapped[1], last)
            continue
        if mapped is not None:
            yield mapped[0], mapped[1] - mapped[0], MAPPED
            pos = mapped[1]
        if first > pos:
            yield pos, first - pos, DEALLOCATED
        mapped = [max(first, pos), last]
    if mapped is not None:
        yield mapped[0], mapped[1] - mapped[0], MAPPED
        pos = mapped[1]
    if pos < end:
        yield pos, end - pos, DEALLOCATED


def _split(runs: Iterable[Run]) -> Iterator[Run]:
    """Runs cut to what one descriptor's NUMBER OF LOGICAL BLOCKS can hold."""
    for lba, count, status in runs:
        while count > _MAX_BLOCKS:
            yield lba, _MAX_BLOCKS, status
            lba, count = lba + _MAX_BLOCKS, count - _MAX_BLOCKS
        yield lba, count, status


def _parameter_data(descriptors: list[Run], completion: int, rtp: bool) -> bytes:
    body = b"".join(struct.pack(">QIB3x", *d) for d in descriptors)
    header = struct.pack(">I3xB", 4 + len(body), (completion << 1) | (_RTP if rtp else 0))
    return header + body


def _completion(at_end: bool, full: bool) -> int:
    """Why the list ends: nothing of the kind is left before the medium ends; the allocation
    length was met; or neither (a scan limit), which the client cannot tell from the data."""
    if at_end:
        return COMPLETION_CAPACITY
    if full:
        return COMPLETION_ALLOCATION_LENGTH
    return COMPLETION_UNKNOWN


def get_lba_status(dev: DeviceInfo, backend: DataBackend, cdb: bytes, data_out: bytes) -> bytes:
    """GET LBA STATUS (16) (SBC-4): LBA status descriptors from STARTING LOGICAL BLOCK ADDRESS.

    REPORT TYPE 0 returns contiguous descriptors, the first one starting at the starting LBA
    (SBC-4: "LBA status descriptor relationships").  A filtered REPORT TYPE returns only the
    matching extents at or after it; when the scan stops (scan limit) before any turns up,
    the answer is the unfiltered list with RTP 0 ("the REPORT TYPE field was not processed"),
    so the client learns where to continue instead of an empty list that reads "none left".
    """
    start, allocation, report = u(cdb, 2, 8), u(cdb, 10, 4), cdb[14]
    if report not in _WANTED:
        raise invalid_field()
    if start >= dev.num_lbas:  # SBC-4: starting LBA beyond the capacity of the medium
        raise CheckCondition(scsi.LBA_OUT_OF_RANGE)
    if allocation == 0:  # SPC-4 §4.2.5.6: nothing to transfer, not an error
        return b""
    # Fewer than 24 bytes still get one descriptor's worth of PARAMETER DATA LENGTH, cut by
    # the allocation length (SPC-4: the length field is not adjusted for truncation).
    fits = max(1, (allocation - _HEADER) // _DESCRIPTOR)
    room = min(fits, MAX_DESCRIPTORS)
    wanted = _WANTED[report]
    if not wanted:
        return _parameter_data([], COMPLETION_CAPACITY, True)[:allocation]
    end = dev.num_lbas
    if dev.thin:
        limit = backend.allocation_scan_limit
        if limit is not None:
            end = min(end, start + max(1, limit // dev.block_size))
        runs = _split(block_runs(backend, dev.block_size, start, end))
    else:  # fully provisioned: every block is mapped (SBC-4), whatever the backend holds
        runs = _split([(start, end - start, MAPPED)])

    def reply(found: list[Run], exhausted: bool, rtp: bool) -> bytes:
        at_end = exhausted or (bool(found) and found[-1][0] + found[-1][1] == dev.num_lbas)
        full = len(found) == room == fits
        return _parameter_data(found, _completion(at_end, full), rtp)[:allocation]

    if report == REPORT_ALL:
        return reply(list(itertools.islice(runs, room)), False, True)
    seen: list[Run] = []  # the unfiltered start of the list, should nothing match
    found: list[Run] = []
    looked_to = start
    for scanned, run in enumerate(runs, 1):
        looked_to = run[0] + run[1]
        if len(seen) < room:
            seen.append(run)
        if run[2] in wanted:
            found.append(run)
            if len(found) == room:
                return reply(found, False, True)
        if scanned == MAX_EXTENTS_SCANNED:
            break
    if looked_to == dev.num_lbas:  # nothing else of the kind before the medium ends
        return reply(found, True, True)
    if found:
        return reply(found, False, True)
    return reply(seen, False, False)
