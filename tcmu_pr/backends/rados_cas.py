"""A minimal cffi binding to the librados C API: xattrs, the guarded write, watch/notify.

Why not Debian's python3-rados: its Pacific binding has no ``cmpxattr`` (so no compare-and-swap
of an xattr), its ``notify`` hides which watchers acked and which timed out, and its objects
never hand out the C ``rados_ioctx_t`` that a cffi call would need.  So the whole connection
used for the PR slot lives here, in ABI mode (``dlopen`` of ``librados.so.2``, no compiler), with
only the functions we call declared.  librbd is dlopen'ed too, for one thing: the image id.

Every function returns plain Python values and raises :class:`StoreError` (an ``OSError``
carrying the errno) on failure, so callers never see a negative return code.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cffi

from tcmu_pr.backends.base import StoreError

log = logging.getLogger(__name__)

_CDEF = """
typedef void *rados_t;
typedef void *rados_ioctx_t;
typedef void *rados_write_op_t;
typedef long time_t;
typedef void (*rados_watchcb2_t)(void *arg, uint64_t notify_id, uint64_t handle,
                                 uint64_t notifier_id, void *data, size_t data_len);
typedef void (*rados_watcherrcb_t)(void *pre, uint64_t cookie, int err);

int rados_create(rados_t *cluster, const char * const id);
int rados_conf_read_file(rados_t cluster, const char *path);
int rados_conf_parse_env(rados_t cluster, const char *var);
int rados_conf_set(rados_t cluster, const char *option, const char *value);
int rados_connect(rados_t cluster);
void rados_shutdown(rados_t cluster);
uint64_t rados_get_instance_id(rados_t cluster);
int rados_getaddrs(rados_t cluster, char **addrs);
int rados_ioctx_create(rados_t cluster, const char *pool_name, rados_ioctx_t *ioctx);
void rados_ioctx_destroy(rados_ioctx_t io);

int rados_getxattr(rados_ioctx_t io, const char *o, const char *name, char *buf, size_t len);
int rados_setxattr(rados_ioctx_t io, const char *o, const char *name, const char *buf,
                   size_t len);
int rados_rmxattr(rados_ioctx_t io, const char *o, const char *name);
typedef void *rados_xattrs_iter_t;
int rados_getxattrs(rados_ioctx_t io, const char *oid, rados_xattrs_iter_t *iter);
int rados_getxattrs_next(rados_xattrs_iter_t iter, const char **name, const char **val,
                         size_t *len);
void rados_getxattrs_end(rados_xattrs_iter_t iter);
int rados_blocklist_add(rados_t cluster, char *client_address, uint32_t expire_seconds);

rados_write_op_t rados_create_write_op(void);
void rados_release_write_op(rados_write_op_t write_op);
void rados_write_op_assert_exists(rados_write_op_t write_op);
void rados_write_op_create(rados_write_op_t write_op, int exclusive, const char *category);
void rados_write_op_cmpxattr(rados_write_op_t write_op, const char *name,
                             uint8_t comparison_operator, const char *value, size_t value_len);
void rados_write_op_setxattr(rados_write_op_t write_op, const char *name, const char *value,
                             size_t value_len);
int rados_write_op_operate(rados_write_op_t write_op, rados_ioctx_t io, const char *oid,
                           time_t *mtime, int flags);

int rados_watch3(rados_ioctx_t io, const char *o, uint64_t *cookie, rados_watchcb2_t watchcb,
                 rados_watcherrcb_t watcherrcb, uint32_t timeout, void *arg);
int rados_watch_check(rados_ioctx_t io, uint64_t cookie);
int rados_unwatch2(rados_ioctx_t io, uint64_t cookie);
int rados_watch_flush(rados_t cluster);
int rados_notify2(rados_ioctx_t io, const char *o, const char *buf, int buf_len,
                  uint64_t timeout_ms, char **reply_buffer, size_t *reply_buffer_len);
int rados_notify_ack(rados_ioctx_t io, const char *o, uint64_t notify_id, uint64_t cookie,
                     const char *buf, int buf_len);
