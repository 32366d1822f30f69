"""The ``tcmu-pr`` command line: a small registry of subcommands, argparse underneath.

Subcommands are registered, not hard-wired, so that another module adds ``tcmu-pr daemon`` or
``tcmu-pr bench ring`` without touching the dispatcher: decorate a ``run(args) -> int`` with
:func:`command` in that module and append the module's name to :data:`COMMAND_MODULES`.
Modules are imported when the parser is built, so they keep heavy imports inside ``run``.

Exit status: what ``run`` returns; 2 (with one line on stderr) for a :class:`UsageError` or
a bad argument, as argparse does; 1 for a :class:`CommandFailed`.  The ``pr`` group's output
is a stable contract.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from tcmu_pr import __version__

Run = Callable[[argparse.Namespace], int]
Configure = Callable[[argparse.ArgumentParser], None]

#: Modules whose import registers more subcommands (append yours).
COMMAND_MODULES: list[str] = [
    "tcmu_pr.tools.demo", "tcmu_pr.tools.bench_store", "tcmu_pr.tools.bench_pr",
    "tcmu_pr.tools.bench_ring", "tcmu_pr.tools.bench_cbt",
    "tcmu_pr.lio.commands",
    "tcmu_pr.daemon.main", "tcmu_pr.system.install",
    "tcmu_pr.ublk.commands",
    "tcmu_pr.cbt.commands",
]


class UsageError(Exception):
    """Bad input from the user: reported on one line, exit status 2, nothing changed."""


class CommandFailed(Exception):
    """The command was well formed but could not be carried out (a store failed): exit 1."""


@dataclass(frozen=True, slots=True)
class Command:
    path: tuple[str, ...]  # ("pr", "decode"); a one-word path is a top-level command
    help: str
    run: Run
    configure: Configure | None = None


COMMANDS: dict[tuple[str, ...], Command] = {}
GROUPS: dict[str, str] = {
    "pr": "inspect and change a LU's persistent-reservation state",
    "bench": "measurements",
    "system": "set a gateway host up (systemd, D-Bus)",
    "ublk": "serve a LU's store as a local block device (/dev/ublkbN)",
    "cbt": "change-block tracking of a file LU, for backup tools",
    "snapshot": "copy-on-write snapshots of a file LU",
}


def command(*path: str, help: str, configure: Configure | None = None) -> Callable[[Run], Run]:
    """Register the decorated ``run(args) -> int`` as ``tcmu-pr <path...>``."""
    if not 1 <= len(path) <= 2:
        raise ValueError("a command is 'name' or 'group name'")

    def register(run: Run) -> Run:
        if path in COMMANDS:
            raise ValueError(f"tcmu-pr {' '.join(path)} is registered twice")
        COMMANDS[path] = Command(path, help, run, configure)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as err:
            # One broken optional command must not take `tcmu-pr pr ...` down with it.
            print(f"tcmu-pr: warning: commands of {name} unavailable: {err}", file=sys.stderr)
    parser = argparse.ArgumentParser(
        prog="tcmu-pr",
        description="TCMU handler whose SCSI-3 persistent reservations are shared by every gateway",
    )
    parser.add_argument("--version", action="version", version=f"tcmu-pr {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, cmd in sorted(COMMANDS.items()):
        if len(path) == 1:
            sub = top.add_parser(path[0], help=cmd.help, description=cmd.help)
        else:
            if path[0] not in groups:
                group_help = GROUPS.get(path[0], f"{path[0]} commands")
                gp = top.add_parser(path[0], help=group_help, description=group_help)
                groups[path[0]] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                groups[path[0]].required = True
            sub = groups[path[0]].add_parser(path[1], help=cmd.help, description=cmd.help)
        if cmd.configure is not None:
            cmd.configure(sub)
        sub.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except UsageError as err:
        print(f"tcmu-pr: error: {err}", file=sys.stderr)
        return 2
    except CommandFailed as err:
        print(f"tcmu-pr: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `tcmu-pr pr decode X | head`: the reader left; no traceback, no flush error at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


# -- tcmu-pr pr ... ------------------------------------------------------------------------


def _open_input(name: str) -> BinaryIO:
    if name == "-":
        return sys.stdin.buffer
    try:
        return open(name, "rb")
    except OSError as err:
        raise UsageError(f"cannot open {name}: {err.strerror}") from err


def _read_input(name: str) -> bytes:
    f = _open_input(name)
    try:
        return f.read()
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _configure_decode(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the stored blob ('-' = stdin)")


@command("pr", "decode", help="pr_info blob -> JSON", configure=_configure_decode)
def _pr_decode(args: argparse.Namespace) -> int:
    from tcmu_pr.pr import codec, jsonform

    blob = _read_input(args.file)
    try:
        state, version = codec.decode_versioned(blob)
    except ValueError as err:
        raise UsageError(f"{args.file}: malformed pr_info: {_one_line(err)}") from err
    obj = jsonform.state_to_json(state, version=version)
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    return 0


def _configure_encode(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="JSON_FILE", help="the state as JSON ('-' = stdin)")


@command("pr", "encode", help="JSON -> pr_info blob (NUL included)", configure=_configure_encode)
def _pr_encode(args: argparse.Namespace) -> int:
    from tcmu_pr.pr import codec, jsonform

    raw = _read_input(args.file)
    try:
        obj = json.loads(raw)
        state, version = jsonform.state_from_json(obj)
        blob = codec.encode(state, version=version)
    except (ValueError, TypeError, KeyError) as err:
        raise UsageError(f"{args.file}: bad PR state JSON: {_one_line(err)}") from err
    sys.stdout.buffer.write(blob)
    sys.stdout.buffer.flush()
    return 0


def _hex_arg(text: str) -> bytes:
    cleaned = "".join(text.split())
    cleaned = cleaned.removeprefix("0x")
    try:
        return bytes.fromhex(cleaned)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not hex bytes: {text!r}") from err


def _rtpi_arg(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"relative target port id {value} not in 0..65535")
    return value


def _nexus_arg(text: str):  # type: ignore[no-untyped-def]
    from tcmu_pr.pr.nexus import Nexus, NexusError

    try:
        return Nexus.parse(text)
    except NexusError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from err
    if not 1 <= value <= 300:
        raise argparse.ArgumentTypeError("the ack timeout must be 1..300 seconds")
    return value


def _configure_exec(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="SPEC", help="file:PATH or rbd:POOL/IMAGE")
    p.add_argument("--nexus", required=True, type=_nexus_arg, metavar="NEXUS")
    p.add_argument("--cdb", required=True, type=_hex_arg, metavar="HEX")
    p.add_argument("--data", default=b"", type=_hex_arg, metavar="HEX", help="data-out")
    p.add_argument("--rtpi", type=_rtpi_arg, metavar="N", help="relative target port id")
    p.add_argument("--ack-timeout", type=_seconds_arg, default=5.0, metavar="SECONDS",
                   help="how long a change waits for the gateways serving the LU (default 5)")


def _open_store(text: str, **options: object):  # type: ignore[no-untyped-def]
    """The store a user named (a relative file path is taken from the working directory)."""
    from tcmu_pr.backends import open_store
    from tcmu_pr.backends.base import StoreError, StoreOptions
    from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError

    try:
        return open_store(StoreSpec.parse(text, base=os.getcwd()), StoreOptions(**options))  # type: ignore[arg-type]
    except (StoreSpecError, StoreError) as err:
        raise UsageError(_one_line(err)) from err


@command(
    "pr",
    "exec",
    help="run one CDB through the engine on a store, as a gateway would (a change waits for "
    "every gateway serving the LU; unit attentions are not delivered)",
    configure=_configure_exec,
)
def _pr_exec(args: argparse.Namespace) -> int:
    from tcmu_pr.unit.lu import LogicalUnit

    if not args.cdb:
        raise UsageError("--cdb is empty")
    store = _open_store(args.store, ack_timeout=args.ack_timeout)
    try:
        lu = LogicalUnit(store, serve=False)
        outcome = lu.execute(args.nexus, args.cdb, args.data, rtpi=args.rtpi)
    finally:
        store.close()
    result = {
        "status": outcome.status,
        "sense": None if outcome.sense is None else outcome.sense.hex(),
        "data": None if outcome.data is None else outcome.data.hex(),
    }
    print(json.dumps(result))
    return 0


def _configure_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="SPEC", help="file:PATH or rbd:POOL/IMAGE")


@command("pr", "show", help="the stored PR state as a table", configure=_configure_show)
def _pr_show(args: argparse.Namespace) -> int:
    from tcmu_pr.backends.base import StoreError
    from tcmu_pr.pr import codec
    from tcmu_pr.pr.render import format_state
    from tcmu_pr.pr.state import PRState

    store = _open_store(args.store)
    try:
        blob = store.slot().read()
    except StoreError as err:
        raise CommandFailed(_one_line(err)) from err
    finally:
        store.close()
    try:
        state, version = codec.decode_versioned(blob) if blob else (PRState(), None)
    except ValueError as err:
        raise UsageError(f"{args.store}: malformed pr_info: {_one_line(err)}") from err
    print(f"store           {args.store}")
    print(format_state(state, version=version))
    return 0
