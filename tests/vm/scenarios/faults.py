#!/usr/bin/env python3
"""Fault scenarios in the test VM, each a subcommand that prints one JSON summary line.

Runs on the iscsi-2gw layout (TCMU_PR_PATHS = client1@gw1 client1@gw2 client2@gw1 client2@gw2,
TCMU_PR_STORE, TCMU_PR_STATE's daemon-gw<g>.start/.pid/.log) with real sg_persist, sg_raw and
fio; tests/vm/test_faults.py judges the summaries.

    faults.py storm-kill        kill -9 gateway 1's daemon during a PR OUT storm through both
                                gateways, restart it as a supervisor would
    faults.py fio-kill          the same during fio with verify through both gateways
    faults.py storm-ceph DAEMON kill -9 the OSD or monitor during a storm, restart it
    faults.py fio-ceph DAEMON   the same during fio with verify
    faults.py frozen            SIGSTOP gateway 1's daemon, PREEMPT AND ABORT client1 through
                                gateway 2, SIGCONT: what gateway 1 answers and writes after
    faults.py storm LOG         a storm of APTPL registrations until killed (the power cut),
                                each acknowledged key appended to LOG

The PR OUT storm: every path re-registers its I_T nexus with REGISTER AND IGNORE EXISTING KEY
and a new key each time (path i, counter n: key (i << 24) | n), so each GOOD is one change.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

REPO = "/mnt/repo"
CEPH_DIR = "/var/lib/tcmu-pr-ceph"
BLOCK = 512
FIO_MB = 8


def paths() -> list[str]:
    found = os.environ["TCMU_PR_PATHS"].split()
    if len(found) != 4:
        raise SystemExit("run on the iscsi-2gw layout")
    return found


def state_dir() -> str:
    return os.environ.get("TCMU_PR_STATE", "/run/tcmu-pr")


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(args, -1, "", "timed out")


# -- the gateways' daemons ------------------------------------------------------------------


def daemon_pid(g: int) -> int:
    with open(f"{state_dir()}/daemon-gw{g}.pid") as f:
        return int(f.read())


def kill_wait(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
    while os.path.exists(f"/proc/{pid}") and _state(pid) != "Z":
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def restart_daemon(g: int, timeout: float = 120) -> float:
    """Start gateway g's daemon again as the layout did; seconds until it is ready."""
    log = f"{state_dir()}/daemon-gw{g}.log"
    before = _count(log, "daemon ready")
    t0 = time.monotonic()
    subprocess.run(["bash", "-c", f"source {state_dir()}/daemon-gw{g}.start"], check=True)
    while _count(log, "daemon ready") <= before:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"gateway {g} daemon not ready again after {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - t0


def _count(path: str, text: str) -> int:
    try:
        with open(path, errors="replace") as f:
            return f.read().count(text)
    except OSError:
        return 0


# -- the PR state as stored ---------------------------------------------------------------


def stored_state() -> dict:
    """``tcmu-pr pr show`` of the LU's store, parsed: must decode (exit 0)."""
    out = run(["python3", "-m", "tcmu_pr", "pr", "show", "--store", os.environ["TCMU_PR_STORE"]])
    if out.returncode != 0:
        return {"decodes": False, "error": out.stderr.strip()[:300]}
    generation = int(re.search(r"^generation\s+(0x[0-9a-f]+)$", out.stdout, re.M).group(1), 16)
    keys = [int(k, 16) for k in re.findall(r"^\s+(0x[0-9a-f]{16})\s", out.stdout, re.M)]
    return {"decodes": True, "generation": generation, "keys": keys}


# -- the storm ------------------------------------------------------------------------------


@dataclass
class PathStorm:
    index: int
    dev: str
    answers: list[tuple[int, int, float, float]] = field(default_factory=list)

    def key(self, n: int) -> int:
        return (self.index + 1) << 24 | n

    def loop(self, stop: threading.Event, aptpl: bool = False, log: str | None = None) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            t0 = time.monotonic()
            args = ["sg_persist", "-n", "-o", "-I", "-S", hex(self.key(n)), self.dev]
            if aptpl:
                args.insert(4, "-Z")
            rc = run(args).returncode
            self.answers.append((n, rc, t0, time.monotonic()))
            if log and rc == 0:
                with open(log, "a") as f:
                    f.write(f"{self.index} {n}\n")
                    f.flush()
                    os.fsync(f.fileno())
            if rc not in (0, 6):  # an error, not a UA: do not hammer a dead path
                time.sleep(0.2)


