"""``tcmu-pr daemon``: the process that serves every TCMU device of this gateway.

Threads: the main thread answers netlink (the kernel keeps one command per device
outstanding, so serial is enough); one thread per device ring (devices.py); one store
watcher that stats file sidecars every ``store_poll_ms``; optionally the D-Bus thread.
SIGTERM/SIGINT set one stop event: the netlink loop returns within its poll interval, every
device finishes its current batch (all punted commands answered) and closes, then the
slots, the watcher and D-Bus stop, and the process exits 0.

Logs go to stderr; under systemd (JOURNAL_STREAM set) without a timestamp, since the
journal stamps every line itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tcmu_pr.cli import UsageError, command
from tcmu_pr.daemon import config as config_mod
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.devices import DeviceManager, SlotOpener
from tcmu_pr.daemon.rings import RingSource

log = logging.getLogger("tcmu_pr.daemon")

NETLINK_POLL = 0.2  # seconds: how fast the main loop notices the stop event


def setup_logging(level: str) -> None:
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Daemon:
    """Everything one daemon runs; ``transport``/``ring_source``/``open_slot`` are seams."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        transport: object | None = None,
        ring_source: RingSource | None = None,
        open_slot: SlotOpener | None = None,
    ) -> None:
        self.cfg = cfg
        kwargs = {"open_slot": open_slot} if open_slot else {}
        self.manager = DeviceManager(cfg, ring_source=ring_source, **kwargs)
        self._transport = transport
        self._open_slot = open_slot
        self.stop_event = threading.Event()
        self.service = None
        self.dbus = None
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        """Bind netlink (FamilyNotFound propagates), start the watcher and D-Bus."""
        from tcmu_pr.netlink.service import NetlinkService

        kwargs = {"open_slot": self._open_slot} if self._open_slot else {}
        if self._transport is None:
            self.service = NetlinkService.connect(self.manager, **kwargs)
        else:
            self.service = NetlinkService(self._transport, self.manager, **kwargs)
            self.service.announce()
        self._watcher = threading.Thread(target=self._watch, name="store-watcher", daemon=True)
        self._watcher.start()
        if self.cfg.dbus:
            from tcmu_pr.daemon.dbus import DBusService

            dbus = DBusService(self.cfg.dbus_address)
            if dbus.start():
                self.dbus = dbus

    def serve(self) -> None:
        """The netlink loop, until the stop event is set."""
        assert self.service is not None
        log.info("tcmu-pr daemon ready")
        self.service.serve_forever(self.stop_event, NETLINK_POLL)

    def _watch(self) -> None:
        interval = self.cfg.store_poll_ms / 1000
        while not self.stop_event.wait(interval):
            try:
                self.manager.poll_stores()
            except Exception:  # keep watching the other LUs
                log.exception("store watcher pass failed")

    def close(self) -> None:
        self.stop_event.set()
        if self.service is not None:
            self.service.close()  # closes every device (ring threads joined) and its slot
        self.manager.close()
        if self._watcher is not None:
            self._watcher.join()
        if self.dbus is not None:
            self.dbus.stop()
        log.info("tcmu-pr daemon stopped")

    def install_signals(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: shutting down", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def run(cfg: DaemonConfig, *, make: Callable[[DaemonConfig], Daemon] = Daemon) -> int:
    """Run until SIGTERM/SIGINT; exit status (1 when TCM-USER cannot be bound)."""
    from tcmu_pr.netlink.socket import FamilyNotFound

    daemon = make(cfg)
    daemon.install_signals()
    try:
        try:
            daemon.start()
        except FamilyNotFound as err:
            log.error("%s", err)
            return 1
        except OSError as err:
            log.error("cannot bind the TCM-USER netlink family: %s", err)
            return 1
        daemon.serve()
    finally:
        daemon.close()
    return 0


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default {config_mod.DEFAULT_PATH}, if present)",
    )
    p.add_argument("--log-level", choices=config_mod.LOG_LEVELS, help="overrides the file")
    p.add_argument("--topology", type=Path, metavar="FILE", help="overrides the file")
    p.add_argument("--no-dbus", action="store_true", help="no org.kernel.TCMUService1")


@command("daemon", help="serve TCMU devices (netlink, rings, PR) until SIGTERM",
         configure=_configure)  # fmt: skip
def _daemon(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as err:
        raise UsageError(str(err)) from err
    overrides: dict[str, object] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.topology:
        overrides["topology"] = args.topology.absolute()
    if args.no_dbus:
        overrides["dbus"] = False
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    setup_logging(cfg.log_level)
    return run(cfg)
