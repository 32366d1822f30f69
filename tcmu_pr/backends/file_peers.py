"""Change announcements with acknowledgements between the processes that serve one image file.

What RADOS watch/notify is for an RBD image, this is for a file: every process that serves the
LU (a daemon, one per gateway) binds a unix datagram socket in a directory beside the image,
and whoever lands a PR change tells each of them and waits for each one's answer::

    /srv/lu0.img.tcmu-pr.peers/p.<pid>.<start time>.<tag>   a participant (listed)
    /srv/lu0.img.tcmu-pr.peers/.c.<pid>.<tag>               a one-off changer, e.g. the CLI
                                                             (hidden: it serves nothing)

    CHANGE <nonce> <reply name>     "the PR state changed: apply it, then answer"
    ACK <nonce> <name>              "applied everywhere in this process"

Why sockets and not a shared counter: a datagram wakes the receiver at once (no poll interval
on the correctness path), the kernel says ECONNREFUSED for a socket whose process died (so a
dead participant costs nothing), and nothing runs on the data path.

A participant that stays silent past the ack timeout is frozen or wedged.  It is cut off before
the change is answered: its process is killed (SIGKILL through a pidfd, after checking that the
pid still belongs to the process that bound the socket: pid and start time are in the name) and
its exit awaited, so no command it had admitted can still complete after the answer.  Killing
needs the right to signal it (same user or root, as every gateway daemon runs); when that fails
the change is answered CHECK CONDITION instead (docs/consistency.md).

Paths: a socket is addressed as ``/proc/self/fd/<dir fd>/<name>``, so the image's path may be
longer than sun_path's 108 bytes.  A datagram's source address is the sender's own spelling of
that path (meaningless to the receiver), so every message carries the sender's name instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import secrets
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tcmu_pr.backends.base import ChangeHandler, Confirmation, StoreError, StoreOptions

log = logging.getLogger(__name__)

PEERS_SUFFIX = ".tcmu-pr.peers"
_LISTED = "p."
_HIDDEN = ".c."
_MAX_DATAGRAM = 512


def peers_dir(image: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(image)}{PEERS_SUFFIX}")


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot); None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class PeerName:
    """A listed participant's socket name: ``p.<pid>.<start time>.<tag>``."""

    pid: int
    start: int
    tag: str

    @classmethod
    def parse(cls, name: str) -> PeerName | None:
        parts = name.split(".")
        if len(parts) != 4 or parts[0] != "p" or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(int(parts[1]), int(parts[2]), parts[3])

    def __str__(self) -> str:
        return f"p.{self.pid}.{self.start}.{self.tag}"


