"""The ublk frontend on the real ublk_drv (Debian's 6.12 kernel in the test VM), one boot.

``tcmu-pr ublk add`` serves a LU's store as /dev/ublkbN: a file system on it with fio verify
(file and RBD stores); the LU's reservations apply to it as to any initiator (a reservation
taken through a tcm_loop path refuses its writes with EBADE, and one it takes through
``tcmu-pr pr exec`` under its nexus refuses the path's writes); kill -9 of its server and
``recover`` during fio verify; change-block tracking and a snapshot taken while a writer
goes on (file store), and kill -9 of a tracked server mid-write losing no mark; and bad
parameters that leave no device behind.
"""

from __future__ import annotations

import json
import random
import re

import layouts
import pytest

pytestmark = pytest.mark.vm

IMG = "/var/tmp/ublk-test.img"
#: fio with verification: written, then read back and checked (crc32c + header).
FIO_VERIFY = ("fio --name=v --filename={target} --rw=randwrite --bs=4k --iodepth=16 "
              "--ioengine=libaio --direct=1 --size={size} --verify=crc32c --do_verify=1 "
              "--output-format=json")  # fmt: skip


def sh(vm, script: str, *, env: dict[str, str] | None = None, check: bool = True,
       timeout: float = 300) -> str:
    rc, out = vm.run("set -e\n" + script, env={**layouts.GUEST_ENV, **(env or {})},
                     timeout=timeout)  # fmt: skip
    if check:
        assert rc == 0, out[-4000:]
    return out


def fio_result(out: str) -> dict:
    """The job of fio's JSON (the text between the first '{' line and the end)."""
    start = out.index("\n{") + 1 if not out.startswith("{") else 0
    job = json.loads(out[start : out.rindex("}") + 1])["jobs"][0]
    return {"error": job["error"], "write_kib": job["write"]["io_kbytes"],
            "read_kib": job["read"]["io_kbytes"]}  # fmt: skip


def devices(vm) -> int:
    return int(sh(vm, "ls /sys/class/ublk-char 2>/dev/null | grep -c ublkc || true").strip()
               or 0)  # fmt: skip


#: Deletes every ublk device a failed test may have left (before each test).
CLEAN = """
umount /mnt/u 2>/dev/null || true
for c in /sys/class/ublk-char/ublkc*; do
    [[ -e $c ]] && $TCMU_PR ublk del "${c##*ublkc}" >/dev/null 2>&1
done
true
"""


@pytest.fixture(scope="module")
def booted(vm):
    """ublk_drv loaded, nothing left of an earlier layout."""
    sh(vm, layouts.RESET + "modprobe ublk_drv\nls -l /dev/ublk-control")
    return vm


@pytest.fixture
def ready(booted):
    sh(booted, CLEAN)
    return booted


def test_file_store_mkfs_mount_and_fio_verify(ready):
    vm = ready
    out = sh(vm, f"""
rm -f {IMG}; truncate -s 256M {IMG}
dev=$($TCMU_PR ublk add --store file:{IMG} --queues 2 --depth 32)
echo "DEV $dev"
cat /sys/block/${{dev#/dev/}}/queue/logical_block_size /sys/block/${{dev#/dev/}}/size
mkfs.ext4 -q -F $dev
mkdir -p /mnt/u && mount $dev /mnt/u
{FIO_VERIFY.format(target="/mnt/u/f", size="16M")} >/tmp/fio.json
umount /mnt/u
fstrim_out=$(blkdiscard -f -o 0 -l 1M $dev && echo discarded)
echo "$fstrim_out"
$TCMU_PR ublk list
$TCMU_PR ublk del $dev
echo "AFTER $($TCMU_PR ublk list | wc -l)"
cat /tmp/fio.json
""", timeout=600)
    assert re.search(r"^DEV /dev/ublkb\d+$", out, re.M), out
    assert "\n512\n" in out and "\n524288\n" in out, out  # 256 MiB in 512-byte sectors
    assert "discarded" in out
    assert re.search(r"ublkb\d+\tlive\tpid \d+\tfile:" + IMG, out), out
    assert "AFTER 0" in out
    r = fio_result(out[out.index("AFTER 0"):])
    print(f"\nublk file store, ext4 + fio verify: {r}")
    assert r["error"] == 0 and r["write_kib"] == 16 * 1024 and r["read_kib"] == 16 * 1024