def storm(fault, seconds: float) -> dict:  # type: ignore[no-untyped-def]
    """Run the storm on all four paths, ``fault()`` in the middle; checks and figures."""
    start = stored_state()
    stop = threading.Event()
    storms = [PathStorm(i, dev) for i, dev in enumerate(paths())]
    threads = [threading.Thread(target=s.loop, args=(stop,)) for s in storms]
    decode_failures = []

    def sampler() -> None:
        while not stop.is_set():
            got = stored_state()
            if not got["decodes"]:
                decode_failures.append(got["error"])
            time.sleep(0.3)

    sampling = threading.Thread(target=sampler)
    for t in (*threads, sampling):
        t.start()
    time.sleep(seconds / 3)
    fault_info = fault()
    fault_info["at"] = time.monotonic()
    time.sleep(seconds * 2 / 3)
    stop.set()
    for t in (*threads, sampling):
        t.join()
    end = stored_state()
    per_path = []
    for s in storms:
        good = [n for n, rc, _, _ in s.answers if rc == 0]
        attempted = [n for n, _, _, _ in s.answers]
        final = next((k & 0xFFFFFF for k in end.get("keys", []) if k >> 24 == s.index + 1), None)
        per_path.append({
            "dev": s.dev, "commands": len(s.answers), "good": len(good),
            "other": sorted({rc for _, rc, _, _ in s.answers if rc != 0}),
            "last_good": max(good, default=0), "last_attempted": max(attempted, default=0),
            "final": final,
            # answered GOOD while the failed component was down (killed .. back)
            "good_during_fault": sum(1 for _, rc, t0, t1 in s.answers
                                     if rc == 0 and t0 >= fault_info["down_at"]
                                     and t1 <= fault_info["back_at"]),
            "longest_wait": round(max((t1 - t0 for _, _, t0, t1 in s.answers), default=0), 2),
            "resumed_after": _resumed(s.answers, fault_info.get("back_at")),
        })  # fmt: skip
    for k in ("at", "down_at", "back_at"):
        fault_info.pop(k, None)
    return {
        "start": start, "end": end, "paths": per_path, "fault": fault_info,
        "decode_failures": decode_failures,
        "registrations": len(end.get("keys", [])),
        "changes_landed": end.get("generation", 0) - start.get("generation", 0),
        "good_total": sum(p["good"] for p in per_path),
        "attempts_total": sum(p["commands"] for p in per_path),
    }  # fmt: skip


def _resumed(answers: list[tuple[int, int, float, float]], back_at: float | None) -> float | None:
    """Seconds from ``back_at`` (the failed component back) to this path's next GOOD."""
    if back_at is None:
        return None
    after = [t1 for _, rc, _, t1 in answers if rc == 0 and t1 > back_at]
    return round(min(after) - back_at, 2) if after else None


# -- fio ------------------------------------------------------------------------------------


