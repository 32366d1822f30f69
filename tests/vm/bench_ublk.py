#!/usr/bin/env python3
"""The ublk frontend against the kernel's own block devices on the same image, in the test VM.

    tests/vm/bench_ublk.py [--stores file,rbd] [--seconds 8] [--rounds 2] [--size-mb 256]
                           [--depth 32]

One VM boot.  ``file``: a raw image on tmpfs served by ``tcmu-pr ublk add`` and by
``losetup --direct-io=on``.  ``rbd``: one image on the guest's one-node Ceph cluster, filled
with random data, served by ``tcmu-pr ublk add``, by ``rbd-nbd`` (Debian's package) and by
krbd (``rbd map``).  fio QD16, direct I/O (libaio): 4 KiB random read and write, 128 KiB
sequential read and write.  Per case and backend: IOPS, MB/s, the user-space server's CPU
time per I/O (its process's utime+stime over the run; none for loop and krbd, which run in
the kernel) and the whole guest's busy CPU per I/O (fio included; the only figure that
counts kernel-side work too).  Figures, not a test: QEMU/TCG on a shared 2-core host, where
one backend's run can differ from the next by 30 %: ``--rounds`` repeats every backend, the
order reversed each round, and the table gives the mean of the rounds (each round's IOPS
beside it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layouts
import vmrig

CASES = {
    "randread4k": ("randread", "4k"),
    "randwrite4k": ("randwrite", "4k"),
    "seqread128k": ("read", "128k"),
    "seqwrite128k": ("write", "128k"),
}
STORE_BACKENDS = {"file": ["ublk", "loop"], "rbd": ["ublk", "rbd-nbd", "krbd"]}
IMAGE = "/dev/shm/ublk-bench/lu.img"
RBD_IMAGE = "rbd/ublkbench"

#: Guest: make the device of a backend; prints "DEV <path> <server pid or ->".
ATTACH = {
    ("file", "ublk"): "dev=$($TCMU_PR ublk add --store file:{image} --depth {depth})\n"
                      "pid=$($TCMU_PR ublk list | awk -v d=$dev '$1 == d {{print $4}}')",
    ("file", "loop"): "modprobe loop; dev=$(losetup --direct-io=on --show -f {image}); pid=-",
    ("rbd", "ublk"): "dev=$($TCMU_PR ublk add --store rbd:{rbd} --depth {depth})\n"
                     "pid=$($TCMU_PR ublk list | awk -v d=$dev '$1 == d {{print $4}}')",
    ("rbd", "rbd-nbd"): "modprobe nbd; dev=$(rbd-nbd map {rbd}); pid=$(pgrep -x rbd-nbd | head -1)",
    # noudev: the guest runs no udevd, and rbd map/unmap would wait for its event forever
    ("rbd", "krbd"): "modprobe rbd\n"
                     "dev=$(rbd map --options ms_mode=prefer-crc,noudev {rbd}); pid=-",
}
DETACH = {
    "ublk": "$TCMU_PR ublk del $dev",
    "loop": "losetup -d $dev",
    "rbd-nbd": "rbd-nbd unmap $dev",
    "krbd": "rbd unmap --options noudev $dev",
}

#: Guest: one fio case; prints "iops bw_kib server_cpu_s guest_busy_s".
FIO = r"""
ticks() {{ if [[ $pid != - ]]; then awk '{{print $14 + $15}}' /proc/$pid/stat; else echo 0; fi; }}
busy() {{ awk '/^cpu / {{print $2 + $3 + $4 + $7 + $8}}' /proc/stat; }}
t0=$(ticks); b0=$(busy)
out=$(fio --name=bench --filename="$dev" --rw={rw} --bs={bs} --iodepth=16 \
    --ioengine=libaio --direct=1 --time_based --runtime={seconds} --ramp_time={ramp} \
    --size={size}M --output-format=terse --terse-version=3)
hz=$(getconf CLK_TCK)
cpu=$(awk -v a="$t0" -v b="$(ticks)" -v hz=$hz -v p=$pid \
    'BEGIN {{ print (p == "-" ? -1 : (b - a) / hz) }}')
sys=$(awk -v a="$b0" -v b="$(busy)" -v hz=$hz 'BEGIN {{ print (b - a) / hz }}')
echo "$out" | awk -F';' -v cpu="$cpu" -v sys="$sys" \
    '{{ if ("{rw}" ~ /write/) print "RESULT", $49, $48, cpu, sys;
        else print "RESULT", $8, $7, cpu, sys }}'