def test_rbd_store_mkfs_mount_and_fio_verify(ready):
    vm = ready
    out = sh(vm, f"""
{layouts.CEPH_START}
rbd rm rbd/ublk1 >/dev/null 2>&1 || true
rbd create --size 256 --image-feature layering rbd/ublk1
dev=$($TCMU_PR ublk add --store rbd:rbd/ublk1 --depth 32)
echo "DEV $dev"
mkfs.ext4 -q -F -E nodiscard $dev
mkdir -p /mnt/u && mount $dev /mnt/u
{FIO_VERIFY.format(target="/mnt/u/f", size="8M")} >/tmp/fio.json
umount /mnt/u
$TCMU_PR ublk del $dev
echo "AFTER $($TCMU_PR ublk list | wc -l)"
rbd rm rbd/ublk1 >/dev/null 2>&1
cat /tmp/fio.json
""", timeout=900)
    assert "AFTER 0" in out, out
    r = fio_result(out[out.index("AFTER 0"):])
    print(f"\nublk RBD store, ext4 + fio verify: {r}")
    assert r["error"] == 0 and r["write_kib"] == 8 * 1024 and r["read_kib"] == 8 * 1024


PR_OUT = "5f{sa:02x}{type:02x}00000000001800"


def pr_data(key: int = 0, sark: int = 0) -> str:
    return f"{key:016x}{sark:016x}" + "00" * 8


def test_reservations_apply_between_a_tcm_loop_path_and_the_ublk_device(ready):
    vm = ready
    env = layouts.setup(vm, "loopback-mpath@file", fresh=True)
    reg = PR_OUT.format(sa=0, type=0)
    reserve_we = PR_OUT.format(sa=1, type=1)
    clear = PR_OUT.format(sa=3, type=0)
    out = sh(vm, f"""
dev=$($TCMU_PR ublk add --store $TCMU_PR_STORE)
nexus=$($TCMU_PR ublk list | awk -v d=$dev '$1 == d {{print $NF}}')
echo "NEXUS $nexus"
p1=${{TCMU_PR_PATHS%% *}}
w() {{ dd if=/dev/urandom of=$1 bs=4k count=1 seek=8 oflag=direct 2>&1 >/dev/null \
      && echo "$2 write ok" || echo "$2 write refused"; }}
r() {{ dd if=$1 of=/dev/null bs=4k count=1 skip=8 iflag=direct 2>&1 >/dev/null \
      && echo "$2 read ok" || echo "$2 read refused"; }}
w $dev ublk-before
# the tcm_loop path registers and reserves WRITE EXCLUSIVE
sg_persist -n --out --register --param-sark=0x1 $p1
sg_persist -n --out --reserve --param-rk=0x1 --prout-type=1 $p1
w $dev ublk-under-path-WE; r $dev ublk-under-path-WE
{{ dd if=/dev/zero of=$dev bs=4k count=1 oflag=direct 2>&1 || true; }} | grep -o 'Invalid exchange'
w $p1 path-holder
sg_persist -n --out --clear --param-rk=0x1 $p1
w $dev ublk-after-clear
# the reverse: the ublk device's nexus registers and reserves through `pr exec`
$TCMU_PR pr exec --store $TCMU_PR_STORE --nexus "$nexus" --cdb {reg} --data {pr_data(0, 0xAB)}
$TCMU_PR pr exec --store $TCMU_PR_STORE --nexus "$nexus" --cdb {reserve_we} \
    --data {pr_data(0xAB)}
w $p1 path-under-ublk-WE
w $dev ublk-holder
$TCMU_PR pr exec --store $TCMU_PR_STORE --nexus "$nexus" --cdb {clear} --data {pr_data(0xAB)}
w $p1 path-after-clear
$TCMU_PR ublk del $dev
""", env=env, timeout=600)
    print("\n" + "\n".join(line for line in out.splitlines() if " write " in line or
                           " read " in line))  # fmt: skip
    assert "ublk-before write ok" in out
    assert "ublk-under-path-WE write refused" in out and "Invalid exchange" in out, out
    assert "ublk-under-path-WE read ok" in out  # WRITE EXCLUSIVE lets everyone read
    assert "path-holder write ok" in out
    assert "ublk-after-clear write ok" in out
    assert '"status": 0' in out
    assert "path-under-ublk-WE write refused" in out, out
    assert "ublk-holder write ok" in out
    assert "path-after-clear write ok" in out


