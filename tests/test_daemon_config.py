"""Daemon configuration file and topology file: defaults, every error named, pure placing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcmu_pr.backends.base import StoreOptions
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.daemon import config, topology
from tcmu_pr.daemon.config import DaemonConfig, DaemonConfigError
from tcmu_pr.daemon.topology import Placement, TopologyEntry, TopologyError, place
from tcmu_pr.pr.nexus import Nexus

EXAMPLE = Path(__file__).parent.parent / "tcmu_pr" / "system" / "tcmu-pr.conf"
NA = Nexus.parse("iqn.1994-05.com.redhat:a,i,0x1,iqn.2003-01.org.gw:x,t,0x1")
NB = Nexus.parse("iqn.1994-05.com.redhat:b,i,0x2,iqn.2003-01.org.gw:x,t,0x1")
STORE = StoreSpec.parse("file:/srv/lu0.img")
RBD = StoreSpec.parse("rbd:p/i")


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.conf")
    assert config.load() == DaemonConfig()
    with pytest.raises(DaemonConfigError, match="no such configuration file"):
        config.load(tmp_path / "absent.conf")


def test_example_file_parses_to_the_defaults():
    assert config.load(EXAMPLE) == DaemonConfig()


def test_values_are_read():
    cfg = config.parse(
        '[daemon]\ntopology = "/t.json"\nring = "python"\nblock_size = 4096\n'
        '[dbus]\nenabled = false\naddress = "unix:path=/x"\n'
        '[store]\nack_timeout_ms = 2000\nfence = false\nceph_conf = "/etc/ceph/c.conf"\n'
        'ceph_id = "gw1"\n'
    )
    assert cfg == DaemonConfig(
        topology=Path("/t.json"), ring="python", block_size=4096,
        dbus=False, dbus_address="unix:path=/x", ack_timeout_ms=2000, fence=False,
        ceph_conf="/etc/ceph/c.conf", ceph_id="gw1",
    )  # fmt: skip
    assert cfg.store_options == StoreOptions(2.0, False, "/etc/ceph/c.conf", "gw1")
    assert DaemonConfig().store_options == StoreOptions()  # empty strings: librados' defaults


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon\n", "not valid TOML"),
        ("[demon]\n", r"unknown section \[demon\]"),
        ("[daemon]\nringg = 'auto'\n", "unknown key daemon.ringg"),
        ("[daemon]\nblock_size = 1024\n", "daemon.block_size must be one of 512, 4096"),
        ("[daemon]\nblock_size = true\n", "daemon.block_size"),
        ("[daemon]\nstore_poll_ms = 100\n", "unknown key daemon.store_poll_ms"),  # no polling
        ("[store]\nack_timeout_ms = 500\n", "store.ack_timeout_ms must be an integer from 1000"),
        ("[store]\nfence = 1\n", "store.fence must be true or false"),
        ("[store]\nceph_conf = 'ceph.conf'\n", "store.ceph_conf must be an absolute path"),
        ("[store]\nceph_id = 7\n", "store.ceph_id must be a string"),
        ("[daemon]\ntopology = 'rel.json'\n", "daemon.topology must be an absolute path"),
        ("[daemon]\nlog_level = 'loud'\n", "daemon.log_level must be one of"),
        ("[dbus]\nenabled = 'yes'\n", "dbus.enabled must be true or false"),
        ("daemon = 1\n", "daemon must be a"),
    ],
)
def test_errors_name_the_key(text, message):
    with pytest.raises(DaemonConfigError, match=message):
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
        ('{"devices": {"k": {"store": "file:rel.img"}}}', "store: .* must be absolute"),
        ('{"devices": {"k": {"pr_store": "rbd:p"}}}', "pr_store: .*rbd:POOL/IMAGE"),
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
    assert place("user_1/b", STORE, RBD, NB, 7, {}) == Placement(
        str(STORE), str(STORE), NB, 7, "dev_config"
    )
    assert place("user_1/c", STORE, STORE, None, None, {}).nexus is None
    with pytest.raises(TopologyError, match="disagrees"):
        place("user_1/a", STORE, STORE, NB, None, file_only)
    with pytest.raises(TopologyError, match="rtpi 5 disagrees"):
        place("user_1/a", STORE, STORE, None, 5, file_only)
    with pytest.raises(TopologyError, match="is for store"):
        place("user_1/a", StoreSpec.file("/srv/other.img"), STORE, None, None, file_only)
    # Spelled differently, the same store: the slash spelling of the dev_config matches.
    spelled = topology.parse('{"devices": {"user_1/a": {"store": "file//srv/./lu0.img"}}}')
    assert place("user_1/a", STORE, STORE, None, None, spelled).nexus is None
    moved = {"user_1/a": TopologyEntry(pr_store=RBD)}
    with pytest.raises(TopologyError, match="PR store"):
        place("user_1/a", STORE, STORE, None, None, moved)