class FilePeers:
    """This process's place among the participants of one image (see the module docstring)."""

    def __init__(self, image: str | os.PathLike[str], options: StoreOptions) -> None:
        self.dir = peers_dir(image)
        self.options = options
        self._dirfd = -1
        self._sock: socket.socket | None = None
        self.name: str | None = None
        self._on_change: ChangeHandler | None = None
        self._acks: dict[int, set[str]] = {}
        self._cond = threading.Condition()
        self._work: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closing = False
        #: Answered change announcements (tests and the log read it).
        self.handled = 0

    def __repr__(self) -> str:
        return f"FilePeers({os.fspath(self.dir)!r}, {self.name})"

    # -- addressing --------------------------------------------------------------------------

    def _open_dir(self) -> None:
        if self._dirfd >= 0:
            return
        try:
            self.dir.mkdir(mode=0o755, exist_ok=True)
            self._dirfd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise StoreError(err.errno, f"cannot use {self.dir}: {err.strerror}") from err

    def _addr(self, name: str) -> str:
        return f"/proc/self/fd/{self._dirfd}/{name}"

    def _bind(self, name: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self._addr(name))
        except OSError as err:
            sock.close()
            raise StoreError(err.errno, f"cannot bind {self.dir}/{name}: {err.strerror}") from err
        return sock

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dirfd)

    # -- taking part -------------------------------------------------------------------------

    def join(self, on_change: ChangeHandler) -> None:
        """Bind our listed socket and start answering announcements."""
        if self._sock is not None:
            raise RuntimeError(f"{self!r} has joined already")
        self._open_dir()
        pid = os.getpid()
        start = _start_time(pid)
        if start is None:
            raise StoreError(errno.ESRCH, "cannot read this process's start time from /proc")
        name = str(PeerName(pid, start, secrets.token_hex(4)))
        self._sock = self._bind(name)
        self.name = name
        self._on_change = on_change
        for target, label in ((self._receive, "recv"), (self._answer, "apply")):
            t = threading.Thread(target=target, name=f"file-peers {label} {name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.debug("%r joined", self)

    def _receive(self) -> None:
        """Route datagrams: announcements to the apply thread, acks to their waiters."""
        sock = self._sock
        assert sock is not None
        while True:
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except OSError as err:
                if not self._closing:
                    log.error("%r: receiving failed, no longer answering: %s", self, err)
                return
            words = data.decode("ascii", "replace").split()
            if words == ["BYE"] and self._closing:
                return
            if len(words) != 3:
                log.warning("%r: dropped a malformed datagram %r", self, data[:64])
                continue
            kind, nonce_text, name = words
            try:
                nonce = int(nonce_text, 16)
            except ValueError:
                log.warning("%r: dropped a datagram with a bad nonce %r", self, data[:64])
                continue
            if kind == "CHANGE":
                self._work.put((nonce, name))
            elif kind == "ACK":
                with self._cond:
                    if nonce in self._acks:
                        self._acks[nonce].add(name)
                        self._cond.notify_all()
            else:
                log.warning("%r: dropped an unknown datagram %r", self, data[:64])

    def _answer(self) -> None:
        """Apply announced changes; one application answers every announcement queued."""
        while True:
            item = self._work.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    more = self._work.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._work.put(None)
                    break
                batch.append(more)
            assert self._on_change is not None
            try:
                applied = self._on_change()
            except Exception:
                log.exception("%r: applying a change failed; not acknowledging", self)
                applied = False
            if not applied:
                continue  # the changers will cut this process off: nothing stale survives
            self.handled += len(batch)  # before the acks: a changer may look once it has them
            for nonce, reply in batch:
                self._send(self._sock, reply, f"ACK {nonce:016x} {self.name}")

    def _send(self, sock: socket.socket | None, name: str, text: str) -> OSError | None:
        if sock is None or "/" in name or name in (".", ".."):
            return OSError(errno.EINVAL, f"bad participant name {name!r}")
        try:
            sock.sendto(text.encode("ascii"), socket.MSG_DONTWAIT, self._addr(name))
        except OSError as err:
            return err
        return None

    # -- announcing a change -----------------------------------------------------------------

    def confirm_change(self) -> Confirmation:
        """Tell every other listed participant; wait for their acks; cut off the silent."""
        try:
            self._open_dir()
            names = sorted(n for n in os.listdir(self.dir) if n.startswith(_LISTED))
        except (OSError, StoreError) as err:
            log.error("%r: cannot list the participants: %s", self, err)
            return Confirmation(failed=(f"{self.dir} ({err})",))
        others = [n for n in names if n != self.name]
        if not others:
            return Confirmation()
        own = self._sock
        temp_name = None
        if own is None:  # a one-off changer: a hidden socket just for the acks
            temp_name = f"{_HIDDEN}{os.getpid()}.{secrets.token_hex(4)}"
            try:
                own = self._bind(temp_name)
            except StoreError as err:
                log.error("%r: %s", self, err)
                return Confirmation(told=len(others), failed=tuple(others))
        nonce = secrets.randbits(63)
        try:
            return self._announce(own, temp_name or self.name or "", nonce, others,
                                  listen=temp_name is not None)  # fmt: skip
        finally:
            if temp_name is not None:
                own.close()
                self._unlink(temp_name)

    def _announce(self, sock: socket.socket, reply: str, nonce: int, others: list[str],
                  *, listen: bool) -> Confirmation:  # fmt: skip
        with self._cond:
            self._acks[nonce] = set()
        try:
            told = []
            for name in others:
                err = self._send(sock, name, f"CHANGE {nonce:016x} {reply}")
                if err is None or err.errno == errno.EAGAIN:  # EAGAIN: its queue is full
                    told.append(name)
                elif err.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    log.info("%r: participant %s is gone (its socket is stale): removed",
                             self, name)  # fmt: skip
                    self._unlink(name)
                else:
                    log.warning("%r: cannot reach participant %s: %s", self, name, err)
                    told.append(name)
            deadline = time.monotonic() + self.options.ack_timeout
            acked = self._collect(sock, nonce, set(told), deadline, listen=listen)
        finally:
            with self._cond:
                self._acks.pop(nonce, None)
        silent = [n for n in told if n not in acked]
        fenced, failed = [], []
        for name in silent:
            (fenced if self._cut_off(name) else failed).append(name)
        return Confirmation(len(told), len(told) - len(silent), tuple(fenced), tuple(failed))

    def _collect(self, sock: socket.socket, nonce: int, told: set[str], deadline: float,
                 *, listen: bool) -> set[str]:  # fmt: skip
        """Acks for ``nonce`` until all of ``told`` answered or the deadline passed."""
        if not listen:  # our receiver thread fills self._acks
            with self._cond:
                self._cond.wait_for(lambda: told <= self._acks[nonce],
                                    max(0.0, deadline - time.monotonic()))  # fmt: skip
                return set(self._acks[nonce])
        acked: set[str] = set()
        while not told <= acked:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            words = sock.recv(_MAX_DATAGRAM).decode("ascii", "replace").split()
            if len(words) == 3 and words[0] == "ACK" and words[1] == f"{nonce:016x}":
                acked.add(words[2])
        return acked

    def _cut_off(self, name: str) -> bool:
        """Kill the silent participant ``name`` and wait for it to exit; True when it can no
        longer serve (killed, or already gone)."""
        peer = PeerName.parse(name)
        if peer is None:
            log.error("%r: silent participant %s has a foreign name: cannot cut it off",
                      self, name)  # fmt: skip
            return False
        if peer.pid == os.getpid():
            log.error("%r: silent participant %s is this very process: cannot cut it off",
                      self, name)  # fmt: skip
            return False
        if not self.options.fence:
            log.error("%r: participant pid %d did not acknowledge within %.1f s (fencing off)",
                      self, peer.pid, self.options.ack_timeout)  # fmt: skip
            return False
        try:
            pidfd = os.pidfd_open(peer.pid)
        except ProcessLookupError:
            self._unlink(name)
            return True  # exited meanwhile
        except OSError as err:
            log.error("%r: cannot cut off pid %d: %s", self, peer.pid, err)
            return False
        try:
            if _start_time(peer.pid) != peer.start:
                self._unlink(name)
                return True  # the pid was reused: the participant is long gone
            log.error(
                "%r: participant pid %d did not acknowledge a PR change within %.1f s: "
                "killing it so it cannot serve from a stale state",
                self, peer.pid, self.options.ack_timeout,
            )  # fmt: skip
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError as err:
                log.error("%r: cannot kill pid %d: %s", self, peer.pid, err)
                return False
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if not poller.poll(int(self.options.ack_timeout * 1000)):
                log.error("%r: pid %d was killed but has not exited after %.1f s",
                          self, peer.pid, self.options.ack_timeout)  # fmt: skip
                return False
        finally:
            os.close(pidfd)
        self._unlink(name)
        return True

    def close(self) -> None:
        """Leave: unlink our socket, stop the threads."""
        self._closing = True
        if self._sock is not None:
            if self.name is not None:
                self._send(self._sock, self.name, "BYE")
                self._unlink(self.name)
            self._work.put(None)
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(timeout=10)
            self._sock.close()
            self._sock = None
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1