def test_recovery_after_kill_9_during_fio_verify(ready):
    vm = ready
    sh(vm, layouts.RESET)  # the previous test's layout: not needed here
    out = sh(vm, f"""
rm -f {IMG}; truncate -s 128M {IMG}
dev=$($TCMU_PR ublk add --store file:{IMG} --depth 32)
{FIO_VERIFY.format(target="$dev", size="24M")} --verify_backlog=256 >/tmp/fio.json 2>&1 &
fio=$!
sleep 3
pid=$($TCMU_PR ublk list | awk -v d=$dev '$1 == d {{print $4}}')
t0=$(date +%s.%N)
kill -9 $pid
$TCMU_PR ublk list
$TCMU_PR ublk recover $dev
t1=$(date +%s.%N)
echo "RECOVERED in $(echo "$t1 - $t0" | bc -l 2>/dev/null || python3 -c "print($t1-$t0)") s"
$TCMU_PR ublk list
wait $fio; echo "FIO rc $?"
$TCMU_PR ublk del $dev
echo "AFTER $($TCMU_PR ublk list | wc -l)"
cat /tmp/fio.json
""", timeout=900)
    print("\n" + "\n".join(line for line in out.splitlines() if "RECOVERED" in line
                           or "ublkb" in line))  # fmt: skip
    assert "quiesced" in out or "live" in out
    assert "FIO rc 0" in out, out[-4000:]
    assert "AFTER 0" in out
    r = fio_result(out[out.index("AFTER 0"):])
    print(f"recovery during fio verify: {r}")
    assert r["error"] == 0 and r["write_kib"] == 24 * 1024


#: Sequential O_DIRECT writes of whole 64 KiB blocks FIRST..LAST-1, each filled with VALUE.
WRITER = """
import mmap, os, sys, time
dev, value, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pause = float(sys.argv[5])
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 65536)
buf[:] = bytes([value]) * 65536
for b in range(first, last):
    os.pwrite(fd, buf, b * 65536)
    time.sleep(pause)
os.close(fd)
"""

#: The snapshot of a sequential writer's second pass (0x22 over 0x11, blocks 100..1023) must
#: be a prefix state: blocks [100, k) new, [k, 1024) old, the rest as the image; the map
#: marks [100, k) with the change number before the snapshot (1), [k, 1024) with the next.
CHECK = """
import json, sys
snap = open("/tmp/snap.img", "rb").read()
image = open(sys.argv[1], "rb").read()
cmap = json.load(open("/tmp/map2.json"))
K = 65536
def blk(d, b):
    return d[b * K:(b + 1) * K]
k = 100
while k < 1024 and blk(snap, k) == bytes([0x22]) * K:
    k += 1
ok = all(blk(snap, b) == bytes([0x11]) * K for b in range(k, 1024))
ok = ok and snap[:100 * K] == image[:100 * K] and len(snap) == len(image)
landed = all(blk(image, b) == bytes([0x22]) * K for b in range(100, 1024))
marks = all(cmap[b] == (1 if b < k else 2) for b in range(100, 1024))
print(f"PREFIX {k} snapshot-ok {ok} landed {landed} marks-ok {marks}")
"""


