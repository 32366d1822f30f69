"""org.kernel.TCMUService1 on D-Bus: what targetcli-fb asks before it creates ``user:`` LUs.

targetcli (ui_backstore.py) lists TCMU handlers with the ObjectManager at
``/org/kernel/TCMUService1`` (bus name ``org.kernel.TCMUService1``), names each handler after
the last element of its object path, shows its ``ConfigDesc`` property in ``help create``,
and calls ``CheckConfig(s) -> (b, s)`` with ``<handler>/<cfgstring>`` before writing the
config to configfs.  tcmu-runner serves the same interface; run one or the other, not both
(both would also answer the kernel's netlink commands).

Built on Gio (python3-gi), which targetcli itself depends on, so a host that has targetcli
has the library.  Optional at runtime: without a bus (or with the name taken) the daemon
logs one warning and serves LUs anyway; only targetcli's ``user:`` backstores are missing.

D-Bus object path elements allow only ``[A-Za-z0-9_]``, so the handler ``tcmu-pr`` is
exported as ``tcmu_pr``; targetcli then builds configs starting ``tcmu_pr/``, which the
netlink side accepts as an alias (devconfig.HANDLER_ALIAS).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from typing import Any

from tcmu_pr.netlink.devconfig import HANDLER_ALIAS, DeviceStringError, parse_dev_config

log = logging.getLogger(__name__)

BUS_NAME = "org.kernel.TCMUService1"
ROOT_PATH = "/org/kernel/TCMUService1"
INTERFACE = "org.kernel.TCMUService1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
#: The handler's name as a D-Bus object path element (and so as targetcli spells it).
DBUS_HANDLER = HANDLER_ALIAS

CONFIG_DESC = (
    "<store>[;pr_store=<store>][;nexus=<I_T nexus>][;rtpi=<1..65535>]\n"
    "  <store> is file:<absolute path> or rbd:<pool>/<image>\n"
    "  nexus: <initiator>,i,0x<isid>,<target port>,t,0x<tpgt> (else the topology file)\n"
    "  Example: file:/srv/lu0.img;rtpi=1"
)

_MANAGER_XML = f"""<node><interface name="{OBJECT_MANAGER}">
  <method name="GetManagedObjects">
    <arg type="a{{oa{{sa{{sv}}}}}}" name="objects" direction="out"/>
  </method>
</interface></node>"""

_HANDLER_XML = f"""<node><interface name="{INTERFACE}">
  <property name="ConfigDesc" type="s" access="read"/>
  <method name="CheckConfig">
    <arg type="s" name="configstr" direction="in"/>
    <arg type="b" name="is_valid" direction="out"/>
    <arg type="s" name="message" direction="out"/>
  </method>
