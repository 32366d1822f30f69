"""``tcmu-pr ublk add|del|list|recover``: the command line of the ublk frontend.

``add`` checks everything it can before a device exists (store, size, queues, depth), then
starts a server process and waits on a pipe for its word: the device's path once START_DEV
is done, or the reason it failed, after which no device is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time

from tcmu_pr.cli import CommandFailed, UsageError, command
from tcmu_pr.ublk import registry

#: UBLK_MAX_QUEUE_DEPTH of the uapi (the kernel refuses a deeper queue).
MAX_DEPTH = 4096
BLOCK_SIZES = (512, 1024, 2048, 4096)


def _device_arg(text: str) -> int:
    m = re.fullmatch(r"(?:/dev/)?(?:ublk[bc]?)?(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a ublk device: {text!r} (expected /dev/ublkbN)")
    return int(m.group(1))


def _configure_add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="SPEC", help="file:PATH or rbd:POOL/IMAGE")
    p.add_argument("--queues", type=int, default=1, metavar="N", help="hardware queues (1)")
    p.add_argument("--depth", type=int, default=64, metavar="N", help="queue depth (64)")
    p.add_argument("--block-size", type=int, default=512, metavar="BYTES",
                   help="logical block size (512)")  # fmt: skip
    p.add_argument("--nexus", metavar="NEXUS",
                   help="the device's I_T nexus in the PR state (default "
                   "ublk:<hostname>,i,0x0,ublk:<hostname>,t,0x1)")  # fmt: skip


def _check_add(args: argparse.Namespace) -> tuple[str, str]:
    """Everything that can be refused before a device exists; (store, nexus) as text."""
    from tcmu_pr.backends import open_store
    from tcmu_pr.backends.base import StoreError
    from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
    from tcmu_pr.pr.nexus import Nexus, NexusError
    from tcmu_pr.ublk.server import default_nexus

    cpus = os.cpu_count() or 1
    if not 1 <= args.queues <= min(cpus, 64):
        raise UsageError(f"--queues {args.queues}: must be 1..{min(cpus, 64)} (CPUs here)")
    if not 1 <= args.depth <= MAX_DEPTH:
        raise UsageError(f"--depth {args.depth}: the kernel's limit is 1..{MAX_DEPTH}")
    if args.block_size not in BLOCK_SIZES:
        raise UsageError(f"--block-size {args.block_size}: one of {BLOCK_SIZES}")
    try:
        nexus = Nexus.parse(args.nexus) if args.nexus else default_nexus()
    except NexusError as err:
        raise UsageError(str(err)) from err
    try:
        spec = StoreSpec.parse(args.store, base=os.getcwd())
        store = open_store(spec)
    except StoreSpecError as err:
        raise UsageError(str(err)) from err
    except StoreError as err:  # an OSError: its text without the "[Errno N]" prefix
        raise UsageError(err.strerror or str(err)) from err
    try:
        size = _size(store, spec)
    except OSError as err:
        raise UsageError(f"store {spec}: {err}") from err
    finally:
        store.close()
    if size < args.block_size:
        raise UsageError(f"store {spec} is {size} bytes: too small for a block device")
    return str(spec), str(nexus)


def _size(store, spec) -> int:  # type: ignore[no-untyped-def]
    if spec.is_file:
        fd = os.open(spec.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    return int(store.data().size)


def _spawn(argv: list[str]) -> int:
    """Start a server, wait for its word; the device id, or CommandFailed."""
    from tcmu_pr.ublk.control import Control, block_node
    from tcmu_pr.ublk.native import UblkError
    from tcmu_pr.ublk.server import log_path

    registry.run_dir().mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    with open(log_path(), "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tcmu_pr.ublk.server", *argv, "--ready-fd", str(w)],
            pass_fds=(w,), stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            start_new_session=True,
        )  # fmt: skip
    os.close(w)
    dev_id: int | None = None
    outcome = ""
    with os.fdopen(r) as pipe:
        for line in pipe:
            word, _, rest = line.strip().partition(" ")
            if word == "DEV":
                dev_id = int(rest)
            elif word in ("OK", "ERR"):
                outcome = line.strip()
                break
    if outcome.startswith("OK "):
        dev_id = int(outcome[3:])
        try:
            block_node(dev_id)
        except UblkError as err:
            raise CommandFailed(str(err)) from err
        return dev_id
    proc.wait(timeout=60)
    # The server undoes what it made; if it died before it could, do it here.
    if dev_id is not None and "--recover" not in argv:
        try:
            with Control() as ctrl:
                ctrl.delete(dev_id)
        except UblkError:
            pass
        registry.remove(dev_id)
    why = outcome[4:] if outcome.startswith("ERR ") else f"the server exited ({proc.returncode})"
    raise CommandFailed(f"ublk: {why} (log: {log_path()})")


@command("ublk", "add", help="serve a store as /dev/ublkbN under the LU's reservations",
         configure=_configure_add)  # fmt: skip
def _add(args: argparse.Namespace) -> int:
    store, nexus = _check_add(args)
    dev_id = _spawn(["--store", store, "--nexus", nexus, "--queues", str(args.queues),
                     "--depth", str(args.depth), "--block-size", str(args.block_size)])  # fmt: skip
    print(f"/dev/ublkb{dev_id}")
    return 0


def _configure_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("device", type=_device_arg, metavar="DEVICE", help="/dev/ublkbN or N")


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (its files are closed)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.02)
    return False


@command("ublk", "del", help="stop and remove a ublk device", configure=_configure_device)
def _del(args: argparse.Namespace) -> int:
    from tcmu_pr.ublk.control import Control
    from tcmu_pr.ublk.native import UblkError

    dev_id = args.device
    try:
        with Control() as ctrl:
            try:
                info = ctrl.info(dev_id)
            except UblkError as err:
                raise UsageError(f"no ublk device {dev_id}: {err.args[0]}") from err
            ctrl.stop(dev_id)
            if info.pid > 0 and not _wait_exit(info.pid, 30):
                raise CommandFailed(f"ublkb{dev_id}: server {info.pid} did not exit")
            ctrl.delete(dev_id)
    except UblkError as err:
        raise CommandFailed(str(err.args[0])) from err
    registry.remove(dev_id)
    return 0


@command("ublk", "list", help="the ublk devices and what serves them")
def _list(args: argparse.Namespace) -> int:
    from tcmu_pr.ublk.control import Control
    from tcmu_pr.ublk.native import UblkError

    ids = set(registry.all_ids())
    with contextlib.suppress(FileNotFoundError):
        ids |= {int(n[5:]) for n in os.listdir("/sys/class/ublk-char") if n[5:].isdigit()}
    try:
        ctrl = Control()
    except UblkError as err:
        raise CommandFailed(str(err)) from err
    with ctrl:
        for dev_id in sorted(ids):
            entry = registry.load(dev_id)
            try:
                info = ctrl.info(dev_id)
                state, pid = info.state_name, str(info.pid)
            except UblkError:
                state, pid = "gone", "-"
            store = entry.store if entry else "?"
            nexus = entry.nexus if entry else "?"
            print(f"/dev/ublkb{dev_id}\t{state}\tpid {pid}\t{store}\t{nexus}")
    return 0


@command("ublk", "recover", help="start a new server for a ublk device whose server died",
         configure=_configure_device)  # fmt: skip
def _recover(args: argparse.Namespace) -> int:
    entry = registry.load(args.device)
    if entry is None:
        raise UsageError(f"ublkb{args.device}: not a device `tcmu-pr ublk add` made here")
    dev_id = _spawn(["--store", entry.store, "--nexus", entry.nexus, "--block-size",
                     str(entry.block_size), "--recover", str(entry.dev_id)])  # fmt: skip
    print(f"/dev/ublkb{dev_id}")
    return 0
