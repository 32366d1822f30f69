"""The pure half of tcmu_pr.lio: spec validation, the plans of both modes, the topology rows.

The configfs half needs a LIO kernel: tests/vm/test_layouts.py runs it in the VM.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

from tcmu_pr.daemon import topology as daemon_topology
from tcmu_pr.emulation.device import lu_serial
from tcmu_pr.lio import plan as lio_plan
from tcmu_pr.lio import spec as lio_spec
from tcmu_pr.lio import topology_file
from tcmu_pr.netlink.devconfig import DEV_CONFIG_MAX, parse_dev_config
from tcmu_pr.pr.nexus import Nexus

sys.path.insert(0, str(Path(__file__).parent / "vm"))
import layouts as vm_layouts

GW1 = "iqn.2003-01.org.linux-iscsi.tcmu-pr:gw1"
GW2 = "iqn.2003-01.org.linux-iscsi.tcmu-pr:gw2"
C1 = "iqn.1994-05.org.tcmu-pr:client1"
C2 = "iqn.1994-05.org.tcmu-pr:client2"

ISCSI = {
    "lu": "lu1",
    "store": "file:/srv/lu1.img",
    "fabric": "iscsi",
    "targets": [
        {"wwn": GW1, "portals": ["127.0.0.1:3261"]},
        {"wwn": GW2, "portals": ["127.0.0.1:3262", "[::1]:3263"]},
    ],
    "initiators": [C1, C2],
}
LOOP = {
    "lu": "lu0",
    "store": "file:/srv/lu0.img",
    "targets": [
        {"wwn": "naa.5001405aa0000001", "initiator": "naa.5001405bb0000001"},
        {"wwn": "naa.5001405aa0000002", "initiator": "naa.5001405bb0000002"},
    ],
}


def spec_of(base: dict, **changes: object) -> lio_spec.Spec:
    obj = copy.deepcopy(base)
    obj.update(changes)
    return lio_spec.load_spec(obj)


def test_iscsi_plan_has_one_device_per_initiator_and_tpg() -> None:
    plan = lio_plan.plan(spec_of(ISCSI))
    # 2 initiators x 3 TPGs (gw2 has two portals, so two TPGs, two target ports).
    assert [d.name for d in plan.devices] == [
        "lu1.p1.i1", "lu1.p1.i2", "lu1.p2.i1", "lu1.p2.i2", "lu1.p3.i1", "lu1.p3.i2",
    ]
    ports = [(e.port.target, e.port.tag, e.port.rtpi, e.port.portal) for e in plan.exports]
    assert ports[::2] == [
        (GW1, 1, 1, ("127.0.0.1", 3261)),
        (GW2, 1, 2, ("127.0.0.1", 3262)),
        (GW2, 2, 3, ("::1", 3263)),
    ]
    assert str(plan.exports[5].nexus) == f"{C2},i,0x,{GW2},t,0x2"
    assert {e.device for e in plan.exports} == {d.name for d in plan.devices}


def test_devices_of_one_lu_share_identity_and_disable_lio_pr() -> None:
    plan = lio_plan.plan(spec_of(ISCSI))
    assert {d.serial for d in plan.devices} == {lu_serial("file:/srv/lu1.img")}
    for d in plan.devices:
        assert d.attributes == {"pgr_support": "0", "alua_support": "0"}
    runner = lio_plan.plan(spec_of(ISCSI, backend="tcmu-runner"))
    assert {d.config for d in runner.devices} == {"qcow//srv/lu1.img"}
    assert runner.devices[0].attributes == {"pgr_support": "0"}


def test_dev_config_parses_back_to_the_store_and_rtpi_never_the_nexus() -> None:
    """The nexus has commas (the kernel's control string splits there) and, for iSCSI,
    colons (rtslib refuses them): it lives in the topology file only."""
    plan = lio_plan.plan(spec_of(ISCSI, pr_store="rbd:rbd/lu1"))
    by_name = {d.name: d for d in plan.devices}
    for ex in plan.exports:
        config = by_name[ex.device].config
        assert "," not in config and ":" not in config
        cfg = parse_dev_config(config)
        assert str(cfg.store) == "file:/srv/lu1.img"
        assert str(cfg.pr_store) == "rbd:rbd/lu1"
        assert cfg.nexus is None
        assert cfg.rtpi == ex.port.rtpi
    assert plan.devices[0].config == "tcmu-pr/file//srv/lu1.img;pr_store=rbd/rbd/lu1;rtpi=1"


def test_a_long_nexus_is_fine_it_only_goes_to_the_topology_file() -> None:
    long_init = "iqn.1994-05.org.example:" + "x" * 200
    plan = lio_plan.plan(spec_of(ISCSI, initiators=[long_init]))
    for d in plan.devices:
        assert len(d.config) <= DEV_CONFIG_MAX
    rows = lio_plan.topology_rows(plan, {d.name: f"user_{i}" for i, d in
                                         enumerate(plan.devices)})
    assert Nexus.parse(rows["user_0/lu1.p1.i1"]["nexus"]).initiator == long_init


def test_stores_a_tcmu_config_cannot_carry_are_refused() -> None:
    for store in ("file:/srv/a,b.img", "file:/srv/a:b.img", "file:/srv/a;b.img"):
        with pytest.raises(lio_spec.LayoutError, match="cannot contain"):
            spec_of(ISCSI, store=store)
    assert spec_of(ISCSI, backend="fileio", store="file:/srv/a:b.img").path == "/srv/a:b.img"


def test_loopback_nexus_has_isid_zero_and_ports_are_numbered() -> None:
    plan = lio_plan.plan(spec_of(LOOP))
    assert [str(e.nexus) for e in plan.exports] == [
        "naa.5001405bb0000001,i,0x0,naa.5001405aa0000001,t,0x1",
        "naa.5001405bb0000002,i,0x0,naa.5001405aa0000002,t,0x1",
    ]
    assert [e.port.rtpi for e in plan.exports] == [1, 2]


def test_shared_lio_backend_is_one_device_for_every_path() -> None:
    plan = lio_plan.plan(spec_of(LOOP, backend="fileio"))
    assert [(d.name, d.kind, d.config) for d in plan.devices] == [("lu0", "fileio",
                                                                   "/srv/lu0.img")]
    assert {e.device for e in plan.exports} == {"lu0"}
    assert lio_plan.topology_rows(plan, {"lu0": "fileio_0"}) == {}
    block = lio_plan.plan(spec_of(LOOP, backend="block", store="file:/dev/rbd0"))
    assert [(d.name, d.kind, d.config) for d in block.devices] == [("lu0", "block", "/dev/rbd0")]


def test_topology_rows_are_what_the_daemon_reads() -> None:
    spec = spec_of(ISCSI, identity="lu1-wwn")
    plan = lio_plan.plan(spec)
    hba_of = {d.name: f"user_{i + 4}" for i, d in enumerate(plan.devices)}
    doc = {"devices": lio_plan.topology_rows(plan, hba_of)}
    entries = daemon_topology.parse(json.dumps(doc))
    assert len(entries) == 6
    first = entries["user_4/lu1.p1.i1"]
    assert first.nexus == Nexus(C1, "", GW1, "1")
    assert (first.rtpi, str(first.store), first.identity) == (1, "file:/srv/lu1.img", "lu1-wwn")
    cfg = parse_dev_config(plan.devices[0].config)
    placed = daemon_topology.place("user_4/lu1.p1.i1", cfg.store, cfg.pr_store, cfg.nexus,
                                   cfg.rtpi, entries)
    assert placed.nexus == first.nexus and placed.identity == "lu1-wwn"


def test_merge_topology_replaces_only_this_lu() -> None:
    old = {"devices": {"user_0/a": {"lu": "lu0", "nexus": "x"},
                       "user_1/b": {"lu": "lu1", "nexus": "y"},
                       "user_2/c": {"lu": "lu1", "nexus": "z"}},
           "comment": "kept"}
    new = topology_file.merge(old, "lu1", {"user_3/d": {"lu": "lu1"}})
    assert new == {"devices": {"user_0/a": {"lu": "lu0", "nexus": "x"},
                               "user_3/d": {"lu": "lu1"}}, "comment": "kept"}
    assert topology_file.merge(old, "lu1", {})["devices"] == {"user_0/a": old["devices"]
                                                               ["user_0/a"]}
    assert old["devices"]["user_1/b"] == {"lu": "lu1", "nexus": "y"}  # input untouched


def test_write_topology_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "topology.json"
    assert topology_file.read(str(path)) == {"devices": {}}
    doc = {"devices": {"user_0/lu0.p1.i1": {"lu": "lu0", "rtpi": 1}}}
    topology_file.write(str(path), doc)
    assert topology_file.read(str(path)) == doc
    assert [p.name for p in path.parent.iterdir()] == ["topology.json"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lu": "-bad"}, "lu '-bad'"),
        ({"lu": "a/b"}, "lu 'a/b'"),
        ({"backend": "nbd"}, "backend 'nbd'"),
        ({"fabric": "fc"}, "fabric 'fc'"),
        ({"store": "file:relative"}, "absolute"),
        ({"store": "rbd:rbd/x", "backend": "fileio"}, "needs a file: store"),
        ({"size": -1}, "size"),
        ({"size": True}, "size"),
        ({"lun": 300}, "lun"),
        ({"initiators": []}, "initiators"),
        ({"initiators": [C1, C1]}, "distinct"),
        ({"initiators": ["bad name"]}, "cannot form a nexus"),
        ({"targets": []}, "targets"),
        ({"targets": [{"wwn": GW1}]}, "portals"),
        ({"targets": [{"wwn": GW1, "portals": ["127.0.0.1"]}]}, "IP:PORT"),
        ({"targets": [{"wwn": GW1, "portals": ["h:1"]}, {"wwn": GW1, "portals": ["h:2"]}]},
         "listed twice"),
        ({"attributes": {"Bad-Name": 1}}, "attributes"),
        ({"colour": "blue"}, "unknown spec key"),
    ],
)
def test_bad_specs_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(lio_spec.LayoutError, match=message):
        spec_of(ISCSI, **changes)


def test_loopback_spec_rules() -> None:
    with pytest.raises(lio_spec.LayoutError, match="initiator"):
        spec_of(LOOP, targets=[{"wwn": "naa.5001405aa0000001"}])
    with pytest.raises(lio_spec.LayoutError, match="not 'initiators'"):
        spec_of(LOOP, initiators=[C1])
    with pytest.raises(lio_spec.LayoutError, match="needs a size"):
        spec_of(LOOP, backend="ramdisk")


def test_store_size_from_file(tmp_path: Path) -> None:
    img = tmp_path / "lu.img"
    img.write_bytes(b"\0" * 8192)
    assert lio_spec.store_size(spec_of(LOOP, store=f"file:{img}")) == 8192
    assert lio_spec.store_size(spec_of(LOOP, store=f"file:{img}", size=4096)) == 4096
    with pytest.raises(lio_spec.LayoutError, match="No such file"):
        lio_spec.store_size(spec_of(LOOP, store=f"file:{tmp_path}/missing.img"))


def test_a_block_backstore_exports_the_whole_device(tmp_path: Path) -> None:
    dev = tmp_path / "dev"  # the size is read by seeking, as for a block device
    dev.write_bytes(b"\0" * 8192)
    assert lio_spec.store_size(spec_of(LOOP, backend="block", store=f"file:{dev}")) == 8192
    assert lio_spec.store_size(spec_of(LOOP, backend="block", store=f"file:{dev}",
                                     size=8192)) == 8192  # fmt: skip
    with pytest.raises(lio_spec.LayoutError, match="the device has 8192 bytes"):
        lio_spec.store_size(spec_of(LOOP, backend="block", store=f"file:{dev}", size=4096))


def test_cli_rejects_a_bad_spec_without_touching_lio(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from tcmu_pr.cli import main

    bad = tmp_path / "spec.json"
    bad.write_text('{"lu": "lu0"}')
    assert main(["layout", "apply", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcmu-pr: error: ") and "store" in err and err.count("\n") == 1
    bad.write_text("{not json")
    assert main(["layout", "destroy", str(bad)]) == 2


def test_vm_layout_names_and_export_parsing() -> None:
    assert vm_layouts.command("none") == ""
    assert vm_layouts.command("loopback-mpath:lio-ramdisk-pr") == (
        "/mnt/repo/examples/targetcli/loopback-mpath --backend lio-ramdisk-pr")
    with pytest.raises(ValueError, match="unknown layout"):
        vm_layouts.command("fc-4gw")
    assert vm_layouts.command("iscsi-2gw@file") == "/mnt/repo/examples/targetcli/iscsi-2gw"
    assert vm_layouts.command("loopback-mpath:ours-nexus") == (
        "/mnt/repo/examples/targetcli/loopback-mpath --backend ours-nexus")
    assert vm_layouts.tcmu_module("iscsi-2gw:ours-nexus@rbd") == "patched"
    assert vm_layouts.tcmu_module("iscsi-2gw:ours") is None
    assert vm_layouts.tcmu_module("none") is None
    rbd = vm_layouts.command("iscsi-2gw:ours@rbd")
    assert rbd.startswith(vm_layouts.CEPH_START + " && ")
    assert rbd.endswith("iscsi-2gw --backend ours --store rbd:rbd/lu1")
    with pytest.raises(ValueError, match="unknown store"):
        vm_layouts.command("iscsi-2gw@nfs")
    text = ("noise\nexport TCMU_PR_PATHS='/dev/sda /dev/sdb'\n"
            "export TCMU_PR_NEXUS_1='a,i,0x,b,t,0x1'\nexport TCMU_PR_MPATH=/dev/mapper/mpatha\n")
    assert vm_layouts.parse_exports(text) == {
        "TCMU_PR_PATHS": "/dev/sda /dev/sdb",
        "TCMU_PR_NEXUS_1": "a,i,0x,b,t,0x1",
        "TCMU_PR_MPATH": "/dev/mapper/mpatha",
    }
    with pytest.raises(ValueError):
        vm_layouts.parse_exports("export A=1 B=2\n")


def test_tcmu_runner_on_rbd_uses_its_rbd_handler() -> None:
    spec = lio_spec.load_spec({**ISCSI, "backend": "tcmu-runner", "store": "rbd:rbd/lu1",
                             "size": 64 << 20, "ceph_conf": "/var/lib/c/ceph.conf"})  # fmt: skip
    configs = {d.config for d in lio_plan.plan(spec).devices}
    assert configs == {"rbd/rbd/lu1;conf=/var/lib/c/ceph.conf"}
    with pytest.raises(lio_spec.LayoutError, match="needs a file"):
        lio_spec.load_spec({**ISCSI, "backend": "fileio", "store": "rbd:rbd/lu1", "size": 1 << 20})
    with pytest.raises(lio_spec.LayoutError, match="ceph_conf"):
        lio_spec.load_spec({**ISCSI, "backend": "tcmu-runner", "store": "rbd:rbd/lu1",
                          "size": 1 << 20, "ceph_conf": "/a;id=admin"})  # fmt: skip


def _scale(initiators: int, gateways: int) -> dict:
    return {
        "lu": "lu1", "store": "file:/srv/lu1.img", "fabric": "iscsi",
        "targets": [{"wwn": f"iqn.2003-01.org.linux-iscsi.tcmu-pr:gw{g}",
                     "portals": [f"127.0.0.1:{3260 + g}"]} for g in range(1, gateways + 1)],
        "initiators": [f"iqn.1994-05.org.tcmu-pr:client{c}" for c in range(1, initiators + 1)],
    }


@pytest.mark.parametrize(("initiators", "gateways", "per_nexus"), [(2, 2, 4), (8, 4, 32)])
def test_devices_per_lu_in_both_modes(initiators: int, gateways: int, per_nexus: int) -> None:
    spec = spec_of(_scale(initiators, gateways))
    old, new = lio_plan.plan(spec, "per-nexus"), lio_plan.plan(spec, "nexus")
    assert (len(old.devices), len(new.devices)) == (per_nexus, 1)
    # Either way every initiator reaches the LU through every gateway.
    assert len(old.exports) == len(new.exports) == initiators * gateways


def test_nexus_mode_is_one_plain_backstore_mapped_everywhere() -> None:
    plan = lio_plan.plan(spec_of(ISCSI, pr_store="rbd:rbd/lu1"), "nexus")
    (dev,) = plan.devices
    assert (dev.name, dev.kind, dev.nexus_handles) == ("lu1", "user", True)
    # What targetcli would write: no nexus, no rtpi (LIO's own rtpi of each LUN is right).
    assert dev.config == "tcmu-pr/file//srv/lu1.img;pr_store=rbd/rbd/lu1"
    assert dev.attributes == {"pgr_support": "0", "alua_support": "0"}
    assert {e.device for e in plan.exports} == {"lu1"}
    assert {e.nexus for e in plan.exports} == {None}  # the kernel names each session's
    assert [(e.port.target, e.port.tag, e.initiator) for e in plan.exports[:2]] == [
        (GW1, 1, C1), (GW1, 1, C2)]
    rows = lio_plan.topology_rows(plan, {"lu1": "user_7"})
    assert rows == {"user_7/lu1": {"lu": "lu1", "store": "file:/srv/lu1.img",
                                   "pr_store": "rbd:rbd/lu1"}}
    entries = daemon_topology.parse(json.dumps({"devices": rows}))
    cfg = parse_dev_config(dev.config)
    placed = daemon_topology.place("user_7/lu1", cfg.store, cfg.pr_store, cfg.nexus, cfg.rtpi,
                                   entries)
    assert placed.nexus is None and placed.rtpi is None and placed.lu == "lu1"


def test_nexus_mode_on_loopback() -> None:
    plan = lio_plan.plan(spec_of(LOOP), "nexus")
    assert [d.name for d in plan.devices] == ["lu0"]
    assert [(e.port.target, e.initiator) for e in plan.exports] == [
        ("naa.5001405aa0000001", "naa.5001405bb0000001"),
        ("naa.5001405aa0000002", "naa.5001405bb0000002")]


def test_mode_resolution() -> None:
    auto = spec_of(ISCSI)
    assert lio_plan.resolve_mode(auto, True) == "nexus"
    assert lio_plan.resolve_mode(auto, False) == "per-nexus"
    assert lio_plan.resolve_mode(spec_of(ISCSI, mode="nexus"), False) == "nexus"  # forced
    assert lio_plan.resolve_mode(spec_of(ISCSI, mode="per-nexus"), True) == "per-nexus"
    assert lio_plan.resolve_mode(spec_of(ISCSI, backend="tcmu-runner"), True) == "per-nexus"
    with pytest.raises(lio_spec.LayoutError, match="mode nexus needs backend tcmu-pr"):
        spec_of(ISCSI, backend="tcmu-runner", mode="nexus")
    with pytest.raises(lio_spec.LayoutError, match="mode 'both'"):
        spec_of(ISCSI, mode="both")
    with pytest.raises(ValueError, match="mode 'nexus' for backend fileio"):
        lio_plan.plan(spec_of(LOOP, backend="fileio"), "nexus")


def test_settings_the_kernel_takes_only_at_creation_go_to_the_control_string() -> None:
    plan = lio_plan.plan(spec_of(ISCSI, attributes={"max_data_area_mb": 64,
                                                    "cmd_time_out": 30}))
    dev = plan.devices[0]
    assert dev.control == {"max_data_area_mb": "64"}
    assert dev.attributes == {"pgr_support": "0", "alua_support": "0", "cmd_time_out": "30"}
    with pytest.raises(lio_spec.LayoutError, match="plain word"):
        spec_of(ISCSI, attributes={"cmd_time_out": "30,dev_size=1"})


def test_converge_knows_the_lus_devices_in_either_mode() -> None:
    from tcmu_pr.lio.converge import belongs_to

    spec = spec_of(ISCSI)
    assert belongs_to("lu1", "user", spec) and belongs_to("lu1.p2.i1", "user", spec)
    assert not belongs_to("lu10.p2.i1", "user", spec) and not belongs_to("lu1", "fileio", spec)
    assert belongs_to("lu1", "fileio", spec_of(ISCSI, backend="fileio"))


def test_the_key_and_the_default_path_are_defined_once() -> None:
    from tcmu_pr.daemon import config

    assert daemon_topology.device_key is topology_file.device_key
    assert topology_file.device_key(3, "lu1") == topology_file.device_key("user_3", "lu1")
    assert str(config.DEFAULT_TOPOLOGY) == topology_file.DEFAULT_TOPOLOGY
    assert lio_spec.Spec.__dataclass_fields__["topology"].default == topology_file.DEFAULT_TOPOLOGY


def test_the_library_never_imports_the_cli() -> None:
    import ast

    package = Path(lio_spec.__file__).parent
    for path in package.glob("*.py"):
        if path.name == "commands.py":  # the CLI side of the package
            continue
        tree = ast.parse(path.read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {n for n in names if n and (n == "tcmu_pr.cli" or n.endswith(".commands"))}, path


def test_a_targetcli_made_config_is_the_same_device() -> None:
    from tcmu_pr.lio.converge import _same_config

    wanted = lio_plan.plan(spec_of(ISCSI), "nexus").devices[0].config
    assert _same_config("tcmu_pr/file//srv/lu1.img", wanted)  # targetcli's spelling
    assert _same_config("tcmu-pr/file:/srv/lu1.img", wanted)
    assert not _same_config("tcmu_pr/file//srv/lu2.img", wanted)
    assert not _same_config("tcmu-pr/file//srv/lu1.img;rtpi=1", wanted)
    assert not _same_config("qcow//srv/lu1.img", wanted)