def test_tracked_file_store_map_and_snapshot(ready):
    """ublk is a tracked data path: `cbt enable` before `ublk add`; writes, discards and
    write-zeroes through the device are in the map (exactly their blocks), and a snapshot
    taken while a writer overwrites the image reads back as one point in time."""
    vm = ready
    sh(vm, layouts.RESET)
    store = f"file:{IMG}"
    out = sh(vm, f"""
cat >/tmp/w.py <<'PYEOF'
{WRITER}
PYEOF
cat >/tmp/check.py <<'PYEOF'
{CHECK}
PYEOF
rm -f {IMG} {IMG}.cbt*; truncate -s 64M {IMG}
$TCMU_PR cbt enable --store {store} --block-size 65536
dev=$($TCMU_PR ublk add --store {store} --depth 16)
K=65536
dd if=/dev/urandom of=$dev bs=4k count=1 seek=$((3 * 16 + 2)) oflag=direct status=none
dd if=/dev/urandom of=$dev bs=32k count=4 seek=21 oflag=direct status=none  # blocks 10-12
blkdiscard -f -o $((20 * K)) -l $K $dev
blkdiscard -f -z -o $((30 * K)) -l $((2 * K)) $dev
$TCMU_PR cbt map --store {store} --json >/tmp/map1.json
python3 -c 'import json; m = json.load(open("/tmp/map1.json"))
print("MARKED", [b for b, n in enumerate(m) if n])'
python3 /tmp/w.py $dev 17 100 1024 0
python3 /tmp/w.py $dev 34 100 1024 0.01 &
w=$!
sleep 1
n=$($TCMU_PR snapshot create --store {store})
echo "SNAPSHOT $n"
wait $w; echo "WRITER rc $?"
$TCMU_PR snapshot list --store {store}
$TCMU_PR snapshot read --number $n --store {store} >/tmp/snap.img
$TCMU_PR cbt map --store {store} --json >/tmp/map2.json
python3 /tmp/check.py {IMG}
$TCMU_PR ublk del $dev
grep -h "change-block tracking" /run/tcmu-pr/ublk/server.log | tail -2
$TCMU_PR snapshot delete --number $n --store {store}
$TCMU_PR cbt disable --store {store}
""", timeout=900)
    print("\n" + "\n".join(line for line in out.splitlines() if line.startswith(
        ("MARKED", "SNAPSHOT", "WRITER", "PREFIX", "[")) or "change-block" in line))  # fmt: skip
    assert "MARKED [3, 10, 11, 12, 20, 30, 31]" in out, out[-3000:]
    assert "WRITER rc 0" in out
    m = re.search(r"PREFIX (\d+) snapshot-ok (\w+) landed (\w+) marks-ok (\w+)", out)
    assert m, out[-3000:]
    k = int(m.group(1))
    assert 100 < k < 1024, f"the snapshot was not taken while the writer went on: k={k}"
    assert m.groups()[1:] == ("True", "True", "True"), out[-3000:]
    assert '"state": "ready"' in out


#: The guest tool that lists the blocks changed against a pre-run copy and the map's marks.
CHANGED = "python3 /mnt/repo/tests/vm/tools/cbt_changed.py"

#: One run: bump the change number with a snapshot (kept live or deleted at once), copy the
#: image, serve it, fio random writes through the device, kill -9 the server mid-run, check;
#: optionally `recover` (fio goes on under the new server) and check again; delete the device.
#: fio writes blocks 256..1791 only: the blocks outside must stay unmarked ("marked" counts
#: the map's blocks above the run's change number, so it shows any blanket marking).
CRASH_RUN = """
read -r since gen < <($TCMU_PR cbt info --store {store} | python3 -c \\
    'import json, sys; d = json.load(sys.stdin); print(d["changes_number"], d["generation_id"])')
snap=$($TCMU_PR snapshot create --store {store})
[[ {live} == 1 ]] || $TCMU_PR snapshot delete --number $snap --store {store}
cp {img} /var/tmp/pre.img
dev=$($TCMU_PR ublk add --store {store} --depth 32)
pid=$($TCMU_PR ublk list | awk -v d=$dev '$1 == d {{print $4}}')
fio --name=crash --filename=$dev --rw=randwrite --bssplit=4k/70:16k/20:128k/10 --iodepth=16 \\
    --ioengine=libaio --direct=1 --offset=16M --size=96M --time_based --runtime=300 \\
    --randseed={seed} \\
    --output-format=terse >/dev/null 2>&1 &
fio=$!
sleep {delay}
kill -9 $pid
for _ in $(seq 400); do
    [[ -e /proc/$pid && $(awk '{{print $3}}' /proc/$pid/stat 2>/dev/null) != Z ]] || break
    sleep 0.05
done
state=$($TCMU_PR ublk list | awk -v d=$dev '$1 == d {{print $2}}')
echo "KILLED run {run} after {delay} s: $state"
echo "CHECK kill-9 $gen $({changed} {img} /var/tmp/pre.img $since)"
if [[ {recover} == 1 ]]; then
    $TCMU_PR ublk recover $dev
    sleep 3
fi
$TCMU_PR ublk del $dev
wait $fio || true
if [[ {recover} == 1 ]]; then
    echo "CHECK after-recover $gen $({changed} {img} /var/tmp/pre.img $since)"
fi
if [[ {live} == 1 ]]; then
    got=$($TCMU_PR snapshot read --number $snap --store {store} | sha256sum | cut -c1-64)
    echo "SNAPSHOT $got PRE $(sha256sum </var/tmp/pre.img | cut -c1-64)"
    $TCMU_PR snapshot delete --number $snap --store {store}
fi
echo "LEFT $($TCMU_PR ublk list | wc -l)"
"""


