"""``tcmu-pr daemon`` on the real kernel: LIO + TCMU + tcm_loop in the QEMU VM, real clients.

One LU (one image file, one PR store) is exported through two tcm_loop targets, each with
its own TCMU device and its own I_T nexus (topology file, docs/daemon.md); ``pgr_support``
and ``alua_support`` are 0, so PR commands reach our ring and LIO enforces nothing itself.
sg3_utils and dd then drive the whole chain: netlink ADDED_DEVICE, uio mapping, emulated
INQUIRY/VPD/READ CAPACITY, the native READ/WRITE loop, PR IN/OUT through the shared store,
RESERVATION CONFLICT on the path that is not registered, and a daemon restart (SIGTERM and
SIGKILL) that must lose no PR state and re-adopt the devices it served.

The tests share one daemon and run in file order; each one starts from a cleared PR state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import layouts
import pytest

pytestmark = pytest.mark.vm

RUN = "/run/tcmu-pr"
PIDFILE = f"{RUN}/daemon.pid"  # where layouts.RESET looks for a daemon to stop
READY = f"{RUN}/daemon.ready"
LOG = f"{RUN}/daemon-kernel.log"
IMAGE = "/var/tmp/tcmu-pr-kernel/lu0.img"
TOPOLOGY = "/etc/tcmu-pr/topology.json"  # the daemon's default; layouts.RESET removes it
BLOCKS = 131072  # 64 MiB of 512-byte blocks
KEY_A, KEY_B = "0xabc1", "0xabc2"

#: Guest side of the layout: targets first (their nexus WWN is ours, not rtslib's random
#: one), then the topology file, then the backstores (the daemon reads the topology when
#: their ADDED_DEVICE comes), attributes before the LUN exports them.
SETUP = r'''
import json, os, sys
import rtslib_fb as r

image, topology = sys.argv[1], sys.argv[2]
ports = [("lu0_gw1", 10, "naa.5001405000000001", "naa.5001405000000a01", 1),
         ("lu0_gw2", 11, "naa.5001405000000002", "naa.5001405000000a02", 2)]
fabric = r.FabricModule("loopback")
tpgs = []
for _, _, wwn, nexus, _ in ports:
    target = r.Target(fabric, wwn)
    os.mkdir(target.path + "/tpgt_1")
    with open(target.path + "/tpgt_1/nexus", "w") as f:
        f.write(nexus)
    tpgs.append(r.TPG(target, 1, mode="lookup"))
devices = {f"user_{hba}/{name}": {"lu": "lu0", "store": "file:" + image,
                                  "nexus": f"{nexus},i,0x0,{wwn},t,0x1", "rtpi": rtpi}
           for name, hba, wwn, nexus, rtpi in ports}
os.makedirs(os.path.dirname(topology), exist_ok=True)
with open(topology + ".tmp", "w") as f:
    json.dump({"devices": devices}, f)
os.replace(topology + ".tmp", topology)
for (name, hba, _, _, _), tpg in zip(ports, tpgs):
    so = r.UserBackedStorageObject(name, size=64 << 20, config="tcmu-pr/file/" + image,
                                   index=hba)
    so.set_attribute("pgr_support", "0")
    so.set_attribute("alua_support", "0")
    r.LUN(tpg, 0, so)
    print(so.path)
'''

START = rf"""
mkdir -p {RUN}; rm -f {READY}
t0=$(date +%s%N)
python3 -m tcmu_pr daemon --no-dbus --ready-file {READY} >>{LOG} 2>&1 &
echo $! >{PIDFILE}
for _ in $(seq 2400); do
    [[ -s {READY} && $(cat {READY}) == $(cat {PIDFILE}) ]] && break
    kill -0 $(cat {PIDFILE}) 2>/dev/null || {{ echo "daemon died"; tail -n 20 {LOG}; exit 1; }}
    sleep 0.05
