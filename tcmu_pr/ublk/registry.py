"""What each ublk server serves, in /run/tcmu-pr/ublk/<dev id>.json.

The kernel knows a device's queues and its server's pid, not its store or nexus; ``recover``
needs those to start a new server for a device whose server died, and ``list`` shows them.
The file is written before START_DEV and removed by ``del``.  $TCMU_PR_UBLK_RUN moves the
folder (tests).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def run_dir() -> Path:
    return Path(os.environ.get("TCMU_PR_UBLK_RUN", "/run/tcmu-pr/ublk"))


@dataclass(frozen=True, slots=True)
class Entry:
    dev_id: int
    store: str
    nexus: str
    queues: int
    depth: int
    block_size: int
    log: str


def save(entry: Entry) -> None:
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{entry.dev_id}.json.tmp"
    tmp.write_text(json.dumps(asdict(entry)) + "\n")
    os.replace(tmp, folder / f"{entry.dev_id}.json")


def load(dev_id: int) -> Entry | None:
    try:
        data = json.loads((run_dir() / f"{dev_id}.json").read_text())
        return Entry(**data)
    except (OSError, ValueError, TypeError):
        return None


def remove(dev_id: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        (run_dir() / f"{dev_id}.json").unlink()


def all_ids() -> list[int]:
    try:
        names = os.listdir(run_dir())
    except FileNotFoundError:
        return []
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
