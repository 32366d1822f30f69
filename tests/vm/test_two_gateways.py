"""Two gateways = two daemon processes on one kernel (examples/targetcli/iscsi-2gw).

Each daemon serves only its gateway's devices (``--devices lu1.p<g>.*``) and both share the
LU's file store: a reservation taken through gateway 1 is reported by gateway 2, and a
PREEMPT AND ABORT through gateway 2 fences the preempted client on gateway 1 as well
(tests/vm/scenarios/two-gateways.sh, real open-iscsi sessions, sg_persist, sg_raw, dd).
With no pause: a change's GOOD means the other gateway already enforces it
(tests/vm/scenarios/cross_gateway.py, SPC-4's table as the judge).

The first scenario also runs on ``iscsi-2gw:ours-nexus``: the patched target_core_user names
each command's nexus, so one plain-targetcli device behind both gateways is served by one
daemon.  There, two sessions of one initiator through one portal (two ISIDs) must be two
nexuses (tests/vm/scenarios/two-isids.sh).
"""

from __future__ import annotations

import re

import layouts
import pytest

pytestmark = pytest.mark.vm


#: The per-nexus layout (one TCMU device per initiator x gateway, a daemon per gateway) and
#: the nexus-handle one (one device per LU, one daemon, the patched module).
BACKENDS = ("ours", "ours-nexus")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pr_change_through_one_gateway_is_enforced_by_the_other(vm, backend: str) -> None:
    env = layouts.setup(vm, f"iscsi-2gw:{backend}")
    rc, out = vm.run(
        "pgrep -cf 'tcmu_pr daemon --' && bash /mnt/repo/tests/vm/scenarios/two-gateways.sh",
        env=env, timeout=600,
    )  # fmt: skip
    assert rc == 0, out
    lines = out.splitlines()
    if backend == "ours":
        assert lines[0].strip() == "2"  # two daemon processes
        for g in (1, 2):  # each daemon served its own gateway's two devices, and only those
            served = [line for line in lines if line.startswith(f"  gw{g} daemon:")]
            assert len(served) == 2 and all(f"/lu1.p{g}.i" in line for line in served), out
    else:  # one daemon, one device (targetcli's backstore lu1) for all four nexuses
        assert lines[0].strip() == "1", out
        served = [line for line in lines if line.startswith("  nexus daemon:")]
        assert len(served) == 1 and served[0].endswith("/lu1"), out
    assert "RESULT: both gateways agree" in out
    assert out.count("[as expected]") == 6


def _values(out: str) -> dict[str, list[str]]:
    """The ``KEY=value`` lines of a scenario transcript (a key may repeat)."""
    found: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.isupper() and key.replace("_", "").isalnum():
            found.setdefault(key, []).append(value.strip())
    return found


def test_two_sessions_of_one_initiator_through_one_portal_are_two_nexuses(vm) -> None:
    """open-iscsi's ``node.session.nr_sessions=2``: a second session of client1 to gateway 1
    with its own ISID, a second sd for the same LUN.  A key and a WRITE EXCLUSIVE reservation
    made through the first session leave the second unregistered: it sees the one key, its
    WRITE gets RESERVATION CONFLICT, and READ FULL STATUS names the first session's ISID."""
    env = layouts.setup(vm, "iscsi-2gw:ours-nexus")
    rc, out = vm.run("bash /mnt/repo/tests/vm/scenarios/two-isids.sh", env=env, timeout=300)
    assert rc == 0, out
    v = {key: values[-1] for key, values in _values(out).items()}
    assert v["SESSIONS"] == "2" and v["DEV1"] != v["DEV2"], out
    isid1, isid2 = (int(v[k], 16) for k in ("ISID1", "ISID2"))  # hex from the transport class
    assert isid1 != isid2, out
    assert v["SAME_LUN"] == "yes", out  # same device identification VPD through both
    assert v["REGISTER_RC"] == v["RESERVE_RC"] == v["READKEYS_RC"] == "0", out
    assert v["KEYS"] == "1", out  # only session 1's key: session 2 never registered
    assert v["WRITE2_SG_RAW_RC"] == "24", out  # sg_raw: RESERVATION CONFLICT
    assert v["WRITE2_DD_RC"] != "0", out  # the block layer refuses it too
    assert v["WRITE1_DD_RC"] == "0", out  # the holder writes
    assert v["FULLSTATUS_RC"] == "0", out
    # One registrant: client1 with the first session's ISID (TransportID format 1).
    registrants = _values(out)["REGISTRANT"]
    assert len(registrants) == 1, out
    name, sep, isid = registrants[0].rpartition(",i,")
    assert sep and name == env["TCMU_PR_INITIATORS"].split()[0], out
    assert int(isid, 16) == isid1, out


@pytest.mark.parametrize("store", ["file", "rbd"])
def test_every_change_is_in_force_on_the_other_gateway_on_the_very_next_command(
    vm, store: str
) -> None:
    """Every reservation type, RESERVE/RELEASE/PREEMPT/PREEMPT AND ABORT/CLEAR/REGISTER AND
    MOVE and SCSI-2 RESERVE/RELEASE, in both directions, then repeated rounds: sg_persist
    through one gateway, sg_raw through the other at once, unit attentions on the very next
    command.  On RBD each gateway's daemon is its own RADOS client (client.gw1, client.gw2)."""
    env = layouts.setup(vm, f"iscsi-2gw@{store}")
    rc, out = vm.run("bash /mnt/repo/tests/vm/scenarios/cross-gateway.sh --rounds 20",
                     env=env, timeout=1800)  # fmt: skip
    m = re.search(r"^CHECKS total=(\d+) stale=(\d+)$", out, re.MULTILINE)
    assert m, out[-3000:]
    total, stale = int(m.group(1)), int(m.group(2))
    print(f"\ncross-gateway checks on {store}: {total}, stale: {stale}")
    assert rc == 0 and stale == 0, "\n".join(ln for ln in out.splitlines() if "STALE" in ln)
    assert total >= 400