</interface></node>"""

_REQUEST_NAME_DO_NOT_QUEUE = 0x4
_PRIMARY_OWNER = 1


def check_config(config: str) -> tuple[bool, str]:
    """CheckConfig's answer for a full ``<handler>/<cfgstring>``; pure apart from a stat.

    The grammar is the netlink side's (parse_dev_config), so what passes here is what
    ADDED_DEVICE accepts; a file store must also exist (a missing image is the commonest
    typo, and the device would only be refused later, less visibly).
    """
    try:
        parsed = parse_dev_config(config)
    except DeviceStringError as err:
        return False, str(err)
    for spec in dict.fromkeys((parsed.store, parsed.pr_store)):
        if not spec.is_file:
            continue
        try:
            mode = os.stat(spec.path).st_mode
        except OSError as err:
            return False, f"{spec.path}: {err.strerror}"
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            return False, f"{spec.path} is neither a regular file nor a block device"
    return True, "success"


class DBusService:
    """The TCMUService1 objects on a bus, served by a GLib main loop on its own thread."""

    def __init__(
        self, address: str = "", check: Callable[[str], tuple[bool, str]] = check_config
    ) -> None:
        self.address = address
        self.check = check
        self.owns_name = False
        self._thread: threading.Thread | None = None
        self._loop: Any = None
        self._ready = threading.Event()
        self._error: str | None = None

    def start(self, timeout: float = 10.0) -> bool:
        """Connect, export, request the name; False (logged) when D-Bus is unavailable."""
        try:
            import gi  # noqa: F401
            from gi.repository import Gio, GLib  # noqa: F401
        except ImportError as err:
            log.warning("D-Bus service disabled: python3-gi is not installed (%s)", err)
            return False
        self._thread = threading.Thread(target=self._run, name="dbus", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            log.warning("D-Bus service disabled: no answer from the bus in %.0f s", timeout)
            return False
        if self._error is not None:
            log.warning("D-Bus service disabled: %s", self._error)
            self._thread.join()
            self._thread = None
            return False
        return True

    def _run(self) -> None:
        from gi.repository import Gio, GLib

        ctx = GLib.MainContext()
        ctx.push_thread_default()
        try:
            try:
                conn = self._connect(Gio)
                self._export(conn, Gio)
                self.owns_name = self._request_name(conn, GLib)
            except GLib.Error as err:
                self._error = err.message
                self._ready.set()
                return
            self._loop = GLib.MainLoop(ctx)
            self._ready.set()
            self._loop.run()
            conn.close_sync(None)
        finally:
            ctx.pop_thread_default()

    def _connect(self, Gio: Any) -> Any:
        address = self.address or Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)
        flags = (
            Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
        )
        return Gio.DBusConnection.new_for_address_sync(address, flags, None, None)

    def _export(self, conn: Any, Gio: Any) -> None:
        manager = Gio.DBusNodeInfo.new_for_xml(_MANAGER_XML).interfaces[0]
        handler = Gio.DBusNodeInfo.new_for_xml(_HANDLER_XML).interfaces[0]
        conn.register_object(ROOT_PATH, manager, self._on_manager_call, None, None)
        conn.register_object(
            f"{ROOT_PATH}/{DBUS_HANDLER}", handler, self._on_handler_call, self._on_get, None
        )

    def _request_name(self, conn: Any, GLib: Any) -> bool:
        reply = conn.call_sync(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "RequestName",
            GLib.Variant("(su)", (BUS_NAME, _REQUEST_NAME_DO_NOT_QUEUE)),
            GLib.VariantType("(u)"),
            0,
            -1,
            None,
        )
        (code,) = reply.unpack()
        if code != _PRIMARY_OWNER:
            log.warning(
                "D-Bus name %s is taken (is tcmu-runner running?): targetcli will not see "
                "the %s handler",
                BUS_NAME,
                DBUS_HANDLER,
            )
            return False
        log.info("D-Bus: %s serves handler %s", BUS_NAME, DBUS_HANDLER)
        return True

    # -- callbacks (on the D-Bus thread) ---------------------------------------------------

    def _on_manager_call(self, _conn, _sender, _path, _iface, method, _params, invocation):  # type: ignore[no-untyped-def]
        from gi.repository import GLib

        if method != "GetManagedObjects":
            invocation.return_dbus_error("org.freedesktop.DBus.Error.UnknownMethod", method)
            return
        props = {"ConfigDesc": GLib.Variant("s", CONFIG_DESC)}
        objects = {f"{ROOT_PATH}/{DBUS_HANDLER}": {INTERFACE: props}}
        invocation.return_value(GLib.Variant("(a{oa{sa{sv}}})", (objects,)))

    def _on_handler_call(self, _conn, _sender, _path, _iface, method, params, invocation):  # type: ignore[no-untyped-def]
        from gi.repository import GLib

        if method != "CheckConfig":
            invocation.return_dbus_error("org.freedesktop.DBus.Error.UnknownMethod", method)
            return
        (config,) = params.unpack()
        try:
            ok, message = self.check(config)
        except Exception as err:  # never leave targetcli without an answer
            log.exception("CheckConfig(%r) failed", config)
            ok, message = False, f"internal error: {err}"
        log.info("CheckConfig(%r) -> %s: %s", config, ok, message)
        invocation.return_value(GLib.Variant("(bs)", (ok, message)))

    def _on_get(self, _conn, _sender, _path, _iface, prop):  # type: ignore[no-untyped-def]
        from gi.repository import GLib

        return GLib.Variant("s", CONFIG_DESC) if prop == "ConfigDesc" else None

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.quit()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
