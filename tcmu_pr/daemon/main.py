"""``tcmu-pr daemon``: the process that serves every TCMU device of this gateway.

Threads: the main thread answers netlink (the kernel keeps one command per device
outstanding, so serial is enough); one thread per device ring (devices.py); each LU's store
listens for the other gateways' change announcements on threads of its own (tcmu_pr/unit/lu.py,
backends/); optionally the D-Bus thread.  SIGTERM/SIGINT set one stop event: the netlink
loop returns within its poll interval, every device finishes its current batch (all punted
commands answered) and closes, then the stores and D-Bus stop, and the process exits 0.

Start-up order: join TCM-USER's group and send SET_FEATURES; answer whatever the kernel
already queued; adopt the TCMU devices that existed before we joined (adopt.py: the kernel
announces a device once, so one enabled while no daemon listened is otherwise never
served); once SET_FEATURES is acknowledged, signal readiness (``--ready-file``, systemd's
NOTIFY_SOCKET; notify.py).  On the way out SET_FEATURES(reply=0) again, so that a backstore
enabled while no daemon runs does not block in the kernel waiting for a reply.

Logs go to stderr; under systemd (JOURNAL_STREAM set) without a timestamp, since the
journal stamps every line itself.
"""

from __future__ import annotations

import argparse
import contextlib
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
from tcmu_pr.daemon import notify
from tcmu_pr.daemon.adopt import Existing
from tcmu_pr.daemon.attrib import BackstoreAttribs
from tcmu_pr.daemon.config import DaemonConfig
from tcmu_pr.daemon.devices import DeviceManager, NexusResolver, StoreOpener
from tcmu_pr.daemon.rings import RingSource
from tcmu_pr.daemon.selection import DeviceSelection, SelectiveService

log = logging.getLogger("tcmu_pr.daemon")

NETLINK_POLL = 0.2  # seconds: how fast the main loop notices the stop event

#: What the adoption scan returns: our existing devices, and lines about unreadable ones.
Scanner = Callable[[], tuple[list[Existing], list[str]]]


