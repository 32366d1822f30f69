"""One booted test VM for every test under tests/vm (marker ``vm``).

Booting under TCG takes 20 s to 2 min, so the VM is session-scoped and each test starts by
resetting it (layouts.setup does).  A VM that cannot be built or booted FAILS these tests
rather than skipping them; deselect them with ``-m "not vm"``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vmrig


@pytest.fixture(scope="session")
def vm() -> Iterator[vmrig.VM]:
    try:
        machine = vmrig.VM()
    except vmrig.VMError as err:
        pytest.fail(f"test VM unavailable: {err}", pytrace=False)
    try:
        yield machine
    finally:
        machine.close()
