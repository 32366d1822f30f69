"""Faults on the real kernel with real initiators (iscsi-2gw), on both stores: a gateway daemon
killed during a PR OUT storm and during fio, the OSD and the monitor restarted, a gateway
frozen past the ack timeout while its initiator is preempted (the power cut is
test_power_cut.py: it boots VMs of its own).

The scenarios run in the guest (tests/vm/scenarios/faults.py) and print one JSON summary; the
checks are here, and each test prints its figures (pytest -s shows them).  Tests of one module
share one booted VM: all ``file`` tests, then all ``rbd`` tests.
"""

from __future__ import annotations

import json
import re

import layouts
import pytest

pytestmark = pytest.mark.vm
#: Ceph daemons killed, gateways frozen: a VM of its own, not the one other modules share.
OWN_VM = True

FAULTS = "python3 /mnt/repo/tests/vm/scenarios/faults.py"
STORES = ("file", "rbd")


@pytest.fixture(scope="module", params=STORES)
def store(request) -> str:
    return request.param


def scenario(vm, env: dict[str, str], *args: str, timeout: float = 900) -> dict:
    rc, out = vm.run(" ".join([FAULTS, *args]), env=env, timeout=timeout)
    m = re.search(r"^RESULT (.*)$", out, re.M)
    assert rc == 0 and m, out[-4000:]
    return json.loads(m.group(1))


def two_gateways(vm, store: str) -> dict[str, str]:
    return layouts.setup(vm, f"iscsi-2gw@{store}", fresh=True)


def check_storm(r: dict, *, replays: int = 0) -> None:
    """What every storm must show, whatever failed during it.

    ``replays``: commands that may have run twice.  A daemon killed after a change landed
    but before it answered leaves the command in the TCMU ring, and its successor, adopting
    the device, runs it again (REGISTER AND IGNORE with the same key: the same registrations,
    one more generation).  At most one per path of the killed daemon."""
    assert r["decode_failures"] == [], r["decode_failures"]  # the blob always decoded
    assert r["end"]["decodes"]
    assert r["registrations"] == 4, r["end"]  # one per nexus: none lost, none doubled
    for p in r["paths"]:
        # Every GOOD landed: the stored key is the last acknowledged one, or the one after
        # it whose answer the fault took away (it landed, its GOOD never came).
        assert p["final"] in (p["last_good"], p["last_attempted"]), p
        assert p["final"] >= p["last_good"], p
        assert p["good"] > 0, p
    # Each GOOD is one landed change; nothing landed that was not attempted (or replayed).
    assert r["good_total"] <= r["changes_landed"] <= r["attempts_total"] + replays, r


def storm_figures(name: str, r: dict) -> str:
    rows = "; ".join(
        f"{p['dev']} {p['good']}/{p['commands']} GOOD (during fault {p['good_during_fault']}, "
        f"longest wait {p['longest_wait']} s, resumed {p['resumed_after']} s after)"
        for p in r["paths"])  # fmt: skip
    return (f"\n{name}: fault {r['fault']}; {r['good_total']} GOOD of {r['attempts_total']} "
            f"commands, {r['changes_landed']} changes landed, registrations "
            f"{r['registrations']}, lost 0, torn 0; {rows}")


def test_gateway_daemon_killed_during_a_pr_out_storm(vm, store: str) -> None:
    env = two_gateways(vm, store)
    r = scenario(vm, env, "storm-kill")
    print(storm_figures(f"kill -9 gw1 daemon during a PR OUT storm ({store})", r))
    check_storm(r, replays=2)  # gateway 1 serves two of the four paths
    # The other gateway kept serving while gateway 1's daemon was down.
    gw2 = [p for p in r["paths"] if p["dev"] in env["TCMU_PR_PATHS"].split()[1::2]]
    assert all(p["good_during_fault"] > 0 for p in gw2), gw2
    # The restarted daemon adopted its devices: gateway 1's paths answered GOOD again.
    gw1 = [p for p in r["paths"] if p not in gw2]
    assert all(p["resumed_after"] is not None for p in gw1), gw1


def test_gateway_daemon_killed_during_fio_with_verify(vm, store: str) -> None:
    env = two_gateways(vm, store)
    r = scenario(vm, env, "fio-kill")
    print(f"\nkill -9 gw1 daemon during fio verify ({store}): {r}")
    for job in r["fio"]:
        assert (job["rc"], job["error"]) == (0, 0), job  # 0 verify errors
        assert job["verified_kib"] == 8 * 1024, job


def test_frozen_gateway_is_fenced_and_then_answers_nothing_from_its_old_state(
    vm, store: str
) -> None:
    env = two_gateways(vm, store)
    r = scenario(vm, env, "frozen")
    print(f"\nfrozen gw1 ({store}): PREEMPT AND ABORT through gw2 answered in {r['fence_s']} s "
          f"(rc {r['fence_rc']}); gw1 killed: {r['gateway_killed']}, restarted in "
          f"{r['restart_s']} s; client1's writes through gw1 after SIGCONT: {r['answers']}; "
          f"block: {r['block']}")  # fmt: skip
    assert r["marker_written"] == 0 and r["fence_rc"] == 0
    # File stores cut a silent gateway off by killing it; RBD by blocklisting it.
    assert r["gateway_killed"] is (store == "file")
    assert all(rc != 0 for rc, _ in r["answers"]), r["answers"]  # nothing written GOOD ...
    assert r["answers"][-1][0] == 24  # ... and in the end refused as the new state says
    assert r["read_rc"] == 0 and r["block"] == "before"  # ... and nothing landed


@pytest.mark.parametrize("daemon", ["osd", "mon"])
def test_ceph_daemon_restart_during_a_pr_out_storm(vm, daemon: str) -> None:
    env = two_gateways(vm, "rbd")
    r = scenario(vm, env, "storm-ceph", daemon)
    print(storm_figures(f"{daemon} restart during a PR OUT storm", r))
    check_storm(r)
    assert all(p["resumed_after"] is not None for p in r["paths"]), r["paths"]


@pytest.mark.parametrize("daemon", ["osd", "mon"])
def test_ceph_daemon_restart_during_fio_with_verify(vm, daemon: str) -> None:
    env = two_gateways(vm, "rbd")
    r = scenario(vm, env, "fio-ceph", daemon)
    print(f"\n{daemon} restart during fio verify: {r}")
    for job in r["fio"]:
        assert (job["rc"], job["error"]) == (0, 0), job
        assert job["verified_kib"] == 8 * 1024, job
