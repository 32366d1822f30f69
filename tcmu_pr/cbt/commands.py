"""``tcmu-pr cbt enable|disable|info|map|diff`` and ``tcmu-pr snapshot ...``: what backup
tools call. Output formats are a contract: ``info`` one JSON object with exactly blksnap's
five fields, ``map`` the raw byte map (``--json``: a list, one change number per block),
``diff`` one ``OFFSET LENGTH`` line per changed extent (``--json``: a list of pairs)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.cli import CommandFailed, UsageError, command


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="file:PATH", help="the LU's image")


def image_of(text: str) -> str:
    try:
        spec = StoreSpec.parse(text, base=os.getcwd())
    except StoreSpecError as err:
        raise UsageError(str(err)) from None
    if not spec.is_file:
        raise UsageError(f"{text}: change-block tracking is for file stores (RBD has fast-diff)")
    if not os.path.exists(spec.path):
        raise UsageError(f"{spec.path}: no such image")
    return spec.path


def _failed(err: OSError) -> CommandFailed:
    return CommandFailed(str(err) if not err.strerror else err.strerror)


def _configure_enable(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument(
        "--block-size",
        type=int,
        metavar="BYTES",
        help="tracking block, a power of two 4096..1048576 (default: from the size)",
    )


@command("cbt", "enable", help="start tracking changed blocks", configure=_configure_enable)
def run_enable(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import geometry, mapfile

    image = image_of(args.store)
    if args.block_size is not None:
        try:
            geometry.check_block_size(args.block_size)
        except geometry.GeometryError as err:
            raise UsageError(str(err)) from None
    try:
        info = mapfile.enable(image, args.block_size)
    except OSError as err:
        raise _failed(err) from None
    print(json.dumps(info.as_json()))
    return 0


@command("cbt", "disable", help="stop tracking (LU not in use)", configure=_store_arg)
def run_disable(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import mapfile

    try:
        mapfile.disable(image_of(args.store))
    except OSError as err:
        raise _failed(err) from None
    return 0


def _open(store: str):  # type: ignore[no-untyped-def]
    from tcmu_pr.cbt import mapfile

    try:
        return mapfile.CbtMap.open(image_of(store), writer=False)
    except OSError as err:
        raise _failed(err) from None


@command("cbt", "info", help="blksnap's CBT info fields as one JSON object", configure=_store_arg)
def run_info(args: argparse.Namespace) -> int:
    with _open(args.store) as m:
        print(json.dumps(m.info().as_json()))
    return 0


def _configure_map(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("--json", action="store_true", help="a JSON list instead of raw bytes")
    p.add_argument("--snapshot", type=int, metavar="N", help="the map frozen by snapshot N")


def _map_of(args: argparse.Namespace) -> tuple[bytes, int, int]:
    """(map bytes, block size, capacity), live or a snapshot's frozen copy."""
    with _open(args.store) as m:
        g = m.geometry
        if args.snapshot is None:
            return m.map_bytes(), g.block_size, g.capacity
    from tcmu_pr.cbt import snapshot

    try:
        with snapshot.Snapshot.open(image_of(args.store), args.snapshot) as s:
            return s.frozen_map(), g.block_size, g.capacity
    except OSError as err:
        raise _failed(err) from None


@command("cbt", "map", help="the change number of every block", configure=_configure_map)
def run_map(args: argparse.Namespace) -> int:
    data, _, _ = _map_of(args)
    if args.json:
        print(json.dumps(list(data)))
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return 0


def _configure_diff(p: argparse.ArgumentParser) -> None:
    _configure_map(p)
    p.add_argument(
        "--since",
        type=int,
        required=True,
        metavar="N",
        help="list blocks whose change number is greater than N (0: all changed)",
    )


@command("cbt", "diff", help="extents changed after change N", configure=_configure_diff)
def run_diff(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import geometry

    if not 0 <= args.since <= 255:
        raise UsageError("--since must be 0..255")
    data, bs, capacity = _map_of(args)
    found = list(geometry.extents(data, args.since, bs, capacity))
    if args.json:
        print(json.dumps(found))
    else:
        for off, length in found:
            print(off, length)
    return 0


# -- tcmu-pr snapshot ... ------------------------------------------------------------------


def _configure_create(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("--diff-limit", type=int, metavar="BYTES",
                   help="difference storage limit (default: the LU's size)")  # fmt: skip


@command(
    "snapshot", "create", help="take a snapshot; prints its number", configure=_configure_create
)
def run_snapshot_create(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import snapshot

    image = image_of(args.store)
    if args.diff_limit is not None and args.diff_limit < 0:
        raise UsageError("--diff-limit must not be negative")
    try:
        info = snapshot.create(image, args.diff_limit)
    except OSError as err:
        raise _failed(err) from None
    print(info.number)
    return 0


@command("snapshot", "list", help="the snapshots as a JSON list", configure=_store_arg)
def run_snapshot_list(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import snapshot

    image = image_of(args.store)
    print(json.dumps([s.as_json() for s in snapshot.listing(image)]))
    return 0


def _configure_number(p: argparse.ArgumentParser) -> None:
    _store_arg(p)
    p.add_argument("--number", type=int, required=True, metavar="N")


def _configure_read(p: argparse.ArgumentParser) -> None:
    _configure_number(p)
    p.add_argument("--offset", type=int, default=0, metavar="BYTES", help="from (default 0)")
    p.add_argument("--length", type=int, metavar="BYTES", help="this much (default: to the end)")


@command("snapshot", "read", help="the point-in-time image to stdout", configure=_configure_read)
def run_snapshot_read(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import snapshot

    image = image_of(args.store)
    if args.offset < 0 or (args.length is not None and args.length < 0):
        raise UsageError("--offset and --length must not be negative")
    out = sys.stdout.buffer
    try:
        snapshot.read(image, args.number, out.write, args.offset, args.length)
    except OSError as err:
        raise _failed(err) from None
    out.flush()
    return 0


@command("snapshot", "delete", help="drop a snapshot and its difference storage",
         configure=_configure_number)  # fmt: skip
def run_snapshot_delete(args: argparse.Namespace) -> int:
    from tcmu_pr.cbt import snapshot

    try:
        snapshot.delete(image_of(args.store), args.number)
    except OSError as err:
        raise _failed(err) from None
    return 0