def fio_jobs(fault, size_mb: int = FIO_MB) -> dict:  # type: ignore[no-untyped-def]
    """fio randwrite + verify on client1@gw1 and client2@gw2, two regions; fault() meanwhile
    (while they still write: under TCG 8 MiB of 4 KiB writes takes several seconds)."""
    p = paths()
    jobs = [(p[0], 0), (p[3], 96)]  # (device, offset in MiB): disjoint regions of one LU
    procs = [subprocess.Popen(
        ["fio", "--name=verify", f"--filename={dev}", "--rw=randwrite", "--verify=crc32c",
         "--verify_fatal=1", f"--offset={off}M", f"--size={size_mb}M", "--bs=4k",
         "--iodepth=8", "--direct=1", "--ioengine=libaio", "--output-format=terse",
         "--terse-version=3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for dev, off in jobs]  # fmt: skip
    time.sleep(1.5)
    fault_info = fault()
    for k in ("down_at", "back_at"):
        fault_info.pop(k, None)
    results = []
    for (dev, _), proc in zip(jobs, procs, strict=True):
        out, err = proc.communicate(timeout=900)
        terse = out.strip().split(";") if out.strip() else []
        results.append({"dev": dev, "rc": proc.returncode,
                        "error": int(terse[4]) if len(terse) > 5 else None,
                        "verified_kib": int(terse[5]) if len(terse) > 5 else None,
                        "stderr": err.strip()[-300:]})  # fmt: skip
    return {"fio": results, "fault": fault_info}


# -- faults ---------------------------------------------------------------------------------


def kill_gateway_1() -> dict:
    pid = daemon_pid(1)
    t0 = time.monotonic()
    kill_wait(pid)
    time.sleep(1.0)  # what a supervisor's restart delay would be
    ready = restart_daemon(1)
    back = time.monotonic()
    return {"killed": pid, "down_s": round(back - t0, 2), "restart_to_ready_s": round(ready, 2),
            "down_at": t0, "back_at": back}  # fmt: skip


def kill_ceph(daemon: str):  # type: ignore[no-untyped-def]
    name = {"osd": "osd.0", "mon": "mon.a"}[daemon]

    def fault() -> dict:
        with open(f"{CEPH_DIR}/run/{name}.pid") as f:
            pid = int(f.read())
        t0 = time.monotonic()
        kill_wait(pid)
        time.sleep(3.0)
        out = run([f"{REPO}/scripts/ceph-cluster", "start", CEPH_DIR], timeout=300)
        if out.returncode != 0:
            raise SystemExit(f"{name} did not come back: {out.stderr[-500:]}")
        back = time.monotonic()
        return {"killed": name, "down_s": round(back - t0, 2), "down_at": t0, "back_at": back}

    return fault


def frozen() -> dict:
    """client1 reserves (type 5) through gw1; gw1's daemon is frozen; client2 PREEMPT AND
    ABORTs client1 through gw2; gw1's daemon is thawed (and, if it was killed, restarted as
    a supervisor would); then client1 writes through gw1.  Nothing may be written."""
    a1, a2, b1, b2 = paths()
    for dev, key in ((a1, "0xa1"), (a2, "0xa1"), (b1, "0xb2"), (b2, "0xb2")):
        run(["sg_persist", "-n", "-o", "-I", "-S", key, dev])
    run(["sg_persist", "-n", "-o", "-R", "-K", "0xa1", "--prout-type=5", a1])
    marker = b"before-the-fence".ljust(BLOCK, b".")
    with open("/tmp/marker", "wb") as f:
        f.write(marker)
    wrote = run(["sg_raw", "-s", str(BLOCK), "-i", "/tmp/marker", a1,
                 "2a", "00", "00", "00", "00", "07", "00", "00", "01", "00"])  # fmt: skip
    pid = daemon_pid(1)
    os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    fence = run(["sg_persist", "-n", "-o", "-A", "-K", "0xb2", "-S", "0xa1", "--prout-type=5",
                 b2], timeout=300)  # fmt: skip
    fence_s = time.monotonic() - t0
    os.kill(pid, signal.SIGCONT) if os.path.exists(f"/proc/{pid}") else None
    time.sleep(1.0)
    killed = _state(pid) in ("X", "Z")
    restarted = round(restart_daemon(1), 2) if killed else None
    attempt = b"after-the-fence".ljust(BLOCK, b".")
    with open("/tmp/attempt", "wb") as f:
        f.write(attempt)
    answers = []
    for _ in range(30):  # until the fenced nexus is refused for good
        out = run(["sg_raw", "-t", "60", "-s", str(BLOCK), "-i", "/tmp/attempt", a1,
                   "2a", "00", "00", "00", "00", "07", "00", "00", "01", "00"], timeout=120)
        sense = re.search(r"Additional sense: (.*)", out.stdout + out.stderr)
        answers.append([out.returncode, sense.group(1).strip() if sense else ""])
        if out.returncode == 24:
            break
        time.sleep(0.5)
    block = run(["sg_raw", "-r", str(BLOCK), "-o", "/tmp/readback", b2,
                 "28", "00", "00", "00", "00", "07", "00", "00", "01", "00"])  # fmt: skip
    with open("/tmp/readback", "rb") as f:
        data = f.read()
    return {"marker_written": wrote.returncode, "fence_rc": fence.returncode,
            "fence_s": round(fence_s, 2), "gateway_killed": killed, "restart_s": restarted,
            "answers": answers, "read_rc": block.returncode,
            "block": "before" if data == marker else "after" if data == attempt else "other"}


def power_storm(log: str) -> None:
    """APTPL registrations until the VM dies; acknowledged (index, counter) appended to log."""
    stop = threading.Event()
    storms = [PathStorm(i, dev) for i, dev in enumerate(paths())]
    threads = [threading.Thread(target=s.loop, args=(stop, True, log)) for s in storms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "storm-kill":
        result = storm(kill_gateway_1, 15)
    elif what == "fio-kill":
        result = fio_jobs(kill_gateway_1)
    elif what == "storm-ceph":
        result = storm(kill_ceph(sys.argv[2]), 15)
    elif what == "fio-ceph":
        result = fio_jobs(kill_ceph(sys.argv[2]))
    elif what == "frozen":
        result = frozen()
    elif what == "storm":
        power_storm(sys.argv[2])
        return 0
    elif what == "state":
        result = stored_state()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