done
[[ -s {READY} ]] || {{ echo "daemon not ready"; tail -n 20 {LOG}; exit 1; }}
echo "ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))"
"""

def stop_script(signal: str) -> str:
    return rf"""
pid=$(cat {PIDFILE}); kill -{signal} $pid
for _ in $(seq 300); do kill -0 $pid 2>/dev/null || break; sleep 0.05; done
kill -0 $pid 2>/dev/null && {{ echo "daemon still running"; exit 1; }}
true
"""


def sh(vm, script: str, *, check: bool = True, timeout: float = 180) -> tuple[int, str]:
    rc, out = vm.run(script, env=layouts.GUEST_ENV, timeout=timeout)
    if check:
        assert rc == 0, out
    return rc, out


def start_daemon(vm) -> float:
    """Start the daemon and wait for its ready file; seconds it took."""
    _, out = sh(vm, START, timeout=200)
    return int(re.search(r"ready_ms=(\d+)", out).group(1)) / 1000


def stop_daemon(vm, signal: str = "TERM") -> None:
    sh(vm, stop_script(signal))


class Paths:
    """The two SCSI disks of the LU, by relative target port (1: gw1, 2: gw2)."""

    def __init__(self, vm) -> None:
        self.vm = vm
        _, out = sh(vm, r"""
for d in $(lsscsi | awk '/TCMU-PR/ {print $NF}'); do
    echo "$d $(sg_vpd -p 0x83 $d | awk '/Relative target port:/ {print $NF}')"
done""")
        found = dict(line.split()[::-1] for line in out.split("\n") if line.startswith("/dev/"))
        assert set(found) == {"0x1", "0x2"}, out
        self.a, self.b = found["0x1"], found["0x2"]

    def run(self, script: str, *, check: bool = False) -> tuple[int, str]:
        return sh(self.vm, f"A={self.a}; B={self.b}\n{script}", check=check)

    def ok(self, script: str) -> str:
        return self.run(script, check=True)[1]

    def settle(self) -> None:
        """Take the unit attentions a PR change queued for either path (each is told once)."""
        self.run("for d in $A $B; do for _ in 1 2 3 4; do sg_turs $d && break; done; done")

    def reset_pr(self) -> None:
        """No registrations, no reservation: register through A (ignoring keys), CLEAR."""
        self.ok("sg_persist -n --out --register-ignore --param-sark=0x99 $A && "
                "sg_persist -n --out --clear --param-rk=0x99 $A")
        self.settle()


@pytest.fixture(scope="module")
def paths(vm) -> Iterator[Paths]:
    layouts.setup(vm, "none")  # no LIO objects, no daemon, no topology
    (vm.io / "daemon_kernel_setup.py").write_text(SETUP)
    sh(vm, f"modprobe target_core_user; modprobe tcm_loop; modprobe sd_mod; modprobe sg\n"
           f"mkdir -p /var/target/pr {RUN} $(dirname {IMAGE}); rm -f {LOG} {IMAGE}*\n"
           f"truncate -s 64M {IMAGE}")
    seconds = start_daemon(vm)
    print(f"\ndaemon ready {seconds:.1f} s after start")
    _, out = sh(vm, f"python3 /mnt/io/daemon_kernel_setup.py {IMAGE} {TOPOLOGY}\n"
                    "for _ in $(seq 100); do [[ $(lsscsi | grep -c TCMU-PR) == 2 ]] && break;"
                    " sleep 0.1; done; lsscsi")
    assert out.count("TCMU-PR") == 2, out
    yield Paths(vm)
    _, log = vm.run(f"cat {LOG}")
    assert "Traceback" not in log, log
    layouts.setup(vm, "none")


def test_emulated_identity_and_capacity(paths):
    out = paths.ok("sg_inq $A; sg_vpd -p 0x83 $A; sg_vpd -p 0x83 $B; sg_readcap -l $B; "
                   "sg_turs $A && sg_turs $B && echo TUR-OK")
    assert "Vendor identification: LIO-ORG" in out
    assert "Product identification: TCMU-PR" in out
    naa = re.findall(r"^\s+0x(6[0-9a-f]{31})$", out, re.M)
    assert len(naa) == 2 and naa[0] == naa[1]  # one LU behind both ports
    assert re.findall(r"Relative target port: (0x\d)", out) == ["0x1", "0x2"]
    assert f"Number of logical blocks={BLOCKS}" in out
    assert "Logical block length=512 bytes" in out
    assert "TUR-OK" in out


def test_data_written_through_one_port_is_read_through_the_other(paths):
    out = paths.ok(f"""
