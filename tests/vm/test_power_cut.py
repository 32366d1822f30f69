"""A power cut on the real kernel: the VM killed in the middle of PR updates with APTPL set,
then booted again on the same disk.  Each store's variant boots two VMs of its own (the cut
one and its successor), so no other test's VM is alive or shares its disk.
"""

from __future__ import annotations

import time

import layouts
import pytest
import vmrig
from test_faults import FAULTS, STORES, scenario, two_gateways

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("no_shared_vm")]


@pytest.mark.parametrize("where", STORES)
def test_power_cut_during_aptpl_updates_leaves_before_or_after(tmp_path, where: str) -> None:
    """The VM is killed (QEMU SIGKILL: the guest's unwritten caches are gone) while every path
    re-registers with APTPL; booted again on the same disk, the stored state decodes and holds,
    for each nexus, the last acknowledged key or the one after it: never torn."""
    disk = tmp_path / "disk.qcow2"
    with vmrig.VM(overlay=disk, memory_mb=2048) as first:
        env = two_gateways(first, where)
        rc, out = first.run(f"setsid nohup {FAULTS} storm /mnt/io/storm.log >/dev/null 2>&1 &",
                            env=env)  # fmt: skip
        assert rc == 0, out
        deadline = time.monotonic() + 120
        while len(_acks(first)) < 40:  # a few acknowledged updates on every path
            assert time.monotonic() < deadline, "the storm did not get going"
            time.sleep(0.5)
        first.proc.kill()  # the power cut
        first.proc.wait()
        acked = _acks(first)
    with vmrig.VM(overlay=disk, memory_mb=2048) as second:
        env = layouts.setup(second, f"iscsi-2gw@{where}")
        state = scenario(second, env, "state")
    last = {i: max(n for j, n in acked if j == i) for i in {j for j, _ in acked}}
    print(f"\npower cut during APTPL updates ({where}): {len(acked)} acknowledged before the "
          f"cut; last acknowledged per path {last}; after reboot {state}")
    assert state["decodes"], state
    finals = {k >> 24: k & 0xFFFFFF for k in state["keys"]}
    assert len(state["keys"]) == 4 and set(finals) == {1, 2, 3, 4}, state
    for i, n in last.items():
        assert finals[i + 1] in (n, n + 1), (i, n, finals)


def _acks(vm) -> list[tuple[int, int]]:
    try:
        text = (vm.io / "storm.log").read_text()
    except FileNotFoundError:
        return []
    # The cut may leave half a line at the end: only whole "path counter" lines count.
    fields = (ln.split() for ln in text.splitlines())
    return [(int(f[0]), int(f[1])) for f in fields if len(f) == 2 and all(x.isdigit() for x in f)]
