"""Two gateways = two daemon processes on one kernel (examples/targetcli/iscsi-2gw).

Each daemon serves only its gateway's devices (``--devices lu1.p<g>.*``) and both share the
LU's file store: a reservation taken through gateway 1 is reported by gateway 2, and a
PREEMPT AND ABORT through gateway 2 fences the preempted client on gateway 1 as well
(tests/vm/scenarios/two-gateways.sh, real open-iscsi sessions, sg_persist, sg_raw, dd).
"""

from __future__ import annotations

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
