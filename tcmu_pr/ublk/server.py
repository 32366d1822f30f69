"""One ublk device's server process: ``python -m tcmu_pr.ublk.server`` (started by ``tcmu-pr
ublk add`` / ``recover``, never by hand).

It opens the store, joins the LU as a participant with its own nexus (so a PR change made
anywhere waits for this device's verdict to be in force, docs/consistency.md), creates or
recovers the device, runs one native queue loop per thread and tells its starter the outcome
on a pipe (``OK <dev id>`` or ``ERR <why>``).  It ends when the device is stopped; if it is
killed instead, the device (created with UBLK_F_USER_RECOVERY) holds its I/O until
``recover`` starts a new server.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from tcmu_pr.backends import open_store
from tcmu_pr.backends.base import Store, StoreError
from tcmu_pr.backends.store_spec import StoreSpec, StoreSpecError
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.ublk import control, registry
from tcmu_pr.ublk.native import UblkError, load
from tcmu_pr.ublk.tracking import Tracking

if TYPE_CHECKING:
    from tcmu_pr.cbt.mapfile import CbtMap

log = logging.getLogger("tcmu_pr.ublk")

MAX_IO = 512 << 10  # bytes per request and per tag buffer
#: Verdict bits the queue loop knows (READ, WRITE); a pending UA means nothing to a bio.
VERDICT_MASK = 3


def default_nexus() -> Nexus:
    """A ublk device's identity in the PR state: ``ublk:<hostname>`` as initiator and target
    port, ISID 0, TPG 1 (docs/ublk.md)."""
    host = socket.gethostname() or "localhost"
    return Nexus(f"ublk:{host}", "0", f"ublk:{host}", "1")


class Verdict:
    """The device's verdict word shared by its queues: the LU's Member for this device."""

    def __init__(self, mod: Any, dev_id: int, nr_queues: int, depth: int, nexus: Nexus) -> None:
        self._ffi, self._lib = mod.ffi, mod.lib
        self.shared = self._ffi.new("struct ublk_shared *")
        rc = self._lib.ublk_shared_init(self.shared, nr_queues, depth)
        if rc < 0:
            raise UblkError(f"verdict table for {nr_queues} x {depth}: {os.strerror(-rc)}")
        self.device_id = f"ublk{dev_id}"
        self.nexus: Nexus | None = nexus

    def publish_verdict(self, word: int, lease_deadline_ms: int) -> None:
        self._lib.ublk_publish(self.shared, word & VERDICT_MASK, lease_deadline_ms)

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._lib.ublk_drained(self.shared):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.0002)
        return True


class Data:
    """The store's data as the queue loop takes it: a file descriptor, or an ops table."""

    def __init__(self, store: Store, spec: StoreSpec, ffi: Any) -> None:
        self._image: Any = None
        self.fd = -1
        self.ops: Any = ffi.NULL
        self.ctx: Any = ffi.NULL
        #: the image's change-block map when tracking is enabled (file stores only)
        self.cbt: CbtMap | None = None
        self.read: Any = None
        if spec.is_file:
            # as every server of a file image: marked in use, then the map looked for, so
            # tracking is not switched under this device (docs/cbt.md)
            backend = store.data()
            self.cbt, self.read = backend.cbt, backend.read
            self.fd = os.open(spec.path, os.O_RDWR | os.O_CLOEXEC)
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
            self.discard_granularity = 4096
        else:
            from tcmu_pr.backends.rbd_data import native_module

            self._image = store.data()
            self.size = self._image.size
            self.discard_granularity = 64 << 10  # librbd's discard granularity default
            rbd = native_module()
            ops = int(rbd.ffi.cast("uintptr_t", rbd.lib.rbd_io_ublk_ops()))
            self.ops = ffi.cast("const struct ublk_backend_ops *", ops)
            self.ctx = ffi.cast("void *", self._image.pin())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._image is not None:
            self._image.unpin()
            self._image = None