void rados_buffer_free(char *buf);
"""

_RBD_CDEF = """
typedef void *rbd_image_t;
int rbd_open_read_only(rados_ioctx_t io, const char *name, rbd_image_t *image,
                       const char *snap_name);
int rbd_get_id(rbd_image_t image, char *id, size_t id_len);
int rbd_get_features(rbd_image_t image, uint64_t *features);
int rbd_close(rbd_image_t image);
"""

LIBRADOS_CMPXATTR_OP_EQ = 1
LIBRADOS_CREATE_IDEMPOTENT = 0
#: What librados returns to a blocklisted client (EBLOCKLISTED is ESHUTDOWN in Ceph).
EBLOCKLISTED = errno.ESHUTDOWN

ffi = cffi.FFI()
ffi.cdef(_CDEF)
ffi.cdef(_RBD_CDEF)

_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()


def _lib(name: str) -> Any:
    """dlopen on first use, so importing this module works without Ceph installed."""
    with _libs_lock:
        if name not in _libs:
            try:
                _libs[name] = ffi.dlopen(name)
            except OSError as err:
                raise StoreError(
                    errno.ENOENT, f"cannot load {name} (install librados2/librbd1): {err}"
                ) from err
        return _libs[name]


def _rados() -> Any:
    return _lib("librados.so.2")


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise StoreError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


@dataclass(frozen=True, slots=True)
class NotifyResult:
    """Who answered a notify: ``acks`` as (gid, cookie, payload), ``timeouts`` as (gid, cookie).

    ``rc`` is what rados_notify2 returned (0, or -ETIMEDOUT when some watcher did not ack).
    """

    rc: int
    acks: tuple[tuple[int, int, bytes], ...] = ()
    timeouts: tuple[tuple[int, int], ...] = ()

    @property
    def complete(self) -> bool:
        """Every watcher acked in time."""
        return self.rc == 0 and not self.timeouts


def parse_notify_reply(
    buf: bytes,
) -> tuple[tuple[tuple[int, int, bytes], ...], tuple[tuple[int, int], ...]]:
    """Decode rados_notify2's reply buffer (format documented in librados.h)."""
    acks: list[tuple[int, int, bytes]] = []
    timeouts: list[tuple[int, int]] = []
    if not buf:
        return (), ()
    try:
        pos = 0
        (n_acks,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        for _ in range(n_acks):
            gid, cookie, length = struct.unpack_from("<QQI", buf, pos)
            pos += 20
            payload = bytes(buf[pos : pos + length])
            if len(payload) != length:
                raise struct.error("ack payload runs past the buffer")
            pos += length
            acks.append((gid, cookie, payload))
        (n_timeouts,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        for _ in range(n_timeouts):
            timeouts.append(struct.unpack_from("<QQ", buf, pos))
            pos += 16
    except struct.error as err:
        raise StoreError(errno.EBADMSG, f"malformed notify reply: {err}") from err
    return tuple(acks), tuple(timeouts)


def _split_addrs(addrs: str) -> list[str]:
    """``rados_getaddrs`` may give one address or a vector ``[v2:a/n,v1:b/n]``."""
    text = addrs.strip().removeprefix("[").removesuffix("]")
    return [a for a in (part.strip() for part in text.split(",")) if a]


#: Called as on_notify(notify_id, cookie, notifier_gid, payload) on a librados thread.
NotifyCallback = Callable[[int, int, int, bytes], None]
#: Called as on_error(cookie, negative errno) on a librados thread.
ErrorCallback = Callable[[int, int], None]


class Cluster:
    """One librados client connection (one ``client.<id>`` instance, one gid).

    ``op_timeout`` bounds every monitor and OSD operation (seconds), so a dead cluster turns
    into a StoreError (ETIMEDOUT) instead of a hung command.  ``tick`` (seconds) is how often
    librados pings its watches (objecter_tick_interval, 5 s by default): rados_watch_check
    can only vouch for a watch as recently as its last ping.
    """

    def __init__(
        self,
        conf: str | None = None,
        client_id: str | None = None,
        *,
        op_timeout: float = 30,
        tick: float | None = None,
    ) -> None:
        lib = _rados()
        conf = conf if conf is not None else os.environ.get("CEPH_CONF")
        client_id = client_id or os.environ.get("CEPH_ID") or "admin"
        handle = ffi.new("rados_t *")
        _check(lib.rados_create(handle, client_id.encode()), f"rados_create(client.{client_id})")
        self._handle = handle[0]
        try:
            # NULL = the usual search path ($CEPH_CONF, /etc/ceph/ceph.conf, ~/.ceph/ceph.conf).
            path = ffi.NULL if conf is None else conf.encode()
            where = conf or "a ceph.conf ($CEPH_CONF unset; searched /etc/ceph, ~/.ceph, .)"
            _check(lib.rados_conf_read_file(self._handle, path), f"reading {where}")
            _check(lib.rados_conf_parse_env(self._handle, ffi.NULL), "parsing CEPH_ARGS")
            for opt in ("rados_mon_op_timeout", "rados_osd_op_timeout", "client_mount_timeout"):
                _check(
                    # These options take whole seconds.
                    lib.rados_conf_set(self._handle, opt.encode(), b"%d" % math.ceil(op_timeout)),
                    f"setting {opt}",
                )
            if tick is not None:
                rc = lib.rados_conf_set(self._handle, b"objecter_tick_interval", b"%g" % tick)
                _check(rc, "setting objecter_tick_interval")
            _check(lib.rados_connect(self._handle), f"connecting as client.{client_id}")
        except BaseException:
            lib.rados_shutdown(self._handle)
            self._handle = None
            raise
        self.client_id = client_id

    @property
    def gid(self) -> int:
        """This connection's global id (the ``1234`` of ``client.1234``), as watchers list it."""
        return int(_rados().rados_get_instance_id(self._live()))

    @property
    def addrs(self) -> str:
        """This client's messenger address(es), the form ``ceph osd blocklist`` takes."""
        out = ffi.new("char **")
        _check(_rados().rados_getaddrs(self._live(), out), "rados_getaddrs")
        try:
            return ffi.string(out[0]).decode()
        finally:
            _rados().rados_buffer_free(out[0])

    def _live(self) -> Any:
        if self._handle is None:
            raise StoreError(errno.EBADF, "rados connection is shut down")
        return self._handle

    def blocklist(self, addrs: str, expire: int = 3600) -> None:
        """Blocklist a client address (``osd blocklist add``) and wait until this client has
        the OSD map that says so: from then on no OSD serves that client.  Needs the mon cap
        ``profile rbd`` (or ``allow command "osd blocklist"``)."""
        for addr in _split_addrs(addrs):
            rc = _rados().rados_blocklist_add(self._live(), addr.encode(), expire)
            _check(rc, f"blocklisting {addr}")

    @property
    def handle(self) -> int:
        """The ``rados_t`` as an integer, for native code sharing this connection."""
        return int(ffi.cast("uintptr_t", self._live()))

    def open_ioctx(self, pool: str) -> IoCtx:
        io = ffi.new("rados_ioctx_t *")
        _check(_rados().rados_ioctx_create(self._live(), pool.encode(), io), f"pool {pool!r}")
        return IoCtx(self, io[0], pool)

    def watch_flush(self) -> None:
        """Wait until no watch callback runs any more (before freeing what they touch)."""
        _rados().rados_watch_flush(self._live())

    def shutdown(self) -> None:
        if self._handle is not None:
            _rados().rados_shutdown(self._handle)
            self._handle = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class IoCtx:
    """An I/O context on one pool: the object operations the PR slot and its cache need."""

    def __init__(self, cluster: Cluster, handle: Any, pool: str) -> None:
        self.cluster = cluster
        self.pool = pool
        self._handle = handle
        # The cffi callback objects must outlive the watch: keyed by cookie.
        self._watch_callbacks: dict[int, tuple[Any, Any]] = {}

    def _live(self) -> Any:
        if self._handle is None:
            raise StoreError(errno.EBADF, f"ioctx on pool {self.pool!r} is closed")
        return self._handle

    def getxattr(self, oid: str, name: str, *, cap: int) -> bytes | None:
        """The xattr's value, None when the object has no such xattr; at most ``cap`` bytes."""
        size = min(8192, cap)
        while True:
            buf = ffi.new("char[]", size)
            rc = _rados().rados_getxattr(self._live(), oid.encode(), name.encode(), buf, size)
            if rc == -errno.ENODATA:
                return None
            if rc == -errno.ERANGE and size < cap:
                size = min(size * 4, cap)
                continue
            if rc == -errno.ERANGE:
                raise StoreError(errno.EFBIG, f"xattr {name} of {oid} exceeds {cap} bytes")
            _check(rc, f"getxattr {self.pool}/{oid} {name}")
            return bytes(ffi.buffer(buf, rc))

    def setxattr(self, oid: str, name: str, value: bytes) -> None:
        """Unconditional write (a participant's own registry entry; tests)."""
        rc = _rados().rados_setxattr(self._live(), oid.encode(), name.encode(), value, len(value))
        _check(rc, f"setxattr {self.pool}/{oid} {name}")

    def rmxattr(self, oid: str, name: str) -> None:
        """Remove an xattr; one that is already gone is fine."""
        rc = _rados().rados_rmxattr(self._live(), oid.encode(), name.encode())
        if rc != -errno.ENODATA:
            _check(rc, f"rmxattr {self.pool}/{oid} {name}")

    def xattrs(self, oid: str) -> dict[str, bytes]:
        """Every xattr of ``oid`` (name -> value)."""
        lib = _rados()
        it = ffi.new("rados_xattrs_iter_t *")
        _check(lib.rados_getxattrs(self._live(), oid.encode(), it), f"getxattrs {self.pool}/{oid}")
        out: dict[str, bytes] = {}
        name, val, n = ffi.new("char **"), ffi.new("char **"), ffi.new("size_t *")
        try:
            while True:
                _check(lib.rados_getxattrs_next(it[0], name, val, n), "getxattrs_next")
                if name[0] == ffi.NULL:
                    return out
                out[ffi.string(name[0]).decode()] = bytes(ffi.buffer(val[0], n[0]))
        finally:
            lib.rados_getxattrs_end(it[0])

    def create(self, oid: str) -> None:
        """Create ``oid`` empty if it does not exist (idempotent)."""
        lib = _rados()
        op = lib.rados_create_write_op()
        if op == ffi.NULL:
            raise StoreError(errno.ENOMEM, "rados_create_write_op failed")
        try:
            lib.rados_write_op_create(op, LIBRADOS_CREATE_IDEMPOTENT, ffi.NULL)
            rc = lib.rados_write_op_operate(op, self._live(), oid.encode(), ffi.NULL, 0)
        finally:
            lib.rados_release_write_op(op)
        _check(rc, f"create {self.pool}/{oid}")

    @property
    def handle(self) -> int:
        """The ``rados_ioctx_t`` as an integer, for native code sharing this context."""
        return int(ffi.cast("uintptr_t", self._live()))

    def compare_and_set_xattr(self, oid: str, name: str, expected: bytes, new: bytes) -> bool:
        """One write op: object exists + xattr == expected + set xattr. False on a lost race.

        A missing xattr compares equal to ``b""``.  The OSD acks only after the op commits,
        so True means durable.
        """
        lib = _rados()
        op = lib.rados_create_write_op()
        if op == ffi.NULL:
            raise StoreError(errno.ENOMEM, "rados_create_write_op failed")
        try:
            lib.rados_write_op_assert_exists(op)
            lib.rados_write_op_cmpxattr(
                op, name.encode(), LIBRADOS_CMPXATTR_OP_EQ, expected, len(expected)
            )
            lib.rados_write_op_setxattr(op, name.encode(), new, len(new))
            rc = lib.rados_write_op_operate(op, self._live(), oid.encode(), ffi.NULL, 0)
        finally:
            lib.rados_release_write_op(op)
        if rc == -errno.ECANCELED:
            return False
        _check(rc, f"guarded setxattr {self.pool}/{oid} {name}")
        return True

    def watch(
        self, oid: str, on_notify: NotifyCallback, on_error: ErrorCallback, *, timeout: int = 0
    ) -> int:
        """Watch ``oid``; returns the cookie.  Callbacks run on librados threads.

        ``timeout`` (s) is how long the OSD keeps the watch after losing us (0 = its default,
        osd_client_watch_timeout).  An exception in a callback is logged, never propagated.
        """

        def notify_cb(
            _arg: Any, notify_id: int, handle: int, notifier: int, data: Any, n: int
        ) -> None:
            payload = bytes(ffi.buffer(data, n)) if n else b""
            on_notify(notify_id, handle, notifier, payload)

        def error_cb(_arg: Any, cookie: int, err: int) -> None:
            on_error(cookie, err)

        def onerror(exc: Any, value: Any, tb: Any) -> None:
            log.error("watch callback on %s/%s failed", self.pool, oid, exc_info=(exc, value, tb))

        c_notify = ffi.callback("rados_watchcb2_t", notify_cb, onerror=onerror)
        c_error = ffi.callback("rados_watcherrcb_t", error_cb, onerror=onerror)
        cookie = ffi.new("uint64_t *")
        rc = _rados().rados_watch3(
            self._live(), oid.encode(), cookie, c_notify, c_error, timeout, ffi.NULL
        )
        _check(rc, f"watch {self.pool}/{oid}")
        self._watch_callbacks[int(cookie[0])] = (c_notify, c_error)
        return int(cookie[0])

    def watch_check(self, cookie: int) -> int:
        """Milliseconds since the watch was last confirmed; StoreError if it is broken."""
        return _check(_rados().rados_watch_check(self._live(), cookie), "watch check")

    def unwatch(self, cookie: int) -> None:
        """Drop the watch; its callbacks are guaranteed finished when this returns."""
        rc = _rados().rados_unwatch2(self._live(), cookie)
        self.cluster.watch_flush()
        self._watch_callbacks.pop(cookie, None)
        # A watch the OSD already dropped is gone either way.
        if rc not in (0, -errno.ENOTCONN, -errno.ENOENT):
            _check(rc, "unwatch")

    def notify(self, oid: str, payload: bytes, *, timeout_ms: int) -> NotifyResult:
        """Notify every watcher of ``oid`` and wait for their acks, at most ``timeout_ms``."""
        lib = _rados()
        reply = ffi.new("char **")
        reply_len = ffi.new("size_t *")
        rc = lib.rados_notify2(
            self._live(), oid.encode(), payload, len(payload), timeout_ms, reply, reply_len
        )
        try:
            raw = bytes(ffi.buffer(reply[0], reply_len[0])) if reply[0] != ffi.NULL else b""
        finally:
            if reply[0] != ffi.NULL:
                lib.rados_buffer_free(reply[0])
        if rc < 0 and rc != -errno.ETIMEDOUT:
            _check(rc, f"notify {self.pool}/{oid}")
        acks, timeouts = parse_notify_reply(raw)
        return NotifyResult(rc, acks, timeouts)

    def notify_ack(self, oid: str, notify_id: int, cookie: int, payload: bytes = b"") -> None:
        rc = _rados().rados_notify_ack(
            self._live(), oid.encode(), notify_id, cookie, payload, len(payload)
        )
        _check(rc, f"notify ack {self.pool}/{oid}")

    def rbd_image_id(self, image: str) -> tuple[str, int]:
        """The id of RBD image ``image`` in this pool (what python-rbd's ``Image.id()`` gives)
        and its feature bits (RBD_FEATURE_*)."""
        rbd = _lib("librbd.so.1")
        img = ffi.new("rbd_image_t *")
        _check(
            rbd.rbd_open_read_only(self._live(), image.encode(), img, ffi.NULL),
            f"rbd image {self.pool}/{image}",
        )
        try:
            buf = ffi.new("char[]", 64)
            _check(rbd.rbd_get_id(img[0], buf, 64), f"id of rbd image {self.pool}/{image}")
            features = ffi.new("uint64_t *")
            _check(rbd.rbd_get_features(img[0], features), f"features of {self.pool}/{image}")
            return ffi.string(buf).decode(), int(features[0])
        finally:
            rbd.rbd_close(img[0])

    def close(self) -> None:
        if self._handle is not None:
            for cookie in list(self._watch_callbacks):
                try:
                    self.unwatch(cookie)
                except StoreError as err:
                    log.warning("unwatch on close failed: %s", err)
            _rados().rados_ioctx_destroy(self._handle)
            self._handle = None
