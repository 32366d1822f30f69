"""Two gateways = two daemon processes on one kernel (examples/targetcli/iscsi-2gw).

Each daemon serves only its gateway's devices (``--devices lu1.p<g>.*``) and both share the
LU's file store: a reservation taken through gateway 1 is reported by gateway 2, and a
PREEMPT AND ABORT through gateway 2 fences the preempted client on gateway 1 as well
(tests/vm/scenarios/two-gateways.sh, real open-iscsi sessions, sg_persist, sg_raw, dd).
With no pause: a change's GOOD means the other gateway already enforces it
(tests/vm/scenarios/cross_gateway.py, SPC-4's table as the judge).
"""

from __future__ import annotations

import re

import layouts
import pytest

pytestmark = pytest.mark.vm


def test_pr_change_through_one_gateway_is_enforced_by_the_other(vm) -> None:
    env = layouts.setup(vm, "iscsi-2gw")
    rc, out = vm.run(
        "pgrep -cf 'tcmu_pr daemon --no-dbus --devices' && "
        "bash /mnt/repo/tests/vm/scenarios/two-gateways.sh",
        env=env, timeout=600,
    )  # fmt: skip
    assert rc == 0, out
    assert out.splitlines()[0].strip() == "2"  # two daemon processes
    for g in (1, 2):  # each daemon served its own gateway's two devices, and only those
        served = [line for line in out.splitlines() if line.startswith(f"  gw{g} daemon:")]
        assert len(served) == 2 and all(f"/lu1.p{g}.i" in line for line in served), out
    assert "RESULT: both gateways agree" in out
    assert out.count("[as expected]") == 6


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