"""


@dataclass(frozen=True, slots=True)
class Result:
    store: str
    backend: str
    case: str
    iops: float
    mb_s: float
    server_us: float | None  # server CPU per I/O
    guest_us: float  # whole-guest busy CPU per I/O


def prepare(vm: vmrig.VM, store: str, size_mb: int) -> None:
    if store == "file":
        script = (f"mkdir -p {Path(IMAGE).parent} && "
                  f"head -c {size_mb}M /dev/urandom >{IMAGE}")  # fmt: skip
    else:
        script = (f"{layouts.CEPH_START} >&2 && rbd rm {RBD_IMAGE} >/dev/null 2>&1; "
                  f"head -c {size_mb}M /dev/urandom >/tmp/fill && "
                  f"rbd import --image-feature layering /tmp/fill {RBD_IMAGE} >/dev/null && "
                  "rm /tmp/fill")  # fmt: skip
    rc, out = vm.run(script, env=layouts.GUEST_ENV, timeout=900)
    if rc:
        raise vmrig.VMError(f"cannot create the {store} image: {out}")


def run(vm: vmrig.VM, store: str, backend: str, cases: list[str], seconds: int, ramp: int,
        size_mb: int, depth: int) -> list[Result]:  # fmt: skip
    env = dict(layouts.GUEST_ENV)
    if store == "rbd":
        env["CEPH_CONF"] = f"{layouts.GUEST_CEPH}/ceph.conf"
    attach = ATTACH[(store, backend)].format(image=IMAGE, rbd=RBD_IMAGE, depth=depth)
    results = []
    for case in cases:
        rw, bs = CASES[case]
        fio = FIO.format(rw=rw, bs=bs, seconds=seconds, ramp=ramp, size=size_mb - 16)
        script = f"set -e\n{attach}\n{fio}\n{DETACH[backend]}\n"
        rc, out = vm.run(script, env=env, timeout=seconds + ramp + 300)
        line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        if rc or not line:
            raise vmrig.VMError(f"{backend} {case} on {store} failed ({rc}):\n{out}")
        iops, bw_kib, cpu, busy = (float(w) for w in line[-1].split()[1:])
        ios = iops * (seconds + ramp)  # CPU time covers the ramp too
        results.append(Result(store, backend, case, iops, bw_kib * 1024 / 1e6,
                              cpu * 1e6 / ios if cpu >= 0 and ios else None,
                              busy * 1e6 / ios if ios else 0.0))  # fmt: skip
        print(f"bench-ublk: {results[-1]}", file=sys.stderr)  # kept if a later case fails
    return results


def mean(results: list[Result]) -> Result:
    """One row for the rounds of one (store, backend, case)."""
    n = len(results)
    cpu = [r.server_us for r in results if r.server_us is not None]
    first = results[0]
    return Result(first.store, first.backend, first.case, sum(r.iops for r in results) / n,
                  sum(r.mb_s for r in results) / n, sum(cpu) / len(cpu) if cpu else None,
                  sum(r.guest_us for r in results) / n)  # fmt: skip


def table(results: list[Result]) -> str:
    rows = [["store", "case", "backend", "IOPS (mean)", "each round", "MB/s", "server CPU/IO",
             "guest CPU/IO"]]  # fmt: skip
    groups: dict[tuple[str, str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.store, r.case, r.backend), []).append(r)
    def order(key: tuple[str, str, str]) -> tuple[int, int, int]:
        store, case, backend = key
        return (list(STORE_BACKENDS).index(store), list(CASES).index(case),
                STORE_BACKENDS[store].index(backend))  # fmt: skip

    for key in sorted(groups, key=order):
        rounds = groups[key]
        r = mean(rounds)
        rows.append([r.store, r.case, r.backend, f"{r.iops:,.0f}",
                     " ".join(f"{x.iops:,.0f}" for x in rounds), f"{r.mb_s:,.1f}",
                     "-" if r.server_us is None else f"{r.server_us:.0f} us",
                     f"{r.guest_us:.0f} us"])  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default="file,rbd")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--ramp", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--depth", type=int, default=32, help="ublk queue depth")
    a = p.parse_args(argv)
    stores = [s for s in a.stores.split(",") if s]
    cases = [c for c in a.cases.split(",") if c]
    if any(s not in STORE_BACKENDS for s in stores) or any(c not in CASES for c in cases):
        p.error(f"stores from {list(STORE_BACKENDS)}, cases from {list(CASES)}")
    results: list[Result] = []
    failed: list[str] = []
    with vmrig.VM() as vm:
        vm.run(layouts.RESET + "modprobe ublk_drv", timeout=120)
        for store in stores:
            prepare(vm, store, a.size_mb)
            for round_ in range(a.rounds):
                order = STORE_BACKENDS[store][:: -1 if round_ % 2 else 1]
                for backend in order:
                    if f"{store} {backend}" in failed:
                        continue
                    print(f"bench-ublk: round {round_ + 1} {store} {backend}", file=sys.stderr)
                    try:
                        results += run(vm, store, backend, cases, a.seconds, a.ramp, a.size_mb,
                                       a.depth)  # fmt: skip
                    except vmrig.VMError as err:  # one backend failing keeps the others'
                        print(f"bench-ublk: {store} {backend} FAILED: {err}"[:2000],
                              file=sys.stderr)  # fmt: skip
                        failed.append(f"{store} {backend}")
    print(f"fio QD16 direct libaio, {a.seconds} s per case (+{a.ramp} s ramp), {a.rounds} "
          "rounds (backend order reversed each round), "
          f"{a.size_mb} MiB image, ublk depth {a.depth}, QEMU/TCG 2 vCPUs")
    print(table(results))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
