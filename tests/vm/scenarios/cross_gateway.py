#!/usr/bin/env python3
"""No-pause cross-gateway checks: a PR change answered GOOD through one gateway is already in
force on the other one, on the very next command.

Runs in the test VM on the iscsi-2gw layout (TCMU_PR_PATHS = client1@gw1 client1@gw2
client2@gw1 client2@gw2).  Each scenario makes one change with sg_persist (or sg_raw for the
SCSI-2 RESERVE/RELEASE) through gateway X and, with no pause at all, sends READ(10)/WRITE(10)
through gateway Y with sg_raw, comparing the status with what SPC-4 requires.  A unit attention
the change owes a nexus on Y must be the answer to that nexus's very next command.

The expectations come from SPC-4 itself (the access table of §5.12.1 / table 47 and the unit
attention rules of §5.12.11), written out below, not from tcmu-pr's own conflict module, so a
bug there cannot hide here.

Prints one line per check and a last line ``CHECKS total=N stale=M``; exit status 1 when any
check was stale, 2 when the rig itself failed (a setup command that should not fail did).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass

GOOD = "GOOD"
CONFLICT = "RESERVATION CONFLICT"
UA_RELEASED = "UA RESERVATIONS RELEASED"
UA_RES_PREEMPTED = "UA RESERVATIONS PREEMPTED"
UA_REG_PREEMPTED = "UA REGISTRATIONS PREEMPTED"
READ, WRITE = "READ", "WRITE"

KEY_A, KEY_B, KEY_RESET = 0xA1, 0xB2, 0xEE
TYPES = (1, 3, 5, 6, 7, 8)
ALL_REGISTRANTS = (7, 8)


class RigError(RuntimeError):
    """A command that sets a scenario up failed: not a staleness finding."""


def access(pr_type: int | None, role: str, op: str) -> str:
    """SPC-4 table 47 for READ/WRITE: ``role`` is holder, registrant or other."""
    if pr_type is None or role == "holder":
        return GOOD
    if role == "registrant" and pr_type in (5, 6, 7, 8):
        return GOOD  # registrants-only and all-registrants types admit every registrant
    if pr_type in (1, 5, 7):  # write exclusive flavours: anyone may read
        return GOOD if op == READ else CONFLICT
    return CONFLICT  # 3, 6, 8: exclusive access flavours


@dataclass(frozen=True)
class Path:
    label: str  # A1 = client1 via gw1, ...
    dev: str
    client: str  # A or B
    gw: int


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def status_of(proc: subprocess.CompletedProcess[str]) -> str:
    """The SCSI answer an sg3_utils tool saw, by its exit code and decoded sense."""
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return GOOD
    if proc.returncode == 24:
        return CONFLICT
    if proc.returncode == 6:
        low = text.lower()
        for phrase, name in (("reservations released", UA_RELEASED),
                             ("reservations preempted", UA_RES_PREEMPTED),
                             ("registrations preempted", UA_REG_PREEMPTED)):  # fmt: skip
            if phrase in low:
                return name
        m = re.search(r"Additional sense: (.*)", text)
        return f"UA {m.group(1).strip() if m else '?'}"
    m = re.search(r"SCSI Status: (.*)", text)
    return f"exit {proc.returncode}" + (f" ({m.group(1).strip()})" if m else "")


class Rig:
    def __init__(self, paths: list[str], verbose: bool) -> None:
        labels = ("A1", "A2", "B1", "B2")
        self.paths = {lab: Path(lab, dev, lab[0], int(lab[1]))
                      for lab, dev in zip(labels, paths, strict=True)}  # fmt: skip
        self.verbose = verbose
        self.total = 0
        self.stale: list[str] = []
        self.rtpi = {g: self._rtpi(self.p("A", g).dev) for g in (1, 2)}
        self.initiator = {"A": os.environ["TCMU_PR_INITIATORS"].split()[0],
                          "B": os.environ["TCMU_PR_INITIATORS"].split()[1]}  # fmt: skip

    def p(self, client: str, gw: int) -> Path:
        return self.paths[f"{client}{gw}"]

    @staticmethod
    def _rtpi(dev: str) -> int:
        out = run(["sg_vpd", "-p", "0x83", dev]).stdout
        m = re.search(r"Relative target port: (0x[0-9a-f]+)", out)
        if not m:
            raise RigError(f"no relative target port in VPD 0x83 of {dev}")
        return int(m.group(1), 16)

    # -- commands ------------------------------------------------------------------------

    def prout(self, path: Path, *opts: str, want: str = GOOD) -> None:
        """A PR OUT through sg_persist that must answer ``want`` (part of the scenario)."""
        proc = run(["sg_persist", "-n", "-o", *opts, path.dev])
        got = status_of(proc)
        if self.verbose:
            print(f"  {path.label}: sg_persist -o {' '.join(opts)} -> {got}")
        if got != want:
            raise RigError(f"{path.label} sg_persist -o {' '.join(opts)}: {got}, not {want}\n"
                           f"{proc.stdout}{proc.stderr}")  # fmt: skip

    def raw(self, path: Path, cdb: str, *, want: str = GOOD) -> None:
        proc = run(["sg_raw", path.dev, *cdb.split()])
        got = status_of(proc)
        if self.verbose:
            print(f"  {path.label}: sg_raw {cdb} -> {got}")
        if got != want:
            raise RigError(f"{path.label} sg_raw {cdb}: {got}, not {want}")

    def io(self, path: Path, op: str) -> str:
        if op == WRITE:
            cmd = ["sg_raw", "-s", "512", "-i", "/dev/zero", path.dev,
                   "2a", "00", "00", "00", "00", "00", "00", "00", "01", "00"]  # fmt: skip
        else:
            cmd = ["sg_raw", "-r", "512", "-o", "/dev/null", path.dev,
                   "28", "00", "00", "00", "00", "00", "00", "00", "01", "00"]  # fmt: skip
        return status_of(run(cmd))

    def check(self, scenario: str, path: Path, op: str, want: str) -> None:
        got = self.io(path, op)
        self.total += 1
        line = f"{scenario}: {op} via {path.label} -> {got}"
        if got == want:
            print(f"  ok     {line}")
        else:
            print(f"  STALE  {line}  (SPC-4 requires {want})")
            self.stale.append(line)

    def drain(self) -> None:
        """Take every pending unit attention (not counted: this is between scenarios)."""
        for path in self.paths.values():
            for _ in range(5):
                if run(["sg_turs", path.dev]).returncode == 0:
                    break
            else:
                raise RigError(f"{path.label} keeps failing TEST UNIT READY")

    def reset(self) -> None:
        """No reservation, no registration, no pending unit attention."""
        self.drain()
        a1 = self.p("A", 1)
        self.prout(a1, "-I", "-S", hex(KEY_RESET))
        self.prout(a1, "-C", "-K", hex(KEY_RESET))
        self.drain()

    # -- the expected view from the other gateway --------------------------------------------

    def expect_io(self, scenario: str, gw: int, pr_type: int | None,
                  roles: dict[str, str], uas: dict[str, str] | None = None) -> None:  # fmt: skip
        """READ and WRITE of both clients through gateway ``gw``; a pending UA first."""
        for client in ("A", "B"):
            path = self.p(client, gw)
            ua = (uas or {}).get(client)
            if ua:
                self.check(scenario, path, WRITE, ua)
            for op in (WRITE, READ):
                self.check(scenario, path, op, access(pr_type, roles[client], op))


def persistent_scenarios(rig: Rig, x: int, y: int) -> None:
    """Every reservation type; changes through gateway x, checks through gateway y."""
    ax, bx = rig.p("A", x), rig.p("B", x)
    ka, kb = hex(KEY_A), hex(KEY_B)
    for t in TYPES:
        tt = f"--prout-type={t}"
        # A registered through both gateways, B through x only: B via y is unregistered.
        registered = "registrant"
        roles_resv = {"A": "holder" if t in ALL_REGISTRANTS else registered, "B": "other"}

        def setup() -> None:
            rig.reset()
            rig.prout(ax, "-G", "-S", ka)
            rig.prout(rig.p("A", y), "-G", "-S", ka)
            rig.prout(bx, "-G", "-S", kb)

        name = f"gw{x}->gw{y} type {t}"
        setup()
        rig.prout(ax, "-R", "-K", ka, tt)
        rig.expect_io(f"{name} RESERVE", y, t, roles_resv)

        rig.prout(ax, "-L", "-K", ka, tt)
        # SPC-4 5.12.11.2.2: releasing a registrants-only/all-registrants reservation queues
        # RESERVATIONS RELEASED for every other registered nexus (A via y here).
        ua = {"A": UA_RELEASED} if t in (5, 6, 7, 8) else None
        rig.expect_io(f"{name} RELEASE", y, None, {"A": registered, "B": "other"}, ua)

        rig.prout(ax, "-R", "-K", ka, tt)
        rig.expect_io(f"{name} RESERVE again", y, t, roles_resv)
        rig.drain()  # B via x still holds the RESERVATIONS RELEASED of types 5-8
        # B preempts A's key: A's registrations go (REGISTRATIONS PREEMPTED to A via y too)
        # and B via x holds the reservation; both clients are then unregistered on y.
        rig.prout(bx, "-P", "-K", kb, "-S", ka, tt)
        rig.expect_io(f"{name} PREEMPT", y, t, {"A": "other", "B": "other"},
                      {"A": UA_REG_PREEMPTED})  # fmt: skip

        setup()
        rig.prout(ax, "-R", "-K", ka, tt)
        rig.drain()
        rig.prout(bx, "-A", "-K", kb, "-S", ka, tt)
        rig.expect_io(f"{name} PREEMPT AND ABORT", y, t, {"A": "other", "B": "other"},
                      {"A": UA_REG_PREEMPTED})  # fmt: skip

        setup()
        rig.prout(ax, "-R", "-K", ka, tt)
        rig.drain()
        rig.prout(bx, "-C", "-K", kb)
        # CLEAR: RESERVATIONS PREEMPTED to every registered nexus but the clearer's.
        rig.expect_io(f"{name} CLEAR", y, None, {"A": "other", "B": "other"},
                      {"A": UA_RES_PREEMPTED})  # fmt: skip

        if t in ALL_REGISTRANTS:
            continue  # SPC-4 6.16.2.10: no REGISTER AND MOVE of an all-registrants reservation
        setup()
        rig.prout(ax, "-R", "-K", ka, tt)
        rig.drain()
        # A moves its reservation to B via y (registered there with A's key by the move);
        # -U: A via x is unregistered, A via y stays registered.
        tid = rig.initiator["B"]
        rig.prout(ax, "-M", "-U", "-K", ka, "-S", ka, tt, "-X", tid, "-Q", str(rig.rtpi[y]))
        rig.expect_io(f"{name} REGISTER AND MOVE", y, t, {"A": registered, "B": "holder"})


def scsi2_scenarios(rig: Rig, x: int, y: int) -> None:
    """SCSI-2 RESERVE(6)/RELEASE(6) (no registrations, SPC-2 semantics)."""
    rig.reset()
    rig.raw(rig.p("A", x), "16 00 00 00 00 00")
    name = f"gw{x}->gw{y} SCSI-2"
    # A reservation of A via x: every other nexus is refused READ and WRITE.
    for client in ("A", "B"):
        for op in (WRITE, READ):
            rig.check(f"{name} RESERVE(6)", rig.p(client, y), op, CONFLICT)
    rig.raw(rig.p("A", x), "17 00 00 00 00 00")
    for client in ("A", "B"):
        for op in (WRITE, READ):
            rig.check(f"{name} RELEASE(6)", rig.p(client, y), op, GOOD)


def rounds(rig: Rig, n: int) -> None:
    """The same changes repeated: reserve/release and preempt, alternating the gateways."""
    for i in range(n):
        x, y = (1, 2) if i % 2 == 0 else (2, 1)
        ax, bx, by = rig.p("A", x), rig.p("B", x), rig.p("B", y)
        rig.reset()
        rig.prout(ax, "-G", "-S", hex(KEY_A))
        rig.prout(bx, "-G", "-S", hex(KEY_B))
        name = f"round {i + 1} gw{x}->gw{y}"
        rig.prout(ax, "-R", "-K", hex(KEY_A), "--prout-type=3")
        rig.check(f"{name} RESERVE type 3", by, WRITE, CONFLICT)
        rig.check(f"{name} RESERVE type 3", by, READ, CONFLICT)
        rig.prout(ax, "-L", "-K", hex(KEY_A), "--prout-type=3")
        rig.check(f"{name} RELEASE", by, WRITE, GOOD)
        rig.prout(ax, "-R", "-K", hex(KEY_A), "--prout-type=1")
        rig.check(f"{name} RESERVE type 1", by, WRITE, CONFLICT)
        rig.check(f"{name} RESERVE type 1", by, READ, GOOD)
        rig.prout(bx, "-A", "-K", hex(KEY_B), "-S", hex(KEY_A), "--prout-type=1")
        rig.check(f"{name} PREEMPT AND ABORT", by, WRITE, CONFLICT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="repeated rounds (default 20)")
    parser.add_argument("--only", choices=("types", "scsi2", "rounds"), action="append")
    parser.add_argument("-v", "--verbose", action="store_true", help="show setup commands")
    args = parser.parse_args()
    paths = os.environ.get("TCMU_PR_PATHS", "").split()
    if len(paths) != 4:
        print("need the 4 iscsi-2gw paths in TCMU_PR_PATHS", file=sys.stderr)
        return 2
    only = set(args.only or ("types", "scsi2", "rounds"))
    try:
        rig = Rig(paths, args.verbose)
        for x, y in ((1, 2), (2, 1)):
            if "types" in only:
                persistent_scenarios(rig, x, y)
            if "scsi2" in only:
                scsi2_scenarios(rig, x, y)
        if "rounds" in only:
            rounds(rig, args.rounds)
        rig.reset()
    except RigError as err:
        print(f"RIG FAILURE: {err}")
        return 2
    print(f"CHECKS total={rig.total} stale={len(rig.stale)}")
    return 1 if rig.stale else 0


if __name__ == "__main__":
    sys.exit(main())