def _scan_kernel() -> tuple[list[Existing], list[str]]:
    from tcmu_pr.daemon.adopt import scan

    return scan()


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
    """Everything one daemon runs; ``transport``/``ring_source``/``open_store`` are seams."""

    def __init__(
        self,
        cfg: DaemonConfig,
        *,
        transport: object | None = None,
        ring_source: RingSource | None = None,
        open_store: StoreOpener | None = None,
        scan_existing: Scanner | None = None,
        ready_file: Path | None = None,
        attribs: BackstoreAttribs | None = None,
        resolve: NexusResolver | None = None,
    ) -> None:
        """``scan_existing``: devices to adopt at start; default: the kernel's (sysfs and
        configfs) with the kernel transport, none with a test transport.  ``attribs`` and
        ``resolve``: the backstores' configfs attributes and GET_NEXUS (DeviceManager)."""
        self.cfg = cfg
        self.selection = DeviceSelection(cfg.devices)
        kwargs = {"open_store": open_store} if open_store else {}
        self.manager = DeviceManager(cfg, ring_source=ring_source, attribs=attribs,
                                     resolve=resolve, **kwargs)  # fmt: skip
        self._transport = transport
        self.stop_event = threading.Event()
        self.service = None
        self.dbus = None
        if scan_existing is None and transport is None:
            scan_existing = _scan_kernel
        self._scan_existing = scan_existing
        self.ready_file = ready_file
        self._features_seq: int | None = None
        self.ready = threading.Event()
        self.failure: str | None = None  # why serve() gave up (exit status 1)

    def start(self) -> None:
        """Bind netlink (FamilyNotFound propagates), adopt devices, start D-Bus."""
        if self._transport is None:
            self.service = SelectiveService.connect(self.manager)
            self._features_seq = self.service.last_announce
        else:
            self.service = SelectiveService(self._transport, self.manager)  # type: ignore[arg-type]
            self._features_seq = self.service.announce()
        self.service.selection = self.selection  # before the first command is handled
        while self.service.handle_one(timeout=0):
            pass  # what the kernel queued since we joined: fewer devices look unannounced
        if self._scan_existing is not None:
            self._adopt(self._scan_existing)
        if self.cfg.dbus:
            from tcmu_pr.daemon.dbus import DBusService

            dbus = DBusService(self.cfg.dbus_address)
            if dbus.start():
                self.dbus = dbus

    def _adopt(self, scan: Scanner) -> None:
        assert self.service is not None
        found, problems = scan()
        for line in problems:
            log.warning("existing TCMU device not adopted: %s", line)
        for dev in found:
            if not self.selection.selects(dev.uio_name):
                log.info("existing TCMU device %s: not selected (devices = %s)",
                         dev.uio_name, list(self.selection.globs))  # fmt: skip
                continue
            if self.service.device(dev.device_id) is None:
                self.service.adopt(
                    dev.device_id, dev.minor, dev.uio_name, pending=not dev.configured
                )

    def serve(self) -> None:
        """The netlink loop, until the stop event is set; signals readiness on the way."""
        service = self.service
        assert service is not None
        while not self.stop_event.is_set():
            if not self.ready.is_set() and self._features_seq is not None:
                self._check_features(self._features_seq)
            service.handle_one(timeout=NETLINK_POLL)

    def _check_features(self, seq: int) -> None:
        assert self.service is not None
        if seq in self.service.acked:
            self._signal_ready()
        elif seq in self.service.refused:
            code = self.service.refused[seq]
            self.failure = f"the kernel refused SET_FEATURES: {os.strerror(code)}"
            log.error("%s (CAP_NET_ADMIN?)", self.failure)
            self.stop_event.set()

    def _signal_ready(self) -> None:
        if self.ready_file is not None:
            try:
                notify.write_ready_file(self.ready_file)
            except OSError as err:  # whoever waits for it would wait forever: say so, stop
                self.failure = f"cannot write the ready file: {err}"
                log.error("%s", self.failure)
                self.stop_event.set()
                return
        try:
            notify.sd_notify("READY=1")
        except OSError as err:
            log.warning("cannot notify systemd (NOTIFY_SOCKET): %s", err)
        self.ready.set()
        log.info("tcmu-pr daemon ready: %d device(s) served", len(self.manager.devices))

    def close(self) -> None:
        self.stop_event.set()
        if self.ready.is_set():
            with contextlib.suppress(OSError):
                notify.sd_notify("STOPPING=1")
            if self.ready_file is not None:
                notify.remove_ready_file(self.ready_file)
        if self.service is not None:
            seq = self._features_seq
            if seq is not None and seq not in self.service.refused:
                with contextlib.suppress(OSError):
                    self.service.announce(reply=False)
            self.service.close()  # closes every device (ring threads joined)
        self.manager.close()  # ... and every store with its last user
        if self.dbus is not None:
            self.dbus.stop()
        log.info("tcmu-pr daemon stopped")

    def install_signals(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("%s: shutting down", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)


def run(
    cfg: DaemonConfig,
    *,
    make: Callable[[DaemonConfig], Daemon] = Daemon,
    ready_file: Path | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; exit status (1 when TCM-USER cannot be bound)."""
    from tcmu_pr.netlink.socket import FamilyNotFound

    daemon = make(cfg)
    if ready_file is not None:
        daemon.ready_file = ready_file
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
    return 1 if daemon.failure else 0


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
    p.add_argument(
        "--devices",
        action="append",
        metavar="GLOB",
        help="serve only TCMU devices whose backstore name (or user_<hba>/<name>) matches; "
        "repeatable; overrides the file. One daemon per gateway: give each its own devices",
    )
    p.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="write the pid here once devices can be created (removed at exit); "
        "NOTIFY_SOCKET (systemd Type=notify) gets READY=1 at the same point",
    )


@command("daemon", help="serve TCMU devices (netlink, rings, PR) until SIGTERM",
         configure=_configure)  # fmt: skip
def _daemon(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.DaemonConfigError as err:
        raise UsageError(str(err)) from err
    overrides: dict[str, object] = {}
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.topology:
        overrides["topology"] = args.topology.absolute()
    if args.no_dbus:
        overrides["dbus"] = False
    if args.devices:
        if not all(args.devices):
            raise UsageError("--devices needs a non-empty glob")
        overrides["devices"] = tuple(args.devices)
    if overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)  # type: ignore[arg-type]
    setup_logging(cfg.log_level)
    return run(cfg, ready_file=args.ready_file.absolute() if args.ready_file else None)
