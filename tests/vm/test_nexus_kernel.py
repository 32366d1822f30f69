"""The nexus-handle target_core_user (kernel/patches) on the real kernel, without the daemon.

One TCMU device (user_77/nx0) is served by tests/vm/tools/nexus_ring.py, a bare handler that
logs every ring entry as the kernel wrote it, and exported twice: through tcm_loop (SAS
protocol, no ISID) and through iSCSI on 127.0.0.1, where open-iscsi logs in two sessions of
one initiator name (node.session.nr_sessions=2: two ISIDs, so two I_T nexuses).  The tests
check the ABI of /work/coord/nexus-abi.md from the ring and from netlink
(tests/vm/tools/tcmu_nl.py, written from the uapi numbers alone): opt-in off leaves entries
as the stock module writes them; opt-in on gives every command KFLAG_NEXUS and a handle per
nexus, stable, distinct per ISID; GET_NEXUS names the nexus and counts its sessions down to
0 after logout; a new login of the same nexus is flagged NEW_SESSION once; bad requests get
netlink errors.  The last test loads Debian's stock module again and serves the same device
with it.  The tests share one device and run in file order.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field

import layouts
import pytest

pytestmark = pytest.mark.vm

TOOLS = f"{layouts.GUEST_REPO}/tests/vm/tools"
HBA, NAME = 77, "nx0"
DEV = f"/sys/kernel/config/target/core/user_{HBA}/{NAME}"
LOG, READY = "/tmp/nx0.log", "/tmp/nx0.ready"
PIDFILE = "/run/tcmu-pr/daemon-nexus-ring.pid"  # layouts.RESET stops it
LOOP_WWN, LOOP_INITIATOR = "naa.5001405000000e01", "naa.5001405000000e81"
ISCSI_TARGET = "iqn.2003-01.org.linux-iscsi.tcmu-pr:nexus"
ISCSI_INITIATOR = "iqn.1994-05.org.example:nexus-client"
PORTAL = "127.0.0.1:3260"
ACL_INFO = f"/sys/kernel/config/target/iscsi/{ISCSI_TARGET}/tpgt_1/acls/{ISCSI_INITIATOR}/info"

KFLAG_NEXUS, KFLAG_NEW_SESSION = 0x1, 0x2
CAP_NEXUS = 1 << 4
PROTO_ISCSI, PROTO_SAS = 5, 6
ENOENT, ENODEV, EINVAL, ERANGE = 2, 19, 22, 34

#: The device, then its handler; no LUN yet.
CREATE = rf"""
set -e
mkdir -p /run/tcmu-pr
modprobe tcm_loop; modprobe iscsi_target_mod; modprobe sd_mod; modprobe sg
ip link set lo up
python3 -c '
import rtslib_fb as r
r.UserBackedStorageObject("{NAME}", size=8 << 20, config="nexusprobe/none", index={HBA})'
rm -f {LOG} {READY}
python3 {TOOLS}/nexus_ring.py {HBA} {NAME} {LOG} {READY} >/tmp/nx0.err 2>&1 &
echo $! >{PIDFILE}
for _ in $(seq 300); do [[ -s {READY} ]] && break; sleep 0.1; done
[[ -s {READY} ]] || {{ cat /tmp/nx0.err; exit 1; }}
cat {READY}; echo
echo "index $(cat {DEV}/statistics/scsi_dev/indx)"
"""

#: tcm_loop target with a fixed initiator port (its nexus); the LUN probe goes to our ring.
LOOPBACK = rf"""
set -e
python3 -c '
import os, rtslib_fb as r
so = r.UserBackedStorageObject("{NAME}", index={HBA})
target = r.Target(r.FabricModule("loopback"), "{LOOP_WWN}")
os.mkdir(target.path + "/tpgt_1")
with open(target.path + "/tpgt_1/nexus", "w") as f:
    f.write("{LOOP_INITIATOR}")
