"""The layouts on a real LIO kernel (QEMU VM): idempotent apply/destroy in both modes,
multipath over per-nexus TCMU devices, ``ours-nexus`` built with plain targetcli (and the
layout tool agreeing with it), and LIO's own PR emulation as the reference transcript."""

from __future__ import annotations

import json
from pathlib import Path

import layouts
import pytest

from tcmu_pr.pr.nexus import Nexus

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
SPEC = "/mnt/repo/tests/vm/specs/iscsi-runner.json"
OURS_SPEC = "/mnt/repo/tests/vm/specs/iscsi-ours.json"
GW = "iqn.2003-01.org.linux-iscsi.tcmu-pr:gw{}"
CLIENTS = ["iqn.1994-05.org.tcmu-pr:client1", "iqn.1994-05.org.tcmu-pr:client2"]
#: Our daemon as the layout scripts start it (RESET stops it by its pid file).
START_DAEMON = """
mkdir -p /run/tcmu-pr && modprobe target_core_user && modprobe iscsi_target_mod
python3 -m tcmu_pr daemon --no-dbus >/run/tcmu-pr/daemon.log 2>&1 &
echo $! >/run/tcmu-pr/daemon.pid
for _ in $(seq 300); do grep -q "daemon ready" /run/tcmu-pr/daemon.log && break; sleep 0.2; done
grep -q "daemon ready" /run/tcmu-pr/daemon.log
"""