head -c 262144 /dev/urandom >/tmp/pattern
dd if=/tmp/pattern of=$A bs=64k seek=3 oflag=direct status=none
dd if=$B of=/tmp/back bs=64k skip=3 count=4 iflag=direct status=none
cmp /tmp/pattern /tmp/back && echo SAME-B
cmp -i 0:196608 -n 262144 /tmp/pattern {IMAGE} && echo SAME-FILE""")
    assert "SAME-B" in out and "SAME-FILE" in out


def test_persistent_reservation_cycle_and_conflict(paths):
    paths.reset_pr()
    out = paths.ok(f"""
sg_persist -n --out --register --param-sark={KEY_A} $A
sg_persist -n --out --reserve --param-rk={KEY_A} --prout-type=5 $A
sg_persist -n --in -k $B; sg_persist -n --in -r $B; sg_persist -n --in -s $B""")
    assert re.search(r"1 registered reservation key follows:\s+0xabc1", out), out
    assert "type: Write Exclusive, registrants only" in out
    assert re.search(r"Key=0xabc1\s+All target ports bit clear\s+Relative port address: 0x1"
                     r"\s+<< Reservation holder >>", out), out
    # B is not registered: its WRITE is refused (by the native loop), its READ is not.
    rc, out = paths.run("sg_raw -s 512 -i /dev/zero $B 2a 00 00 00 00 00 00 00 01 00")
    assert "Reservation Conflict" in out, out
    rc, out = paths.run("dd if=/dev/zero of=$B bs=4k count=1 oflag=direct")
    assert rc != 0 and "0 bytes" in out, out
    paths.ok("dd if=$B of=/dev/null bs=4k count=4 iflag=direct")
    paths.ok("dd if=/dev/zero of=$A bs=4k count=4 oflag=direct")  # the holder writes
    # Registered, B may write under Write Exclusive - Registrants Only.
    paths.ok(f"sg_persist -n --out --register --param-sark={KEY_B} $B && "
             "dd if=/dev/zero of=$B bs=4k count=1 oflag=direct")
    out = paths.ok(f"""
sg_persist -n --out --release --param-rk={KEY_A} --prout-type=5 $A
sg_persist -n --in -r $A
sg_persist -n --out --clear --param-rk={KEY_A} $A""")
    assert "there is NO reservation held" in out
    paths.settle()
    out = paths.ok("sg_persist -n --in -k $B")
    assert "there are NO registered reservation keys" in out


def test_daemon_restart_keeps_the_reservation_and_serves_again(paths):
    paths.reset_pr()
    paths.ok(f"sg_persist -n --out --register --param-sark={KEY_A} $A && "
             f"sg_persist -n --out --reserve --param-rk={KEY_A} --prout-type=5 $A")
    stop_daemon(paths.vm, "TERM")
    _, out = sh(paths.vm, "dmesg | grep 'command reply support' | tail -n 1")
    assert "command reply support 0" in out  # turned off on the way out
    seconds = start_daemon(paths.vm)
    print(f"\ndaemon ready {seconds:.1f} s after restart")
    paths.settle()
    out = paths.ok("sg_persist -n --in -k $B; sg_persist -n --in -r $B")
    assert re.search(r"1 registered reservation key follows:\s+0xabc1", out), out
    assert re.search(r"Key=0xabc1\s+scope: LU_SCOPE,  type: Write Exclusive, registrants only",
                     out), out
    paths.ok("dd if=/dev/urandom of=$A bs=4k count=4 oflag=direct")
    rc, out = paths.run("dd if=/dev/zero of=$B bs=4k count=1 oflag=direct")
    assert rc != 0, out
    _, log = sh(paths.vm, f"cat {LOG}")
    assert log.count("adopted existing device") == 2, log


def test_backstore_enabled_while_the_daemon_was_killed_is_adopted(paths):
    """SIGKILL leaves the kernel waiting for replies: the enable of a new backstore blocks
    until a daemon answers its ADDED_DEVICE, which the restarted daemon does on adoption."""
    stop_daemon(paths.vm, "KILL")
    sh(paths.vm, rf"""