r.LUN(r.TPG(target, 1, mode="lookup"), 0, so)'
loop_disks() {{
    for h in /sys/class/scsi_host/host*; do
        [[ $(cat $h/proc_name 2>/dev/null) == tcm_loopback ]] || continue
        ls $h/device/target*/*/block 2>/dev/null
    done
}}
for _ in $(seq 200); do [[ -n $(loop_disks) ]] && break; sleep 0.1; done
loop_disks | sed 's|^|disk /dev/|'
echo "rtpi $(cat /sys/kernel/config/target/loopback/{LOOP_WWN}/tpgt_1/rtpi)"
"""

#: iSCSI target (ACL for our initiator), then open-iscsi with two sessions of one node.
ISCSI_TARGET_SETUP = rf"""
set -e
python3 -c '
import rtslib_fb as r
so = r.UserBackedStorageObject("{NAME}", index={HBA})
tpg = r.TPG(r.Target(r.FabricModule("iscsi"), "{ISCSI_TARGET}"), 1)
tpg.set_attribute("authentication", "0")
r.NetworkPortal(tpg, "127.0.0.1", 3260)
lun = r.LUN(tpg, 0, so)
r.MappedLUN(r.NodeACL(tpg, "{ISCSI_INITIATOR}"), 0, lun)
tpg.enable = True'
echo "rtpi $(cat /sys/kernel/config/target/iscsi/{ISCSI_TARGET}/tpgt_1/rtpi)"
mkdir -p /run/lock/iscsi
pgrep -x iscsid >/dev/null || {{ iscsid; sleep 0.5; }}
iscsiadm -m iface -I nx >/dev/null 2>&1 || iscsiadm -m iface -I nx -o new >/dev/null
iscsiadm -m iface -I nx -o update -n iface.initiatorname -v {ISCSI_INITIATOR} >/dev/null
"""

#: Log in (both sessions) and list "session ISID DISK" once both have their disk.
LOGIN = rf"""
why=
for ((try = 0; try < 300; try++)); do
    if ((try % 10 == 0)); then
        why+=$(iscsiadm -m discovery -t st -p {PORTAL} -I nx 2>&1 >/dev/null &&
               iscsiadm -m node -T {ISCSI_TARGET} -p {PORTAL} -I nx -o update \
                   -n node.session.nr_sessions -v 2 2>&1 >/dev/null &&
               iscsiadm -m node -T {ISCSI_TARGET} -p {PORTAL} -I nx -l 2>&1 >/dev/null)$'\n' || true
    fi
    found=()
    for s in /sys/class/iscsi_session/session*; do
        [[ $(cat $s/targetname 2>/dev/null) == {ISCSI_TARGET} ]] || continue
        d=$(ls $s/device/target*/*/block 2>/dev/null | head -n 1) || true
        [[ -n $d ]] && found+=("$(basename $s) /dev/$d")
    done
    ((${{#found[@]}} == 2)) && break
    sleep 0.2
done
((${{#found[@]}} == 2)) || {{ echo "sessions: ${{found[*]}} ${{why}}"; exit 1; }}
printf 'session %s\n' "${{found[@]}}"
# The ISIDs as the target sees them ("ISID: 0x40 00 01 37 00 00").
grep -o 'ISID: 0x[0-9a-f ]*' {ACL_INFO} | sed 's/ISID: 0x/isid /; s/ //g; s/isid/isid /'
"""

LOGOUT = rf"""
iscsiadm -m node -T {ISCSI_TARGET} -p {PORTAL} -u >/dev/null
for _ in $(seq 100); do
    ls /sys/class/iscsi_session/ 2>/dev/null | grep -q session || break
    sleep 0.1
done
"""


def sh(vm, script: str, *, timeout: float = 180) -> str:
    rc, out = vm.run(script, env=layouts.GUEST_ENV, timeout=timeout)
    assert rc == 0, out
    return out


@dataclass
class Rig:
    """The booted VM with nx0 and what the tests learnt about it."""

    vm: object
    index: int = 0
    mailbox_flags: int = 0
    loop_disk: str = ""
    loop_rtpi: int = 0
    iscsi_rtpi: int = 0
    #: session name -> disk
    sessions: dict[str, str] = field(default_factory=dict)
    handles: dict[str, int] = field(default_factory=dict)  # disk or "loop" -> handle
    off_raw: str = ""  # a TUR entry with nexus_handles=0, normalised (see normalise)

    def entries(self) -> list[dict]:
        out = sh(self.vm, f"cat {LOG}")
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def turs(self, disk: str, count: int = 3) -> list[dict]:
        """The ring entries of ``count`` TEST UNIT READYs sent to ``disk``."""
        before = len(self.entries())
        sh(self.vm, f"sg_turs -n {count} {disk}")
        new = [e for e in self.entries()[before:] if e["opcode"] == 0x00]
        assert len(new) == count, new
        return new

    def attr(self, name: str, value: str | None = None) -> str:
        if value is not None:
            rc, out = self.vm.run(f"echo {shlex.quote(value)} >{DEV}/attrib/{name}")
            return f"rc={rc} {out.strip()}"
        return sh(self.vm, f"cat {DEV}/attrib/{name}").strip()

    def nl(self, *args: str | int) -> dict:
        out = sh(self.vm, f"python3 {TOOLS}/tcmu_nl.py {shlex.join(map(str, args))}")
        return json.loads(out.strip().splitlines()[-1])

    def nexus(self, handle: int) -> dict:
        reply = self.nl("get-nexus", self.index, handle)
        assert "attrs" in reply, reply
        return reply["attrs"]

    def login(self) -> tuple[dict[str, str], set[int]]:
        """Log both sessions in: ({session: disk}, ISIDs of the ACL's info file: LIO shows
        only the latest session there)."""
        out = sh(self.vm, LOGIN, timeout=300)
        disks = dict(line.split()[1:] for line in out.splitlines() if line.startswith("session "))
        isids = {int(line.split()[1], 16) for line in out.splitlines() if line.startswith("isid ")}
        return disks, isids


def normalise(raw_hex: str) -> str:
    """Entry bytes 0..47 without what differs between two identical commands (cmd_id,
    cdb_off: where in the ring it went)."""
    raw = bytearray(bytes.fromhex(raw_hex))
    raw[4:6] = bytes(2)
    raw[24:32] = bytes(8)
    return raw.hex()


@pytest.fixture(scope="module")
def rig(vm) -> Iterator[Rig]:
    layouts.setup(vm, "none")
    vm.load_tcmu("patched")
    r = Rig(vm)
    out = sh(vm, CREATE)
    ready = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    r.mailbox_flags = ready["mailbox_flags"]
    r.index = int(re.search(r"^index (\d+)", out, re.M).group(1))
    out = sh(vm, LOOPBACK)
    disks = re.findall(r"^disk (\S+)", out, re.M)
    assert len(disks) == 1, out
    r.loop_disk = disks[0]
    r.loop_rtpi = int(re.search(r"^rtpi (\S+)", out, re.M).group(1), 0)
    yield r
    layouts.setup(vm, "none")
    vm.load_tcmu("stock")


def test_patched_module_offers_the_feature_off_by_default(rig: Rig) -> None:
    assert rig.vm.module == "patched"
    assert rig.mailbox_flags & CAP_NEXUS, hex(rig.mailbox_flags)
    assert rig.attr("nexus_handles") == "0"


def test_bad_attribute_values_are_refused_and_change_nothing(rig: Rig) -> None:
    for value in ("2", "abc", "-1", ""):
        result = rig.attr("nexus_handles", value)
        assert not result.startswith("rc=0"), (value, result)
        assert rig.attr("nexus_handles") == "0"


def test_opt_in_off_entries_are_the_stock_ones(rig: Rig) -> None:
    entries = rig.turs(rig.loop_disk)
    for e in entries:
        assert (e["kflags"], e["handle"], e["pad2"]) == (0, 0, 0), e
    assert {normalise(e["raw"]) for e in entries} == {normalise(entries[0]["raw"])}
    rig.off_raw = normalise(entries[0]["raw"])
    # Nothing so far asked for a handle: the table is empty.
    assert rig.nl("get-nexus", rig.index, 1)["errno"] == ENOENT


def test_loopback_commands_carry_one_stable_handle(rig: Rig) -> None:
    assert rig.attr("nexus_handles", "1").startswith("rc=0")
    assert rig.attr("nexus_handles") == "1"
    entries = rig.turs(rig.loop_disk) + rig.turs(rig.loop_disk)
    handles = {e["handle"] for e in entries}
    assert len(handles) == 1 and 0 not in handles, entries
    assert all(e["kflags"] == KFLAG_NEXUS and e["pad2"] == 0 for e in entries), entries
    rig.handles["loop"] = handles.pop()
    assert rig.nexus(rig.handles["loop"]) == {
        "device_id": rig.index, "handle": rig.handles["loop"], "proto": PROTO_SAS,
        "initiator": LOOP_INITIATOR, "target": LOOP_WWN, "tpgt": 1, "rtpi": rig.loop_rtpi,
        "sessions": 1,
    }  # no "isid": SAS has none


def test_two_iscsi_sessions_of_one_initiator_are_two_nexuses(rig: Rig) -> None:
    out = sh(rig.vm, ISCSI_TARGET_SETUP)
    rig.iscsi_rtpi = int(re.search(r"^rtpi (\S+)", out, re.M).group(1), 0)
    assert rig.iscsi_rtpi != rig.loop_rtpi
    rig.sessions, isids = rig.login()
    assert len(rig.sessions) == 2 and isids, (rig.sessions, isids)
    got = set()
    for disk in rig.sessions.values():
        entries = rig.turs(disk)
        handles = {e["handle"] for e in entries}
        assert len(handles) == 1, entries
        assert all(e["kflags"] == KFLAG_NEXUS for e in entries), entries
        handle = handles.pop()
        rig.handles[disk] = handle
        nexus = rig.nexus(handle)
        got.add(nexus.pop("isid"))
        assert nexus == {
            "device_id": rig.index, "handle": handle, "proto": PROTO_ISCSI,
            "initiator": ISCSI_INITIATOR, "target": ISCSI_TARGET, "tpgt": 1,
            "rtpi": rig.iscsi_rtpi, "sessions": 1,
        }
    # Two ISIDs, 48-bit; the target's ACL info shows its latest session's, one of them.
    assert len(got) == 2 and 0 not in got and max(got) < 1 << 48, got
    assert isids <= got, (isids, got)
    assert len(set(rig.handles.values())) == 3, rig.handles


def test_handles_are_stable(rig: Rig) -> None:
    for disk in [*rig.sessions.values(), rig.loop_disk]:
        key = "loop" if disk == rig.loop_disk else disk
        entries = rig.turs(disk, count=5)
        assert {(e["kflags"], e["handle"]) for e in entries} == {(KFLAG_NEXUS, rig.handles[key])}


def test_first_command_of_a_handle_has_no_new_session_flag(rig: Rig) -> None:
    seen: set[int] = set()
    for e in rig.entries():
        if e["kflags"] & KFLAG_NEXUS and e["handle"] not in seen:
            seen.add(e["handle"])
            assert not e["kflags"] & KFLAG_NEW_SESSION, e
    assert seen == set(rig.handles.values())


def test_logout_drops_sessions_to_zero_and_a_new_login_is_flagged_once(rig: Rig) -> None:
    by_isid = {rig.nexus(rig.handles[disk])["isid"]: rig.handles[disk]
               for disk in rig.sessions.values()}
    sh(rig.vm, LOGOUT)
    for handle in by_isid.values():
        assert rig.nexus(handle)["sessions"] == 0
    assert rig.nexus(rig.handles["loop"])["sessions"] == 1
    mark = len(rig.entries())
    again, _ = rig.login()
    for disk in again.values():
        entries = rig.turs(disk)
        handle = entries[0]["handle"]
        isid = rig.nexus(handle)["isid"]
        assert {(e["kflags"], e["handle"]) for e in entries} == {(KFLAG_NEXUS, handle)}
        mine = [bool(e["kflags"] & KFLAG_NEW_SESSION) for e in rig.entries()[mark:]
                if e["kflags"] & KFLAG_NEXUS and e["handle"] == handle]
        if isid in by_isid:  # the same I_T nexus came back: same handle, flagged once
            assert handle == by_isid[isid]
            assert mine == [True] + [False] * (len(mine) - 1), mine
        else:  # open-iscsi chose a new ISID: a new nexus, with a handle of its own
            assert handle not in rig.handles.values()
            assert not any(mine), mine
        nexus = rig.nexus(handle)
        assert (nexus["isid"], nexus["sessions"]) == (isid, 1)
        rig.handles[disk] = handle
    rig.sessions = again


def test_bad_netlink_requests_get_errors(rig: Rig) -> None:
    handle = rig.handles["loop"]
    missing_handle = rig.nl("raw", 12, f"8:u32:{rig.index}")
    assert missing_handle["errno"] == EINVAL, missing_handle
    missing_device = rig.nl("raw", 12, f"11:u32:{handle}")
    assert missing_device["errno"] == EINVAL, missing_device
    assert rig.nl("get-nexus", rig.index + 1000, handle)["errno"] == ENODEV
    for unknown in (0, 4096, 0xFFFFFFFF):
        assert rig.nl("get-nexus", rig.index, unknown)["errno"] == ENOENT
    short = rig.nl("raw", 12, f"8:u32:{rig.index}", f"11:u8:{handle}")
    assert short["errno"] in (EINVAL, ERANGE), short
    # Strict validation: attributes GET_NEXUS does not take, or no attribute at all.
    extra = rig.nl("raw", 12, f"8:u32:{rig.index}", f"11:u32:{handle}", "4:str:x")
    assert extra["errno"] == EINVAL, extra
    beyond = rig.nl("raw", 12, f"8:u32:{rig.index}", f"11:u32:{handle}", "40:u32:1")
    assert beyond["errno"] == EINVAL, beyond
    assert rig.nl("raw", 12)["errno"] == EINVAL
    # The reserved PR-info commands have no handler in this module.
    assert rig.nl("raw", 8, f"8:u32:{rig.index}")["errno"] == 95  # EOPNOTSUPP
    # And a good request still works.
    assert rig.nexus(handle)["initiator"] == LOOP_INITIATOR


def test_opt_out_again_gives_stock_entries(rig: Rig) -> None:
    assert rig.attr("nexus_handles", "0").startswith("rc=0")
    entries = rig.turs(rig.loop_disk)
    assert {normalise(e["raw"]) for e in entries} == {rig.off_raw}
    # The handles outlive the opt-out: they are the device's for its lifetime.
    assert rig.nexus(rig.handles["loop"])["sessions"] == 1


def test_stock_module_still_loads_and_serves(rig: Rig) -> None:
    vm = rig.vm
    layouts.setup(vm, "none")
    vm.load_tcmu("stock")
    assert vm.module == "stock"
    out = sh(vm, CREATE)
    ready = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert not ready["mailbox_flags"] & CAP_NEXUS, ready
    rc, _ = vm.run(f"test -e {DEV}/attrib/nexus_handles")
    assert rc != 0, "the stock module has no nexus_handles attribute"
    out = sh(vm, LOOPBACK)
    disks = re.findall(r"^disk (\S+)", out, re.M)
    assert len(disks) == 1, out
    entries = rig.turs(disks[0])
    assert {normalise(e["raw"]) for e in entries} == {rig.off_raw}
    nexus = rig.nl("get-nexus", int(re.search(r"^index (\d+)", sh(
        vm, f"echo index $(cat {DEV}/statistics/scsi_dev/indx)"), re.M).group(1)), 1)
    assert nexus["errno"] == 95, nexus  # stock: no GET_NEXUS command (EOPNOTSUPP)