def test_tracked_file_store_kill_9_mid_write_loses_no_mark(ready):
    """docs/cbt.md's crash rule on the ublk path: the server is killed (SIGKILL) while fio
    writes through /dev/ublkbN; every block that differs from the copy taken before the run
    is marked with the run's change number (a kill on the same boot keeps the generation).
    Runs 1 and 3 keep their snapshot live (the kill lands among copy-on-writes; its read
    must still be the pre-run image); the last also recovers the device and checks again."""
    vm = ready
    sh(vm, layouts.RESET)
    store = f"file:{IMG}"
    sh(vm, f"""
rm -f {IMG} {IMG}.cbt*; truncate -s 128M {IMG}
$TCMU_PR cbt enable --store {store} --block-size 65536
""")
    rnd = random.Random(13)
    runs = 5
    totals = {"runs": 0, "blocks written": 0, "4k pieces": 0, "marked": 0, "missing": 0,
              "renewed": 0}
    lines = []
    for run in range(runs):
        last = run == runs - 1
        out = sh(vm, CRASH_RUN.format(store=store, img=IMG, changed=CHANGED, run=run, seed=run + 1,
                                      delay=f"{rnd.uniform(2.0, 5.0):.2f}",
                                      live=int(run % 2 == 1 or last), recover=int(last)),
                 timeout=600)  # fmt: skip
        lines += [ln for ln in out.splitlines() if ln.startswith(("KILLED", "CHECK", "SNAP"))]
        checks = [(label, gen, json.loads(found)) for label, gen, found in
                  re.findall(r"^CHECK (\S+) (\S+) (\{.*\})$", out, re.M)]  # fmt: skip
        assert checks and checks[0][0] == "kill-9", out[-3000:]
        assert len(checks) == (2 if last else 1), out[-3000:]
        for label, gen, c in checks:
            assert c["changed"] > 0, f"run {run} ({label}): nothing written before the kill"
            if label == "kill-9":
                totals["blocks written"] += c["changed"]
                totals["4k pieces"] += c["pieces"]
                totals["marked"] += c["marked"]  # over-marking is allowed, shown here
            totals["missing"] += c["missing"]
            totals["renewed"] += c["generation_id"] != gen
        totals["runs"] += 1
        snap = re.search(r"^SNAPSHOT (\w+) PRE (\w+)$", out, re.M)
        if run % 2 == 1 or last:
            assert snap and snap.group(1) == snap.group(2), out[-3000:]
        assert "LEFT 0" in out, out[-3000:]
    print("\n" + "\n".join(lines))
    print(f"ublk kill -9 crash test: {totals}")
    assert totals["missing"] == 0
    assert totals["renewed"] == 0  # same boot: only a process died, the page cache kept all
    sh(vm, f"$TCMU_PR cbt disable --store {store}")
    assert devices(vm) == 0


def test_bad_parameters_leave_no_device(ready):
    vm = ready
    before = devices(vm)
    out = sh(vm, f"""
rm -f /var/tmp/empty.img; touch /var/tmp/empty.img
rm -f {IMG}; truncate -s 16M {IMG}
for args in "--store file:/var/tmp/empty.img" "--store nfs:server/x" \
            "--store file:/var/tmp/missing.img" "--store file:{IMG} --depth 5000" \
            "--store file:{IMG} --queues 99"; do
    $TCMU_PR ublk add $args >/tmp/add.out 2>&1 && echo "ACCEPTED $args" || echo "rc $? $args"
    cat /tmp/add.out
done
$TCMU_PR ublk del /dev/ublkb999 2>&1 || echo "del rc $?"
""", check=False)
    print("\n" + out)
    assert "ACCEPTED" not in out
    assert "0 bytes: too small" in out
    assert "unknown store type 'nfs'" in out
    assert "does not exist" in out
    assert "the kernel's limit is 1..4096" in out
    assert "--queues 99" in out
    assert "no ublk device 999" in out
    assert devices(vm) == before