truncate -s 16M /var/tmp/tcmu-pr-kernel/lu9.img
python3 -c 'import rtslib_fb as r; r.UserBackedStorageObject("lu9", size=16 << 20,
    config="tcmu-pr/file//var/tmp/tcmu-pr-kernel/lu9.img", index=12); print("created")' \
    >{RUN}/lu9.out 2>&1 &
for _ in $(seq 100); do grep -q lu9 /sys/class/uio/*/name 2>/dev/null && break; sleep 0.1; done
sleep 1""")
    _, out = sh(paths.vm, f"cat /sys/kernel/config/target/core/user_12/lu9/enable {RUN}/lu9.out")
    assert out.split() == ["0"], out  # still being configured: the kernel waits for us
    start_daemon(paths.vm)
    _, out = sh(paths.vm, rf"""
for _ in $(seq 100); do grep -q created {RUN}/lu9.out && break; sleep 0.1; done
cat /sys/kernel/config/target/core/user_12/lu9/enable {RUN}/lu9.out""")
    assert out.split() == ["1", "created"], out
    # Deleting it is answered too (REMOVED_DEVICE): the daemon stops serving it.
    sh(paths.vm, "python3 -W ignore -c 'import rtslib_fb as r; "
                 "[s.delete() for s in r.RTSRoot().storage_objects if s.name == \"lu9\"]'")
    deadline = time.monotonic() + 30
    while True:
        _, log = sh(paths.vm, f"cat {LOG}")
        if "(user_12/lu9) closed" in log or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "(user_12/lu9) closed" in log, log
    paths.settle()
    paths.ok("sg_turs $A && sg_turs $B")  # the LU's devices are still served


def test_targetcli_creates_our_backstores_over_dbus(paths):
    """targetcli asks the handler over D-Bus (org.kernel.TCMUService1), as with tcmu-runner:
    ``user:tcmu_pr`` is listed, a good config is created and served, a bad one refused."""
    stop_daemon(paths.vm)
    sh(paths.vm, "mkdir -p /run/dbus; [[ -S /run/dbus/system_bus_socket ]] || "
                 "dbus-daemon --system --fork")
    sh(paths.vm, START.replace("--no-dbus ", ""), timeout=200)
    try:
        _, out = sh(paths.vm, r"""
lu=/var/tmp/tcmu-pr-kernel/lu8.img
truncate -s 16M $lu
targetcli ls /backstores | grep -o 'user:tcmu_pr'
targetcli /backstores/user:tcmu_pr create name=lu8 size=16M cfgstring=file/$lu
targetcli /backstores/user:tcmu_pr create name=lu8bad size=16M \
    cfgstring=file//var/tmp/tcmu-pr-kernel/missing.img || echo refused
grep -h lu8 /sys/class/uio/*/name
targetcli /backstores/user:tcmu_pr delete lu8""")
        assert "user:tcmu_pr" in out
        assert "Created user-backed storage object lu8 size 16777216" in out, out
        assert "No such file or directory" in out and "refused" in out, out
        assert "/lu8/tcmu_pr/file//var/tmp/tcmu-pr-kernel/lu8.img" in out, out
    finally:
        stop_daemon(paths.vm)
        start_daemon(paths.vm)


PLAIN = r'''
import sys
import rtslib_fb as r

image, hba = sys.argv[1], int(sys.argv[2])
so = r.UserBackedStorageObject("plain", size=16 << 20, config="tcmu-pr/file/" + image,
                               index=hba)
fabric = r.FabricModule("loopback")
for n in (1, 2):  # two tcm_loop targets: two I_T nexuses of one LU
    tpg = r.TPG(r.Target(fabric, f"naa.50014050000007{n:02x}"), 1)
    r.LUN(tpg, 0, so)
print("made")
'''


def test_plain_targetcli_backstore_without_topology_gets_pr(paths):
    """A ``user:tcmu_pr`` backstore made as an administrator would (no topology entry, no
    nexus in its dev_config, two tcm_loop ports): on a stock kernel LIO's own PR serves it
    (pgr_support=1; 6.12's default, enforced by the daemon, with a warning that it is per
    gateway); with the nexus-handle module the daemon turns the handles on and serves
    cluster PR itself. Either way a reservation through one port fences the other."""
    vm = paths.vm
    image, hba = "/var/tmp/tcmu-pr-kernel/plain.img", 13
    attrib = f"/sys/kernel/config/target/core/user_{hba}/plain/attrib"
    (vm.io / "plain_setup.py").write_text(PLAIN)
    _, before = sh(vm, "ls /sys/block | grep ^sd | sort")
    sh(vm, f"truncate -s 16M {image}; python3 /mnt/io/plain_setup.py {image} {hba}")
    try:
        _, out = sh(vm, f"""
