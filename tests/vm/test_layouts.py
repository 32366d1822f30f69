"""The layouts on a real LIO kernel (QEMU VM): idempotent apply/destroy, multipath over
per-nexus TCMU devices, and LIO's own PR emulation as the reference transcript."""

from __future__ import annotations

import json
from pathlib import Path

import layouts
import pytest

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent
SPEC = "/mnt/repo/tests/vm/specs/iscsi-runner.json"


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
