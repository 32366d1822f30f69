"""The numbers C and Python share, pinned: native/ring.h's RING_* (read back through the
compiled cffi module) against tcmu_pr/ring/abi.py and tcmu_pr/ring/layout.py."""

from __future__ import annotations

import pytest

from tcmu_pr.ring import abi
from tcmu_pr.ring import layout as L
from tcmu_pr.ring.native import load

SHARED = ["VERDICT_READ", "VERDICT_WRITE", "VERDICT_UA", "VERDICT_KNOWN", "NEXUS_SLOTS",
          "ERR_MAILBOX", "ERR_HEAD", "ERR_ENTRY",
          "ERR_PENDING", "ERR_NOT_CMD", "ERR_IOV", "MAX_PUNTS"]  # fmt: skip
OFFSETS = ["MB_CMD_HEAD", "MB_CMD_TAIL", "MAILBOX_SIZE", "REQ_IOV_CNT", "REQ_CDB_OFF",
           "REQ_IOV", "RSP_SCSI_STATUS", "RSP_READ_LEN", "RSP_SENSE", "ENTRY_SIZE",
           "REQ_NEXUS_HANDLE", "HDR_KFLAGS"]  # fmt: skip


def test_every_shared_constant_is_pinned():
    names = {n for n in vars(abi) if n.isupper()}
    assert names == set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_python_constant_equals_the_c_one(name):
    assert getattr(abi, name) == getattr(load().lib, f"RING_{name}")


@pytest.mark.parametrize("name", OFFSETS)
def test_ring_offsets_the_c_loop_uses_are_the_python_ones(name):
    assert getattr(L, name) == getattr(load().lib, f"RING_{name}")