for _ in $(seq 100); do [[ $(ls /sys/block | grep -c ^sd) == {len(before.split()) + 2} ]] \\
    && break; sleep 0.1; done
ls /sys/block | grep ^sd | sort; echo pgr=$(cat {attrib}/pgr_support) \\
    nexus=$(cat {attrib}/nexus_handles 2>/dev/null || echo absent)""")
        disks = sorted(set(out.split()) - set(before.split()) - {"pgr=1", "pgr=0"})
        disks = [d for d in disks if d.startswith("sd")]
        assert len(disks) == 2, out
        patched = "nexus=absent" not in out
        assert ("pgr=0" if patched else "pgr=1") in out, out
        _, log = sh(vm, f"cat {LOG}")
        if patched:
            assert f"user_{hba}/plain: nexus handles on" in log, log
        else:
            assert f"user_{hba}/plain: no nexus known" in log and "NOT shared" in log, log
        a, b = (f"/dev/{d}" for d in disks)
        out = sh(vm, f"""
sg_turs {a}; sg_turs {a}; sg_turs {b}; sg_turs {b}
sg_persist -n --out --register --param-sark={KEY_A} {a}
sg_persist -n --out --reserve --param-rk={KEY_A} --prout-type=1 {a}
sg_persist -n --in -r {b}""")[1]
        assert re.search(r"Key=0xabc1\s+scope: LU_SCOPE,  type: Write Exclusive", out), out
        rc, out = sh(vm, f"dd if=/dev/zero of={b} bs=4k count=1 oflag=direct", check=False)
        assert rc != 0, out  # WRITE from the other nexus: RESERVATION CONFLICT
        sh(vm, f"dd if={b} of=/dev/null bs=4k count=1 iflag=direct")
        sh(vm, f"dd if=/dev/zero of={a} bs=4k count=1 oflag=direct")
        sh(vm, f"sg_persist -n --out --clear --param-rk={KEY_A} {a}")
    finally:
        sh(vm, r"""python3 -W ignore -c '
import rtslib_fb as r
for t in list(r.FabricModule("loopback").targets):
    if t.wwn.startswith("naa.50014050000007"):
        t.delete()
[s.delete() for s in r.RTSRoot().storage_objects if s.name == "plain"]'""")
