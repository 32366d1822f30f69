"""Peer-fault scenarios shared by the file and RBD tests: a gateway in another process that
dies, or freezes past the ack timeout, while this process changes the PR state.

This process is the changer (a one-off participant, as ``tcmu-pr pr exec``); the gateway is
tests/gateway_child.py, a whole daemon writing block 7 from the nexus being preempted.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway_child import BLOCK, LBA, counter_of

from tcmu_pr import scsi
from tcmu_pr.backends import open_store
from tcmu_pr.backends.base import Store, StoreOptions
from tcmu_pr.backends.store_spec import StoreSpec
from tcmu_pr.engine.pr_cdb import PREEMPT_AND_ABORT, REGISTER, RESERVE, pr_out
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.unit.lu import LogicalUnit

CHILD = Path(__file__).with_name("gateway_child.py")
FENCER = Nexus.make("iqn.2026-01.org.example:fencer", "iqn.2003-01.org.gw1:lu", isid=1)
VICTIM = Nexus.make("iqn.2026-01.org.example:victim", "iqn.2003-01.org.gw2:lu", isid=2)
KEY_F, KEY_V = 0xF1, 0xB2
WE_RO = 5
UA_REGISTRATIONS_PREEMPTED = "6/2a/05"


@dataclass(frozen=True)
class Answer:
    counter: int
    status: int
    sense: str  # key/asc/ascq in hex


class Gateway:
    """The child gateway process and what it printed."""

    def __init__(self, spec: StoreSpec, scratch: Path, *, ceph_conf: str = "",
                 ack_timeout_ms: int = 1000) -> None:  # fmt: skip
        self.log = scratch / f"gateway-{time.monotonic_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), "--store", str(spec), "--scratch", str(scratch),
             "--nexus", str(VICTIM), "--ack-timeout-ms", str(ack_timeout_ms),
             "--ceph-conf", ceph_conf],
            stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True,  # noqa: SIM115
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self._next(120)
        if not first or not first.startswith("READY"):
            self.proc.kill()
            raise AssertionError(f"gateway did not start:\n{self.log_tail()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _next(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def answers(self) -> list[Answer]:
        """Everything printed since the last call."""
        out = []
        while (line := self._next(0)) is not None:
            if line.startswith("W "):
                _, counter, status, sense = line.split()
                out.append(Answer(int(counter), int(status), sense))
        return out

    def wait_for(self, predicate, timeout: float) -> list[Answer]:  # type: ignore[no-untyped-def]
        """Answers until one satisfies ``predicate`` (AssertionError after ``timeout`` s)."""
        seen: list[Answer] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._next(0.1)
            if line and line.startswith("W "):
                _, counter, status, sense = line.split()
                seen.append(Answer(int(counter), int(status), sense))
                if predicate(seen[-1]):
                    return seen
        raise AssertionError(f"gateway never answered as expected; saw {seen[-5:]}\n"
                             f"{self.log_tail()}")  # fmt: skip

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while _state(self.proc.pid) != "T":
            assert time.monotonic() < deadline, "SIGSTOP did not take"
            time.sleep(0.01)

    def thaw(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def close(self) -> None:
        self.thaw()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class Changer:
    """This process's own connection: a one-off participant that changes the state."""

    def __init__(self, spec: StoreSpec, **options: object) -> None:
        self.store: Store = open_store(spec, StoreOptions(**options))  # type: ignore[arg-type]
        self.lu = LogicalUnit(self.store, serve=False)

    def run(self, nexus: Nexus, action: int, **kw: int) -> scsi.Outcome:
        cdb, params = pr_out(action, **kw)
        return self.lu.execute(nexus, cdb, params)

    def block(self) -> bytes:
        return self.store.data().read(LBA * BLOCK, BLOCK)

    def close(self) -> None:
        self.store.close()


def victim_writes_under_a_reservation(changer: Changer, gateway: Gateway) -> None:
    """Both register, the fencer reserves WE-RO; the victim (a registrant) writes GOOD."""
    for nexus, key in ((FENCER, KEY_F), (VICTIM, KEY_V)):
        assert changer.run(nexus, REGISTER, sa_key=key).status == scsi.GOOD
    assert changer.run(FENCER, RESERVE, key=KEY_F, pr_type=WE_RO).status == scsi.GOOD
    gateway.answers()
    gateway.wait_for(lambda a: a.status == scsi.GOOD, 60)


def frozen_gateway_is_cut_off(changer: Changer, gateway: Gateway) -> dict[str, object]:
    """Freeze the gateway, PREEMPT AND ABORT its nexus, thaw it.  Returns figures; the
    caller checks what the store's way of cutting off means for the gateway process."""
    victim_writes_under_a_reservation(changer, gateway)
    gateway.freeze()
    before = gateway.answers()
    t0 = time.perf_counter()
    outcome = changer.run(FENCER, PREEMPT_AND_ABORT, key=KEY_F, sa_key=KEY_V, pr_type=WE_RO)
    fence_seconds = time.perf_counter() - t0
    assert outcome.status == scsi.GOOD, outcome
    confirmation = changer.lu.last_confirmation
    assert confirmation is not None and confirmation.ok and len(confirmation.fenced) == 1
    at_fence = changer.block()
    landed = counter_of(at_fence)
    gateway.thaw()
    return {"fence_seconds": fence_seconds, "before": before, "at_fence": at_fence,
            "landed": landed}  # fmt: skip


def nothing_stale_after_thaw(changer: Changer, after: list[Answer], at_fence: bytes,
                             landed: int | None) -> None:  # fmt: skip
    """No write answered GOOD after the fence unless it had landed before it, and the block
    is exactly as it was when the PREEMPT AND ABORT answered."""
    for answer in after:
        if answer.status == scsi.GOOD:
            assert landed is not None and answer.counter <= landed, (answer, landed)
    assert changer.block() == at_fence
