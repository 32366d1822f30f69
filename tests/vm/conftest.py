"""One booted test VM per test module under tests/vm (marker ``vm``).

Booting under TCG takes 15-30 s, so the tests of a module share one VM and each starts by
resetting it (layouts.setup does).  Each module gets a fresh VM: once, after ~100 layout
jobs in one VM, Debian's 6.12.117 kernel corrupted its slab in dm-mod's IMA code
(dm_ima_measure_on_device_resume, under `multipath`) and the guest wedged; a fresh kernel per
module keeps such a guest-kernel fault from spreading to every later test.  A VM that cannot
be built or booted FAILS these tests rather than skipping them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vmrig


@pytest.fixture(scope="module")
def vm() -> Iterator[vmrig.VM]:
    try:
        machine = vmrig.VM()
    except vmrig.VMError as err:
        pytest.fail(f"test VM unavailable: {err}", pytrace=False)
    try:
        yield machine
    finally:
        machine.close()
