"""Change-block tracking and snapshots on the real kernel: a tracked file LU behind LIO
(loopback-mpath, backend ours), written by fio through a TCMU device.

One test, two boots (the second is the power cut's successor, as tests/vm/test_power_cut.py
does it): fio's written ranges (its iolog) against the map, 0 blocks missing; a snapshot
read while fio overwrites the LU equals the image at snapshot time; then the VM is killed
while fio writes, and the next boot's first open of the map renews its generation.

The same cut also hits a second tracked image served through ublk (``tcmu-pr ublk add``)
with a live snapshot, under fio random writes that flush every 16 writes (a flush is the
server's fdatasync of the image: data reaches the disk without the map being synced, the
case the crash rule renews the generation for). After the reboot: the generation is renewed
or every block differing from the copy taken before the load is marked, and the snapshot
still reads back as the image it was taken of.
"""

from __future__ import annotations

import json
import time

import layouts
import pytest
import vmrig

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_shared_vm")]

IMAGE = "/var/lib/tcmu-pr/lu0.img"
STORE = f"file:{IMAGE}"
TRACK = 65536
CLI = "python3 -m tcmu_pr"
#: a fresh 256 MiB image with tracking on, before the layout's daemon opens it
PREPARE = (f"mkdir -p /var/lib/tcmu-pr && truncate -s 256M {IMAGE} "
           f"&& {CLI} cbt enable --store {STORE} --block-size {TRACK}")  # fmt: skip


def _fio(seconds: float = 0, log: str = "", seed: int = 1, ios: int = 0) -> str:
    """fio random writes on the first path: ``ios`` of them, or for ``seconds``."""
    iolog = f"--write_iolog={log} " if log else ""
    amount = f"--number_ios={ios} " if ios else f"--time_based --runtime={seconds} "
    return ('read -r -a paths <<<"$TCMU_PR_PATHS"; '
            f'fio --name=cbt --filename="${{paths[0]}}" --rw=randwrite '
            f"--bssplit=4k/70:16k/20:128k/10 --iodepth=16 --ioengine=libaio --direct=1 "
            f"{amount}--size=256M --randseed={seed} "
            f"{iolog}--output-format=terse --terse-version=3 >/dev/null")  # fmt: skip


#: The ublk image: served through /dev/ublkbN in the first boot, cut under write load.
UIMAGE = "/var/tmp/cbt-ublk.img"
USTORE = f"file:{UIMAGE}"
#: The blocks of UIMAGE that differ from its pre-load copy, and what the map says of them.
UCHECK = f"python3 /mnt/repo/tests/vm/tools/cbt_changed.py {UIMAGE} {UIMAGE}.pre"


def _ublk_under_load(vm, env) -> tuple[str, int, str, int]:
    """Serve UIMAGE (tracked) through ublk, give it some data, take a snapshot, keep a
    durable copy, then start fio random writes with flushes in the background. Returns
    (generation, the snapshot's frozen change number, its sha256, the snapshot number)."""
    out = _run(vm, f"""
set -e
modprobe ublk_drv
rm -f {UIMAGE} {UIMAGE}.*; truncate -s 64M {UIMAGE}
{CLI} cbt enable --store {USTORE} --block-size {TRACK} >/dev/null
dev=$({CLI} ublk add --store {USTORE} --depth 32)
echo "$dev" >/tmp/ublk.dev
fio --name=fill --filename=$dev --rw=randwrite --bs=64k --iodepth=16 --ioengine=libaio \
    --direct=1 --number_ios=300 --randseed=7 --output-format=terse >/dev/null
n=$({CLI} snapshot create --store {USTORE})
sync
echo "SNAP $n $(sha256sum <{UIMAGE} | cut -c1-64)"
cp {UIMAGE} {UIMAGE}.pre && sync
{CLI} cbt info --store {USTORE}
{CLI} snapshot list --store {USTORE}
setsid nohup fio --name=cut --filename=$dev --rw=randwrite --bssplit=4k/70:16k/20:128k/10 \
    --iodepth=16 --ioengine=libaio --direct=1 --fsync=16 --time_based --runtime=600 \
    --randseed=8 --output-format=terse >/dev/null 2>&1 &
""", env, timeout=600)
    _, number, digest = next(ln for ln in out.splitlines() if ln.startswith("SNAP ")).split()
    info = json.loads(next(ln for ln in out.splitlines() if ln.startswith("{")))
    frozen = json.loads(next(ln for ln in out.splitlines() if ln.startswith("[")))[0]
    return info["generation_id"], frozen["changes_number"], digest, int(number)


