"""Daemon configuration file and topology file: defaults, every error named, pure placing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcmu_pr.daemon import config, topology
from tcmu_pr.daemon.config import ConfigError, DaemonConfig
from tcmu_pr.daemon.topology import Placement, TopologyEntry, TopologyError, place
from tcmu_pr.nexus import Nexus

EXAMPLE = Path(__file__).parent.parent / "examples" / "tcmu-pr.conf"
NA = Nexus.parse("iqn.1994-05.com.redhat:a,i,0x1,iqn.2003-01.org.gw:x,t,0x1")
NB = Nexus.parse("iqn.1994-05.com.redhat:b,i,0x2,iqn.2003-01.org.gw:x,t,0x1")
STORE = "file:/srv/lu0.img"


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.conf")
    assert config.load() == DaemonConfig()
    with pytest.raises(ConfigError, match="no such configuration file"):
        config.load(tmp_path / "absent.conf")


def test_example_file_parses_to_the_defaults():
    assert config.load(EXAMPLE) == DaemonConfig()


def test_values_are_read():
    cfg = config.parse(
        '[daemon]\ntopology = "/t.json"\nring = "python"\nblock_size = 4096\n'
        'store_poll_ms = 50\n[dbus]\nenabled = false\naddress = "unix:path=/x"\n'
    )
    assert cfg == DaemonConfig(
        topology=Path("/t.json"), ring="python", block_size=4096, store_poll_ms=50,
        dbus=False, dbus_address="unix:path=/x",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon\n", "not valid TOML"),
        ("[demon]\n", r"unknown section \[demon\]"),
        ("[daemon]\nringg = 'auto'\n", "unknown key daemon.ringg"),
        ("[daemon]\nblock_size = 1024\n", "daemon.block_size must be one of 512, 4096"),
        ("[daemon]\nblock_size = true\n", "daemon.block_size"),
        ("[daemon]\nstore_poll_ms = 1\n", "daemon.store_poll_ms must be an integer"),
        ("[daemon]\ntopology = 'rel.json'\n", "daemon.topology must be an absolute path"),
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level must be one of"),
        ("[dbus]\nenabled = 'yes'\n", "dbus.enabled must be true or false"),
        ("daemon = 1\n", "daemon must be a"),
    ],
)
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError, match=message):
        config.parse(text, source="x.conf")


def test_topology_file_parsing(tmp_path):
    path = tmp_path / "topology.json"
    assert topology.load(path) == {}
    path.write_text(
        '{"devices": {"user_1/a": {"lu": "lu0", "store": "file:/srv/lu0.img", '
        f'"nexus": "{NA}", "rtpi": 3, "written_by": "layout 2"}}}}}}'
    )
    assert topology.load(path) == {"user_1/a": TopologyEntry("lu0", STORE, None, None, NA, 3)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ('{"device": {}}', "expected"),
        ('{"devices": {"k": []}}', "must be an object"),
        ('{"devices": {"k": {"nexus": "iqn.x"}}}', "nexus: not an I_T nexus"),
        ('{"devices": {"k": {"rtpi": 0}}}', "rtpi must be an integer 1..65535"),
        ('{"devices": {"k": {"lu": ""}}}', "lu must be a non-empty string"),
    ],
)
def test_topology_errors(text, message):
    with pytest.raises(TopologyError, match=message):
        topology.parse(text)


def test_place_precedence_and_conflicts():
    file_only = {"user_1/a": TopologyEntry("lu0", STORE, None, "wwn-1", NA, 2)}
    assert place("user_1/a", STORE, STORE, None, None, file_only) == Placement(
        "lu0", "wwn-1", NA, 2, "topology file"
    )
    # dev_config alone; no entry: identity defaults to the store, same on every gateway.
    assert place("user_1/b", STORE, "rbd:p/i", NB, 7, {}) == Placement(
        STORE, STORE, NB, 7, "dev_config"
    )
    assert place("user_1/c", STORE, STORE, None, None, {}).nexus is None
    with pytest.raises(TopologyError, match="disagrees"):
        place("user_1/a", STORE, STORE, NB, None, file_only)
    with pytest.raises(TopologyError, match="rtpi 5 disagrees"):
        place("user_1/a", STORE, STORE, None, 5, file_only)
    with pytest.raises(TopologyError, match="is for store"):
        place("user_1/a", "file:/srv/other.img", STORE, None, None, file_only)
    moved = {"user_1/a": TopologyEntry(pr_store="rbd:p/i")}
    with pytest.raises(TopologyError, match="PR store"):
        place("user_1/a", STORE, STORE, None, None, moved)