class Queues:
    """The device's queue threads, each in ``ublk_queue_run`` (the GIL released)."""

    def __init__(self, mod: Any, cdev_fd: int, info: control.DevInfo, size: int,
                 block_size: int, data: Data, verdict: Verdict,
                 tracking: Tracking | None = None) -> None:  # fmt: skip
        ffi, lib = mod.ffi, mod.lib
        self._lib = lib
        self.queues = []
        self.results: list[int | None] = [None] * info.nr_queues
        self.threads: list[threading.Thread] = []
        for q_id in range(info.nr_queues):
            q = ffi.new("struct ublk_queue *")
            q.cdev_fd, q.q_id, q.depth = cdev_fd, q_id, info.depth
            q.buf_bytes, q.dev_bytes, q.lbs = info.max_io_bytes, size, block_size
            q.file_fd, q.ops, q.ctx, q.sh = data.fd, data.ops, data.ctx, verdict.shared
            self.queues.append(q)
        if tracking is not None:
            tracking.attach(self.queues)
        for q_id, q in enumerate(self.queues):
            t = threading.Thread(target=self._run, args=(q_id, q), name=f"ublk q{q_id}",
                                 daemon=True)  # fmt: skip
            t.start()
            self.threads.append(t)

    def _run(self, q_id: int, q: Any) -> None:
        rc = int(self._lib.ublk_queue_run(q))
        self.results[q_id] = rc
        if rc < 0:
            log.error("queue %d ended: %s", q_id, os.strerror(-rc))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Every queue has its FETCH_REQs in; a queue that failed to set up raises."""
        deadline = time.monotonic() + timeout
        while True:
            failed = [(i, r) for i, r in enumerate(self.results) if r is not None]
            if failed:
                i, rc = failed[0]
                raise UblkError(f"queue {i} could not start: {os.strerror(-rc) if rc else 'ended'}")
            if all(q.ready for q in self.queues):
                return
            if time.monotonic() > deadline:
                raise UblkError("queues not ready after 10 s")
            time.sleep(0.005)

    def join(self, timeout: float | None = None) -> bool:
        for t in self.threads:
            t.join(timeout)
        return not any(t.is_alive() for t in self.threads)

    def stats(self) -> dict[str, int]:
        names = ("reads", "writes", "flushes", "discards", "zeroes", "conflicts", "bad",
                 "errors", "held")  # fmt: skip
        return {n: sum(int(getattr(q.stats, n)) for q in self.queues) for n in names}


class Server:
    def __init__(self, spec: StoreSpec, nexus: Nexus, block_size: int) -> None:
        from tcmu_pr.unit.lu import LogicalUnit

        self.mod = load()
        self.spec, self.nexus, self.block_size = spec, nexus, block_size
        self.ctrl = control.Control()
        self.store = open_store(spec)
        self.data = Data(self.store, spec, self.mod.ffi)
        self.size = self.data.size // block_size * block_size
        if self.size <= 0:
            raise UblkError(f"store {spec} is empty ({self.data.size} bytes): nothing to serve")
        self.lu = LogicalUnit(self.store, on_loss=self._lost)
        self.dev_id: int | None = None
        self.cdev_fd = -1
        self.queues: Queues | None = None
        self.verdict: Verdict | None = None
        self.tracking: Tracking | None = None

    def _lost(self, lu: object, why: str) -> None:
        # The LU has already expired the lease (I/O waits); a new server with a new client
        # takes over through `tcmu-pr ublk recover`.
        log.error("cut off from %s (%s): exiting; run `tcmu-pr ublk recover %s`", self.spec, why,
                  self.dev_id)  # fmt: skip
        os._exit(3)

    def _serve(self, info: control.DevInfo) -> None:
        self.verdict = Verdict(self.mod, info.dev_id, info.nr_queues, info.depth, self.nexus)
        self.lu.add(self.verdict)
        self.cdev_fd = os.open(control.char_node(info.dev_id), os.O_RDWR | os.O_CLOEXEC)
        if self.data.cbt is not None:
            self.tracking = Tracking(self.mod, self.data.cbt, self.data.read, info.nr_queues,
                                     info.depth)  # fmt: skip
            log.info("change-block tracking on (%s)", self.data.cbt.info())
        self.queues = Queues(self.mod, self.cdev_fd, info, self.size, self.block_size, self.data,
                             self.verdict, self.tracking)  # fmt: skip
        self.queues.wait_ready()

    def create(self, nr_queues: int, depth: int, report: Any) -> int:
        lib = self.mod.lib
        features = self.ctrl.features()
        wanted = lib.UBLK_FLAG_CMD_IOCTL_ENCODE | lib.UBLK_FLAG_USER_RECOVERY
        wanted |= lib.UBLK_FLAG_USER_RECOVERY_REISSUE
        flags = features & wanted
        if not flags & lib.UBLK_FLAG_USER_RECOVERY:
            log.warning("kernel lacks UBLK_F_USER_RECOVERY: `recover` will not work")
        info = self.ctrl.add(nr_queues, depth, MAX_IO, flags)
        self.dev_id = info.dev_id
        report(f"DEV {info.dev_id}")
        max_io = min(info.max_io_bytes, MAX_IO)
        self.ctrl.set_params(info.dev_id, control.Params(
            size=self.size, logical_block=self.block_size,
            physical_block=max(self.block_size, 4096), max_io=max_io,
            discard_granularity=max(self.block_size, self.data.discard_granularity)))  # fmt: skip
        registry.save(registry.Entry(info.dev_id, str(self.spec), str(self.nexus), nr_queues,
                                     depth, self.block_size, log_path()))  # fmt: skip
        self._serve(info)
        self.ctrl.start(info.dev_id, os.getpid())
        control.block_node(info.dev_id)
        return info.dev_id

    def recover(self, dev_id: int) -> int:
        self.dev_id = dev_id
        info = self.ctrl.info(dev_id)
        if info.state == self.mod.lib.UBLK_STATE_LIVE and _alive(info.pid):
            raise UblkError(f"ublkb{dev_id} is live, served by pid {info.pid}: nothing to recover")
        self.ctrl.start_recovery(dev_id)
        info = self.ctrl.info(dev_id)
        self._serve(info)
        self.ctrl.end_recovery(dev_id, os.getpid())
        return dev_id

    def abandon(self) -> None:
        """Undo a device that did not come up (add only; never a recovered one's)."""
        if self.dev_id is None:
            return
        for step in (self.ctrl.stop,):
            with contextlib.suppress(UblkError):
                step(self.dev_id)
        if self.queues is not None and self.queues.join(5):
            self._close_tracking()
        if self.cdev_fd >= 0:
            os.close(self.cdev_fd)
            self.cdev_fd = -1
        try:
            self.ctrl.delete(self.dev_id)
        except UblkError as err:
            log.error("could not delete ublk%d: %s", self.dev_id, err)
        registry.remove(self.dev_id)

    def wait(self) -> None:
        assert self.queues is not None
        self.queues.join()
        log.info("ublkb%s stopped; served %s", self.dev_id, self.queues.stats())
        self._close_tracking()
        if self.cdev_fd >= 0:
            os.close(self.cdev_fd)
            self.cdev_fd = -1

    def _close_tracking(self) -> None:
        if self.tracking is not None:
            marked = sum(int(m.marked) for m in self.tracking.maps)
            log.info("change-block tracking: %d writes marked, %d waited or copied first",
                     marked, self.tracking.punts)  # fmt: skip
            self.tracking.close()
            self.tracking = None

    def close(self) -> None:
        self.lu.close()
        self.data.close()
        self.store.close()
        self.ctrl.close()


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def log_path() -> str:
    return str(registry.run_dir() / "server.log")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tcmu_pr.ublk.server")
    p.add_argument("--store", required=True)
    p.add_argument("--nexus", required=True)
    p.add_argument("--block-size", type=int, default=512)
    p.add_argument("--queues", type=int, default=1)
    p.add_argument("--depth", type=int, default=64)
    p.add_argument("--recover", type=int, metavar="DEV_ID")
    p.add_argument("--ready-fd", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s ublk-server[{os.getpid()}] %(levelname)s %(message)s")

    def report(line: str) -> None:
        with contextlib.suppress(OSError):
            os.write(args.ready_fd, (line + "\n").encode())

    server: Server | None = None
    try:
        server = Server(StoreSpec.parse(args.store), Nexus.parse(args.nexus), args.block_size)
        if args.recover is not None:
            dev_id = server.recover(args.recover)
        else:
            dev_id = server.create(args.queues, args.depth, report)
    except (UblkError, StoreError, StoreSpecError, OSError, ValueError) as err:
        msg = str(err.args[0]) if isinstance(err, UblkError) and err.args else str(err)
        log.error("%s", msg)
        report(f"ERR {msg}")
        if server is not None and args.recover is None:
            server.abandon()
        return 1
    log.info("serving %s as /dev/ublkb%d, nexus %s", args.store, dev_id, args.nexus)
    report(f"OK {dev_id}")
    os.close(args.ready_fd)
    server.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