def sh(vm, script: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    rc, out = vm.run(script, env={**layouts.GUEST_ENV, **(env or {})}, timeout=timeout)
    assert rc == 0, out
    return out


def show(vm) -> dict:
    return json.loads(sh(vm, "python3 -m tcmu_pr layout show"))


def test_lio_kernel_pr_matches_the_reference(vm) -> None:
    env = layouts.setup(vm, "loopback-mpath:lio-ramdisk-pr")
    out = sh(vm, "bash /mnt/repo/tests/vm/scenarios/sg-persist-basic.sh", env=env)
    assert out == (HERE / "expected" / "lio-kernel-pr.txt").read_text()


def test_apply_converges_and_destroy_cleans_up(vm) -> None:
    """tcmu-runner serves the devices so that the kernel accepts them (a TCMU device with
    no daemon that ever announced reply support is accepted too, but then hangs the first
    SCSI scan; after a daemon exited it hangs the creation itself)."""
    layouts.setup(vm, "none")
    sh(vm, "mkdir -p /run/tcmu-pr && truncate -s 16M /tmp/lu9.img && modprobe target_core_user"
           " && { pgrep -x dbus-daemon || { mkdir -p /run/dbus; dbus-daemon --system --fork; }; }"
           " && { tcmu-runner >/run/tcmu-pr/tcmu-runner.log 2>&1 & echo $! >"
           " /run/tcmu-pr/tcmu-runner.pid; } && sleep 1")
    first = sh(vm, f"python3 -m tcmu_pr layout apply {SPEC}")
    before = show(vm)
    again = sh(vm, f"python3 -m tcmu_pr layout apply {SPEC}")
    assert again == first
    assert show(vm) == before  # nothing duplicated, nothing recreated (same user_N dirs)
    storage = {s["path"].split("/")[1]: s for s in before["storage"]}
    assert sorted(storage) == ["lu9.p1.i1", "lu9.p1.i2", "lu9.p2.i1", "lu9.p2.i2"]
    assert {s["config"] for s in storage.values()} == {"qcow//tmp/lu9.img"}
    assert {s["pgr_support"] for s in storage.values()} == {"0"}
    assert len({s["serial"] for s in storage.values()}) == 1
    tpgs = {t["wwn"]: t["tpgs"][0] for t in before["targets"]}
    for tpg in tpgs.values():
        # Each initiator's mapped LUN 0 is its own device on that port.
        acl_luns = {acl: m["0"] for acl, m in tpg["acls"].items()}
        assert sorted(tpg["luns"][str(n)].split("/")[1][-2:] for n in acl_luns.values()) == [
            "i1", "i2"]
    # Dropping an initiator from the spec removes its devices and mappings on re-apply.
    sh(vm, f"python3 - <<'PY'\nimport json\ns=json.load(open('{SPEC}'))\n"
           "s['initiators']=s['initiators'][:1]\njson.dump(s, open('/tmp/one.json','w'))\nPY\n"
           "python3 -m tcmu_pr layout apply /tmp/one.json")
    after = show(vm)
    assert sorted(s["path"].split("/")[1] for s in after["storage"]) == ["lu9.p1.i1",
                                                                        "lu9.p2.i1"]
    for target in after["targets"]:
        assert all(m == {} for acl, m in target["tpgs"][0]["acls"].items()
                   if acl.endswith("client2"))
    sh(vm, f"python3 -m tcmu_pr layout destroy {SPEC}")
    gone = show(vm)
    assert gone["storage"] == [] and gone["targets"] == []


def test_loopback_mpath_groups_tcmu_runner_paths(vm) -> None:
    env = layouts.setup(vm, "loopback-mpath:tcmu-runner")
    paths = env["TCMU_PR_PATHS"].split()
    assert len(paths) == 4 and env["TCMU_PR_MPATH"].startswith("/dev/mapper/")
    out = sh(vm, 'for p in $TCMU_PR_PATHS; do sg_inq -p 0x80 "$p" | tail -n 1; done\n'
                 'multipath -ll "$TCMU_PR_MPATH" 2>/dev/null | grep -c " sd"\n'
                 # Data written through the map reads back through every path.
                 'printf tcmu-pr-%.0s {1..128} | dd of="$TCMU_PR_MPATH" oflag=direct bs=1024'
                 ' count=1 2>/dev/null\n'
                 'for p in $TCMU_PR_PATHS; do dd if="$p" iflag=direct bs=512 count=1'
                 ' 2>/dev/null | head -c 14; echo; done', env=env)
    lines = out.splitlines()
    assert len(set(lines[:4])) == 1 and "Unit serial number" in lines[0]
    assert lines[4] == "4"
    assert lines[5:] == ["tcmu-pr-tcmu-p"] * 4


def test_our_daemon_matches_lio_except_the_relative_port(vm) -> None:
    """Same scenario through per-nexus devices served by `tcmu-pr daemon`.  The one known
    difference: LIO reports relative port 0 for tcm_loop ports, we report the layout's rtpi."""
    env = layouts.setup(vm, "loopback-mpath:ours")
    out = sh(vm, "bash /mnt/repo/tests/vm/scenarios/sg-persist-basic.sh", env=env)
    expected = (HERE / "expected" / "lio-kernel-pr.txt").read_text()
    rtpi = iter(["0x1", "0x2"])  # P1 and P2 are target ports 1 and 2
    lines = [line.replace("Relative port address: 0x0", f"Relative port address: {next(rtpi)}")
             if "Relative port address" in line else line for line in expected.splitlines()]
    assert out.splitlines() == lines


def test_both_modes_converge_into_each_other_and_destroy_cleans_up(vm) -> None:
    """Per-nexus (4 devices) -> nexus mode (1 device, forced on a stock module) -> back: each
    apply leaves exactly its mode's devices, LUNs, mappings and topology rows."""
    layouts.setup(vm, "none")
    sh(vm, "truncate -s 16M /tmp/lu9.img" + START_DAEMON, timeout=200)
    sh(vm, f"python3 -m tcmu_pr layout apply --mode per-nexus {OURS_SPEC}")
    per = show(vm)
    assert sorted(s["path"].split("/")[1] for s in per["storage"]) == [
        "lu9.p1.i1", "lu9.p1.i2", "lu9.p2.i1", "lu9.p2.i2"]
    assert sorted(r["nexus"].split(",")[0] for r in per["topology"].values()) == sorted(CLIENTS * 2)
    out = sh(vm, f"python3 -m tcmu_pr layout apply --mode nexus {OURS_SPEC} 2>&1")
    nexus = show(vm)
    (so,) = nexus["storage"]
    assert so["path"].endswith("/lu9") and so["config"] == "tcmu-pr/file//tmp/lu9.img"
    if "nexus_handles" in so:  # the patched module
        assert (so["pgr_support"], so["alua_support"], so["nexus_handles"]) == ("0", "0", "1")
    else:  # pgr_support is left to the daemon (LIO's own PR for a device without nexus)
        assert "no nexus_handles (stock module)" in out and so["alua_support"] == "0"
    assert nexus["topology"] == {so["path"]: {"lu": "lu9", "store": "file:/tmp/lu9.img"}}
    for target in nexus["targets"]:
        (tpg,) = target["tpgs"]
        assert tpg["luns"] == {"0": so["path"]}
        assert tpg["acls"] == {c: {"0": 0} for c in CLIENTS}
    again = sh(vm, f"python3 -m tcmu_pr layout apply --mode nexus {OURS_SPEC} 2>&1")
    assert again == out and show(vm) == nexus
    sh(vm, f"python3 -m tcmu_pr layout apply --mode per-nexus {OURS_SPEC}")
    assert len(show(vm)["storage"]) == 4
    sh(vm, f"python3 -m tcmu_pr layout destroy {OURS_SPEC}")
    gone = show(vm)
    assert gone["storage"] == [] and gone["targets"] == [] and gone["topology"] == {}


def test_ours_nexus_is_plain_targetcli_and_layout_apply_agrees(vm) -> None:
    """iscsi-2gw:ours-nexus: one user:tcmu_pr backstore, LUN 0 in each gateway's TPG, an ACL
    per initiator, made by targetcli; `layout apply` in nexus mode finds nothing to change."""
    env = layouts.setup(vm, "iscsi-2gw:ours-nexus")
    before = show(vm)
    (so,) = before["storage"]
    assert so["plugin"] == "user" and so["path"].endswith("/lu1")
    assert so["config"] == "tcmu_pr/file//var/lib/tcmu-pr/lu1.img"  # targetcli's spelling
    if "nexus_handles" in so:  # the patched module; a stock one: the daemon's defaults
        assert (so["pgr_support"], so["alua_support"], so["nexus_handles"]) == ("0", "0", "1")
    assert before["topology"] == {}  # no layout tool, no topology file
    tpgs = {t["wwn"]: t["tpgs"] for t in before["targets"]}
    assert sorted(tpgs) == [GW.format(1), GW.format(2)]
    for g in (1, 2):
        (tpg,) = tpgs[GW.format(g)]
        assert tpg["luns"] == {"0": so["path"]}
        assert tpg["acls"] == {c: {"0": 0} for c in CLIENTS}
        assert tpg["portals"] == [f"127.0.0.1:326{g}"]
    # One session per (initiator, gateway), each nexus with its session's real ISID.
    nexuses = [Nexus.parse(env[f"TCMU_PR_NEXUS_{n}"]) for n in range(1, 5)]
    assert [(n.initiator, n.target) for n in nexuses] == [
        (c, GW.format(g)) for c in CLIENTS for g in (1, 2)]
    assert all(n.isid and n.isid != "0" for n in nexuses), nexuses
    sh(vm, "python3 -m tcmu_pr layout apply --mode nexus $TCMU_PR_SPEC", env=env)
    after = show(vm)
    # The same backstore (not recreated: same user_N, LIO serial), LUNs and mappings.
    assert [(s["path"], s["serial"]) for s in after["storage"]] == [(so["path"], so["serial"])]
    assert after["targets"] == before["targets"]
    out = sh(vm, 'for p in $TCMU_PR_PATHS; do sg_inq -p 0x80 "$p" | tail -n 1; done\n'
                 'printf nexus-%.0s {1..128} | dd of="${TCMU_PR_PATHS%% *}" oflag=direct'
                 ' bs=512 count=1 2>/dev/null\n'
                 'dd if="${TCMU_PR_PATHS##* }" iflag=direct bs=512 count=1 2>/dev/null'
                 ' | head -c 12; echo', env=env)
    lines = out.splitlines()
    assert len(set(lines[:4])) == 1 and "Unit serial number" in lines[0], out
    assert lines[4] == "nexus-nexus-"


def test_loopback_mpath_ours_nexus_is_one_device_behind_every_path(vm) -> None:
    env = layouts.setup(vm, "loopback-mpath:ours-nexus")
    state = show(vm)
    (so,) = state["storage"]
    assert so["config"] == "tcmu_pr/file//var/lib/tcmu-pr/lu0.img"
    assert sorted((t["wwn"], t["tpgs"][0]["nexus"], t["tpgs"][0]["luns"]["0"])
                  for t in state["targets"]) == [
        (f"naa.5001405aa000000{n}", f"naa.5001405bb000000{n}", so["path"]) for n in range(1, 5)]
    assert [env[f"TCMU_PR_NEXUS_{n}"] for n in range(1, 5)] == [
        f"naa.5001405bb000000{n},i,0x0,naa.5001405aa000000{n},t,0x1" for n in range(1, 5)]
    out = sh(vm, 'multipath -ll "$TCMU_PR_MPATH" 2>/dev/null | grep -c " sd"\n'
                 'printf mpath-%.0s {1..128} | dd of="$TCMU_PR_MPATH" oflag=direct bs=1024'
                 ' count=1 2>/dev/null\n'
                 'for p in $TCMU_PR_PATHS; do dd if="$p" iflag=direct bs=512 count=1'
                 ' 2>/dev/null | head -c 10; echo; done', env=env)
    assert out.splitlines() == ["4"] + ["mpath-mpat"] * 4
