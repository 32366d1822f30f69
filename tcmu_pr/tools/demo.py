"""``tcmu-pr demo``: a scripted two-gateway scenario on a file store, step by step.

Two cluster nodes reach one LU through two gateways; every command goes through the same
apply loop (read the blob, run the engine, compare-and-swap) a gateway daemon uses, against a
real sidecar file, and the decoded state is printed after each change.  The scenario is the
one fence_scsi plays: both nodes register, one reserves Write Exclusive Registrants Only, an
unregistered host's write is refused, and the other node preempts to fence the first.
Each answer is checked against SPC-4; a mismatch makes the demo exit 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tcmu_pr import scsi
from tcmu_pr.cli import command
from tcmu_pr.engine.pr_cdb import (
    PREEMPT,
    READ_KEYS,
    REGISTER,
    RESERVE,
    parse_read_keys,
    pr_in,
    pr_out,
    read10,
    write10,
)
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import WRITE_EXCLUSIVE_REGISTRANTS_ONLY

GW_A = "iqn.2003-01.org.linux-iscsi.gw-a:lun0"
GW_B = "iqn.2003-01.org.linux-iscsi.gw-b:lun0"
NODE1 = Nexus.make("iqn.1994-05.com.redhat:node1", GW_A, isid=0x23D000001, tpgt=1)
NODE2 = Nexus.make("iqn.1994-05.com.redhat:node2", GW_B, isid=0x23D000002, tpgt=2)
INTRUDER = Nexus.make("iqn.1994-05.com.redhat:intruder", GW_A, isid=0x23D000003, tpgt=1)
KEY1, KEY2 = 0x0000000000ABC001, 0x0000000000ABC002

STATUS_NAMES = {
    scsi.GOOD: "GOOD",
    scsi.CHECK_CONDITION: "CHECK CONDITION",
    scsi.RESERVATION_CONFLICT: "RESERVATION CONFLICT",
    scsi.BUSY: "BUSY",
}


@dataclass(frozen=True, slots=True)
class Step:
    who: str
    nexus: Nexus
    what: str
    cdb: bytes
    data: bytes
    expect: int
    show_state: bool = False


def _scenario() -> list[Step]:
    t5 = WRITE_EXCLUSIVE_REGISTRANTS_ONLY
    return [
        Step("node1 via gw-a", NODE1, f"PR OUT REGISTER key 0x{KEY1:x}",
             *pr_out(REGISTER, sa_key=KEY1), scsi.GOOD, True),
        Step("node2 via gw-b", NODE2, f"PR OUT REGISTER key 0x{KEY2:x}",
             *pr_out(REGISTER, sa_key=KEY2), scsi.GOOD, True),
        Step("node1 via gw-a", NODE1, "PR OUT RESERVE type 5 (Write Exclusive, Registrants Only)",
             *pr_out(RESERVE, key=KEY1, pr_type=t5), scsi.GOOD, True),
        Step("node2 via gw-b", NODE2, "PR IN READ KEYS", pr_in(READ_KEYS), b"", scsi.GOOD),
        Step("intruder via gw-a", INTRUDER, "WRITE(10) as a non-registrant",
             write10(), b"", scsi.RESERVATION_CONFLICT),
        Step("intruder via gw-a", INTRUDER, "READ(10) as a non-registrant (type 5 allows it)",
             read10(), b"", scsi.GOOD),
        Step("node2 via gw-b", NODE2, "WRITE(10) as a registrant", write10(), b"", scsi.GOOD),
        Step("node2 via gw-b", NODE2, f"PR OUT PREEMPT key 0x{KEY2:x} fencing 0x{KEY1:x}",
             *pr_out(PREEMPT, key=KEY2, sa_key=KEY1, pr_type=t5), scsi.GOOD, True),
        Step("node1 via gw-a", NODE1, "WRITE(10) after being fenced",
             write10(), b"", scsi.RESERVATION_CONFLICT),
    ]  # fmt: skip


def _describe(outcome: scsi.Outcome) -> str:
    text = STATUS_NAMES.get(outcome.status, f"status 0x{outcome.status:02x}")
    if outcome.sense:
        s = outcome.sense
        text += f" (sense key 0x{s[2] & 0xF:x}, ASC/ASCQ 0x{s[12]:02x}/0x{s[13]:02x})"
    return text


def run_demo(image: Path, out: TextIO | None = None) -> bool:
    """Play the scenario on ``image``'s file store; True if every answer was the expected one."""
    out = sys.stdout if out is None else out
    from tcmu_pr.backends.file import FileSlot
    from tcmu_pr.pr import codec
    from tcmu_pr.pr.render import format_state
    from tcmu_pr.unit.apply import apply

    ok = True
    with FileSlot(image) as slot:
        print(f"LU image {image}, PR state in {slot.path}\n", file=out)
        for n, step in enumerate(_scenario(), 1):
            outcome = apply(slot, step.nexus, step.cdb, step.data)
            verdict = "ok" if outcome.status == step.expect else "UNEXPECTED"
            ok &= outcome.status == step.expect
            print(f"{n}. [{step.who}] {step.what}", file=out)
            print(f"   -> {_describe(outcome)}  [{verdict}]", file=out)
            if step.cdb[:2] == pr_in(READ_KEYS)[:2] and outcome.data:
                generation, keys = parse_read_keys(outcome.data)
                listed = ", ".join(f"0x{k:x}" for k in keys) or "none"
                print(f"   keys: {listed} (generation {generation})", file=out)
            if step.show_state:
                state, version = codec.decode_versioned(slot.read())
                table = format_state(state, version=version)
                print("   " + table.replace("\n", "\n   "), file=out)
            print(file=out)
    print("scenario " + ("behaved as SPC-4 says" if ok else "FAILED"), file=out)
    return ok


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", type=Path, help="keep the image and its PR sidecar here (default: a temp dir)"
    )
    p.add_argument(
        "--engine-only",
        action="store_true",
        help="what this command always runs: the engine and file store, no kernel "
        "(scripts/demo runs the real thing: two daemons on LIO, or in the test VM)",
    )


@command("demo", help="a scripted two-gateway PR scenario on a file store", configure=_configure)
def _demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tcmu-pr-demo-") as tmp:
        where = args.dir if args.dir is not None else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        image = where / "demo-lu.img"
        with open(image, "wb") as f:
            f.truncate(1 << 20)  # a sparse 1 MiB LU: the demo is about PR, not data
        Path(f"{image}.tcmu-pr").unlink(missing_ok=True)  # start from no PR state
        return 0 if run_demo(image) else 1
