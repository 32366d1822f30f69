"""org.kernel.TCMUService1 as targetcli-fb uses it, on a private dbus-daemon.

python3-gi and dbus come from scripts/apt-packages.txt; if they are missing these tests fail
(an ImportError or an assertion), they are never skipped.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from gi.repository import Gio

from tcmu_pr.daemon.dbus import CONFIG_DESC, DBUS_HANDLER, DBusService, check_config


@pytest.fixture
def bus(tmp_path):
    assert shutil.which("dbus-daemon"), "dbus-daemon missing: run scripts/setup"
    proc = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1",
         f"--address=unix:path={tmp_path}/bus"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    address = proc.stdout.readline().strip()
    yield address
    proc.terminate()
    proc.wait(5)


def connect(address: str):
    flags = (
        Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
        | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
    )
    return Gio.DBusConnection.new_for_address_sync(address, flags, None, None)


def test_targetcli_finds_the_handler_and_checks_configs(bus, tmp_path):
    image = tmp_path / "lu0.img"
    image.write_bytes(bytes(4096))
    service = DBusService(bus, check=lambda c: check_config(c.replace("tcmu_pr/", "tcmu-pr/")))
    assert service.start() and service.owns_name
    try:
        conn = connect(bus)
        # What ui_backstore.UIBackstores._user_backstores does, call for call.
        mgr = Gio.DBusProxy.new_sync(conn, Gio.DBusProxyFlags.NONE, None,
                                     "org.kernel.TCMUService1", "/org/kernel/TCMUService1",
                                     "org.freedesktop.DBus.ObjectManager", None)  # fmt: skip
        objects = mgr.GetManagedObjects()
        assert list(objects) == [f"/org/kernel/TCMUService1/{DBUS_HANDLER}"]
        path, props = next(iter(objects.items()))
        assert path.rsplit("/", 1)[1] == "tcmu_pr"  # targetcli shows user:tcmu_pr
        assert props["org.kernel.TCMUService1"]["ConfigDesc"] == CONFIG_DESC
        handler = Gio.DBusProxy.new_sync(conn, Gio.DBusProxyFlags.NONE, None,
                                         "org.kernel.TCMUService1", path,
                                         "org.kernel.TCMUService1", None)  # fmt: skip
        assert handler.CheckConfig("(s)", f"tcmu_pr/file:{image}") == (True, "success")
        ok, why = handler.CheckConfig("(s)", f"tcmu_pr/file:{tmp_path}/missing.img")
        assert not ok and "No such file" in why
        ok, why = handler.CheckConfig("(s)", f"tcmu_pr/file:{image};colour=red")
        assert not ok and "unknown option 'colour'" in why
        assert handler.get_cached_property("ConfigDesc").unpack() == CONFIG_DESC
    finally:
        service.stop()


def test_second_owner_is_told_the_name_is_taken(bus):
    first, second = DBusService(bus), DBusService(bus)
    assert first.start() and first.owns_name
    try:
        assert second.start()  # still serves, without the name
        assert not second.owns_name
    finally:
        second.stop()
        first.stop()


def test_no_bus_is_not_fatal(tmp_path, caplog):
    service = DBusService(f"unix:path={tmp_path}/nobody-listens")
    assert service.start() is False
    assert "D-Bus service disabled" in caplog.text


def test_check_config_without_dbus(tmp_path):
    image = tmp_path / "lu0.img"
    image.write_bytes(b"")
    assert check_config(f"tcmu-pr/file:{image}") == (True, "success")
    assert check_config(f"tcmu-pr/file:{image};rtpi=0")[0] is False
    assert check_config("qcow//srv/x.qcow2")[0] is False
    ok, why = check_config(f"tcmu-pr/file:{tmp_path}")
    assert not ok and "neither a regular file" in why
    # RBD stores are not contacted: only the grammar is checked.
    assert check_config("tcmu-pr/rbd:rbd/disk1;rtpi=2") == (True, "success")
    # The D-Bus spelling of the handler, which targetcli writes, is the same handler.
    assert check_config(f"{DBUS_HANDLER}/file:{image}") == (True, "success")