def _written_blocks(iolog: str) -> set[int]:
    """Blocks of the iolog's writes (v2 lines "file write off len", v3 with a time first)."""
    blocks: set[int] = set()
    for line in iolog.splitlines():
        f = line.split()
        if len(f) == 5:
            f = f[1:]
        if len(f) == 4 and f[1] == "write":
            off, length = int(f[2]), int(f[3])
            blocks.update(range(off // TRACK, (off + length - 1) // TRACK + 1))
    return blocks


def _run(vm, script: str, env, timeout: float = 300) -> str:
    rc, out = vm.run(script, env=env, timeout=timeout)
    assert rc == 0, out
    return out


def test_tracking_snapshot_and_power_cut_through_tcmu(tmp_path):
    disk = tmp_path / "disk.qcow2"
    with vmrig.VM(overlay=disk, memory_mb=2048) as vm:
        _run(vm, layouts.RESET + layouts.FRESH + PREPARE, layouts.GUEST_ENV)
        env = layouts.setup(vm, "loopback-mpath:ours@file")
        gen = json.loads(_run(vm, f"{CLI} cbt info --store {STORE}", env))["generation_id"]

        # 1. fio's written ranges, all in the map
        start = json.loads(_run(vm, f"{CLI} cbt map --json --store {STORE}", env))
        assert not any(start), "something wrote the LU before fio did"
        _run(vm, _fio(log="/tmp/fio.iolog", ios=1500), env)
        iolog = _run(vm, "cat /tmp/fio.iolog", env)
        assert "write" in iolog, iolog[:2000]
        written = _written_blocks(iolog)
        marks = json.loads(_run(vm, f"{CLI} cbt map --json --store {STORE}", env))
        marked = {i for i, v in enumerate(marks) if v}
        missing = written - marked
        print(f"\nVM cbt: fio wrote {len(written)} of {len(marks)} blocks, "
              f"{len(marked)} marked, {len(missing)} missing")
        assert written and not missing

        # 2. a snapshot read while fio overwrites the LU equals the image at snapshot time
        before = _run(vm, f"sync && sha256sum {IMAGE} | cut -d' ' -f1", env).strip()
        number = int(_run(vm, f"{CLI} snapshot create --store {STORE}", env))
        snap_sum = _run(vm, f"({_fio(20, seed=2)}) & sleep 2; "
                            f"{CLI} snapshot read --number {number} --store {STORE} "
                            f"| sha256sum | cut -d' ' -f1; wait", env).strip()  # fmt: skip
        after = _run(vm, f"sha256sum {IMAGE} | cut -d' ' -f1", env).strip()
        listing = json.loads(_run(vm, f"{CLI} snapshot list --store {STORE}", env))
        print(f"VM snapshot: {listing}")
        assert snap_sum == before != after
        assert listing[0]["state"] == "ready" and listing[0]["diff_bytes"] > 0

        # 3. the power cut: the VM dies while fio writes, through TCMU and through ublk
        ugen, usince, usum, unumber = _ublk_under_load(vm, env)
        _run(vm, f"setsid nohup bash -c {_quote(_fio(600, seed=3))} >/dev/null 2>&1 &", env)
        time.sleep(5)
        loaded = _run(vm, "cat /sys/block/$(basename $(cat /tmp/ublk.dev))/stat", env)
        vm.proc.kill()
        vm.proc.wait()
        writes = int(loaded.split()[4])  # completed write requests on the ublk device
        print(f"VM ublk before the cut: {writes} writes completed (fill + load), "
              f"snapshot {unumber} froze change number {usince}")
    with vmrig.VM(overlay=disk, memory_mb=2048) as again:
        info = json.loads(_run(again, f"{CLI} cbt info --store {STORE}", layouts.GUEST_ENV))
        snaps = json.loads(_run(again, f"{CLI} snapshot list --store {STORE}",
                                layouts.GUEST_ENV))  # fmt: skip
        print(f"VM after the power cut: {info}, snapshots {snaps}")
        assert info["generation_id"] != gen and info["changes_number"] == 1
        sums = _run(again, f"{CLI} snapshot read --number {number} --store {STORE} "
                           "| sha256sum | cut -d' ' -f1", layouts.GUEST_ENV).strip()  # fmt: skip
        assert sums == before  # the snapshot survived the cut, readable and right

        # the ublk image: the rule (renewed, or every changed block marked), the snapshot
        uinfo = json.loads(_run(again, f"{CLI} cbt info --store {USTORE}", layouts.GUEST_ENV))
        check = json.loads(_run(again, f"{UCHECK} {usince}",
                                layouts.GUEST_ENV).strip().splitlines()[-1])  # fmt: skip
        usnaps = json.loads(_run(again, f"{CLI} snapshot list --store {USTORE}",
                                 layouts.GUEST_ENV))  # fmt: skip
        usums = _run(again, f"{CLI} snapshot read --number {unumber} --store {USTORE} "
                            "| sha256sum | cut -c1-64", layouts.GUEST_ENV).strip()  # fmt: skip
        renewed = uinfo["generation_id"] != ugen
        missing = "n/a (new generation)" if renewed else check["missing"]
        print(f"VM ublk after the power cut: {uinfo}, generation renewed {renewed}, "
              f"blocks differing from the pre-load copy {check['changed']}, "
              f"missing from the map {missing}, snapshot {usnaps}, "
              f"snapshot read {'right' if usums == usum else 'WRONG'}")
        assert renewed or check["missing"] == 0
        # another boot: the documented rule renews (marks in the page cache may be lost)
        assert renewed and uinfo["changes_number"] == 1
        assert usnaps[0]["state"] == "ready" and usums == usum


def _quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
