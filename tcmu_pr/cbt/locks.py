"""Open-file-description byte locks on the map file: who has it open, one change at a time.

Byte 0 is the gate (exclusive, held briefly while a server opens or closes the map, or while
a command changes it); byte 1 is held shared by every server that has the map open for
writing, so an opener or closer under the gate can tell whether it is the only one. OFD
locks belong to the open file, not the process, so two opens in one process count twice,
and a killed process's locks go with it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

GATE = 0
USERS = 1
COPY = 2  # copy-on-write into the snapshots, and deleting one, one at a time
#: On the image itself: every server that opens it for writing holds this byte shared
#: (FileDataBackend), so ``cbt enable``/``disable`` can refuse while one is running (a
#: server that opened the image without a map would not track). Far past any image's end.
IN_USE = 1 << 62


def hold_in_use(fd: int) -> None:
    """A server's mark on the image (waits while enable/disable runs): taken before it
    looks for the map, so an enable either sees it or finishes first. A filesystem without
    OFD locks serves untracked as before: enable cannot lock there either, so it refuses."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_RDLCK, IN_USE))
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def take_image(fd: int) -> bool:
    """Exclusive on the image's in-use byte, at once; False when a server holds it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, IN_USE))
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES):  # a conflicting lock
            return False
        raise
    return True


def release_image(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, IN_USE))


def _flock(kind: int, start: int) -> bytes:
    """``struct flock`` (x86-64/aarch64 Linux) for one byte; l_pid 0 as OFD locks want."""
    return struct.pack("hhxxxxqqixxxx", kind, os.SEEK_SET, start, 1, 0)


@contextmanager
def exclusive(fd: int, byte: int) -> Iterator[None]:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, byte))
    try:
        yield
    finally:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, byte))


def gate(fd: int):  # type: ignore[no-untyped-def]
    return exclusive(fd, GATE)


def join(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, USERS))


def leave(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, USERS))


def others_present(fd: int) -> bool:
    """Does another open file hold the users byte? (our own lock never conflicts)"""
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, USERS))
    return struct.unpack("hh", got[:4])[0] != fcntl.F_UNLCK
