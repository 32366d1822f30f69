"""`tcmu-pr pr exec --store rbd:...` answers exactly as `--store file:...` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tcmu_pr.engine.pr_cdb import (
    PREEMPT,
    READ_KEYS,
    READ_RESERVATION,
    REGISTER,
    RESERVE,
    pr_in,
    pr_out,
    write10,
)
from tcmu_pr.pr.nexus import Nexus

pytestmark = pytest.mark.ceph

GW = "iqn.2003-01.org.linux-iscsi.gw:rbd"
N1 = Nexus.make("iqn.2026-01.org.example:one", GW, isid=1, tpgt=1)
N2 = Nexus.make("iqn.2026-01.org.example:two", GW, isid=2, tpgt=2)
N3 = Nexus.make("iqn.2026-01.org.example:three", GW, isid=3, tpgt=1)

SEQUENCE: list[tuple[Nexus, bytes, bytes]] = [
    (N1, *pr_out(REGISTER, sa_key=0x1111)),
    (N2, *pr_out(REGISTER, sa_key=0x2222)),
    (N1, *pr_out(RESERVE, key=0x1111, pr_type=5)),
    (N3, write10(), b""),  # unregistered: RESERVATION CONFLICT
    (N1, *pr_out(RESERVE, key=0x9999, pr_type=5)),  # wrong key: conflict
    (N2, *pr_out(PREEMPT, key=0x2222, sa_key=0x1111, pr_type=5)),
    (N1, pr_in(READ_KEYS), b""),
    (N2, pr_in(READ_RESERVATION), b""),
]


def _run(store: str) -> list[dict[str, object]]:
    answers = []
    for nexus, cdb, data in SEQUENCE:
        argv = [sys.executable, "-m", "tcmu_pr", "pr", "exec", "--store", store,
                "--nexus", str(nexus), "--cdb", cdb.hex()]  # fmt: skip
        if data:
            argv += ["--data", data.hex()]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    return answers


def test_rbd_store_answers_like_the_file_store(
    ceph_conf: str, rbd_image: str, tmp_path: Path
) -> None:
    image = tmp_path / "lu.img"
    image.write_bytes(bytes(4096))
    on_file = _run(f"file:{image}")
    on_rbd = _run(f"rbd:rbd/{rbd_image}")
    assert on_rbd == on_file
    statuses = [a["status"] for a in on_rbd]
    assert statuses == [0, 0, 0, 0x18, 0x18, 0, 0, 0]  # the sequence did what it says


def test_rbd_store_errors_are_one_line(ceph_conf: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tcmu_pr", "pr", "show", "--store", "rbd:rbd/no-such-image"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no-such-image" in done.stderr and done.stderr.count("\n") == 1
