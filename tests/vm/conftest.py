"""The booted test VM that tests under tests/vm share (marker ``vm``).

Booting under TCG takes 15-30 s, so modules share one VM, and each test starts by resetting
it (layouts.setup does; modules also clean up what they made).  A VM is retired, and the next
module gets a fresh one, once it has run :data:`JOB_BUDGET` jobs: once, after ~100 layout jobs
in one VM, Debian's 6.12.117 kernel corrupted its slab in dm-mod's IMA code
(dm_ima_measure_on_device_resume, under `multipath`) and the guest wedged; a bounded life
keeps such a guest-kernel fault from spreading far.  A module that wrecks the guest on purpose
(killed Ceph daemons, frozen gateways) sets ``OWN_VM = True`` and gets a VM of its own that
nobody uses after it.  A VM that died is replaced.  A VM that cannot be built or booted
FAILS these tests rather than skipping them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layouts
import vmrig

#: Jobs after which the shared VM is not handed to another module (a layout set-up is 2).
JOB_BUDGET = 150

_shared: list[vmrig.VM] = []  # the VM modules share now (at most one)


def _boot() -> vmrig.VM:
    try:
        return vmrig.VM()
    except vmrig.VMError as err:
        pytest.fail(f"test VM unavailable: {err}", pytrace=False)


def _retire_shared() -> None:
    while _shared:
        _shared.pop().close()


@pytest.fixture(scope="session")
def _shared_vm_owner() -> Iterator[None]:
    """Closes the last shared VM when the session ends."""
    yield
    _retire_shared()


@pytest.fixture(scope="module")
def vm(request, _shared_vm_owner) -> Iterator[vmrig.VM]:
    if getattr(request.module, "OWN_VM", False):
        _retire_shared()
        machine = _boot()
        try:
            yield machine
        finally:
            machine.close()
        return
    if _shared and (_shared[0].proc.poll() is not None or _shared[0].jobs >= JOB_BUDGET):
        _retire_shared()
    if not _shared:
        _shared.append(_boot())
    machine = _shared[0]
    if machine.module != "stock":  # what a module expects to find, as on a new boot
        machine.run(layouts.RESET, timeout=180)  # no device may hold the module
        machine.load_tcmu("stock")
    yield machine


@pytest.fixture(scope="module")
def no_shared_vm() -> None:
    """For modules that boot VMs of their own: the shared one goes first (two guests on two
    host cores would slow each other)."""
    _retire_shared()
