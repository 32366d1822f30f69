"""A deliberately plain reference model of SPC-4 persistent reservations, for the engine tests.

Written from the standard's text (SPC-4 §5.12, §6.15, §6.16; SPC-2 §5.5.1) with sets and
dicts and no code shared with tcmu_pr.engine.  It works on abstract commands (a
:class:`Cmd`), not bytes, and answers with a status word and a sense name.  The few
choices the standard leaves open follow the engine's documented decisions (see
tcmu_pr/engine/pr_out.py's docstring); the order in which problems are checked is:

1. a SCSI-2 reservation exists -> RESERVATION CONFLICT (any PR OUT);
2. unknown service action -> INVALID FIELD IN CDB;
3. PARAMETER LIST LENGTH < 24 or less data than it says -> PARAMETER LIST LENGTH ERROR;
4. parameter list shape (SPEC_I_PT on another action, lengths that do not add up,
   malformed TransportIDs, reserved MOVE bits);
5. SCOPE/TYPE of RESERVE, PREEMPT, PREEMPT AND ABORT, REPLACE LOST RESERVATION;
6. the service action's own rules.

Model identities: a nexus is ``(initiator, isid, port)``; a registration is filed under a
record ``(initiator, isid or None, port or None)`` where None means "any" (an iSCSI
TransportID without ISID; ALL_TG_PT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GOOD, CONFLICT = "GOOD", "CONFLICT"
INV_CDB, INV_PL, PLL = "INVALID FIELD IN CDB", "INVALID FIELD IN PARAMETER LIST", "PLL ERROR"
INV_RELEASE, NO_RESOURCES = "INVALID RELEASE", "INSUFFICIENT REGISTRATION RESOURCES"
SENSE_NAMES = {
    (0x5, 0x24, 0x00): INV_CDB,
    (0x5, 0x26, 0x00): INV_PL,
    (0x5, 0x1A, 0x00): PLL,
    (0x5, 0x26, 0x04): INV_RELEASE,
    (0x5, 0x55, 0x04): NO_RESOURCES,
}

RES_PREEMPTED, RES_RELEASED, REG_PREEMPTED = 0x03, 0x04, 0x05  # ASC 2Ah qualifiers
AR_TYPES, RO_TYPES = {7, 8}, {5, 6}
VALID_TYPES = {1, 3, 5, 6, 7, 8}

NexusT = tuple[str, str, int]
Record = tuple[str, "str | None", "int | None"]


@dataclass
class Cmd:
    """One abstract command.  ``shape`` perturbs the parameter list: "ok", "pad" (+4 bytes),
    "cut" (-4 bytes), "short" (CDB promises 4 more bytes than are sent)."""

    kind: str  # "out", "in", "reserve", "release", "read", "write", "take_ua"
    sa: int = 0
    type: int = 0
    scope: int = 0
    key: int = 0
    sa_key: int = 0
    spec_i_pt: bool = False
    all_tg_pt: bool = False
    aptpl: bool = False
    tids: list[tuple[str, str | None]] = field(default_factory=list)
    bad_tid: bool = False
    shape: str = "ok"
    unreg: bool = False
    rtpi: int = 1
    move_reserved: bool = False
    # Generation hints, resolved by the test driver into ``key``/``sa_key`` from the model's
    # state before the command runs ("raw": use the value as drawn).
    key_hint: str = "raw"  # "own": the sender's registered key
    sa_hint: str = "raw"  # "holder": the reservation holder's key; "other": some registrant's


class Model:
    def __init__(self) -> None:
        self.regs: dict[Record, int] = {}
        self.made_on: dict[Record, int] = {}  # port a record was created through
        self.res_type: int | None = None
        self.res_holder: Record | None = None  # None for all-registrants types
        self.scsi2: NexusT | None = None
        self.gen = 0
        self.aptpl = False
        self.pending: list[tuple[Record, int]] = []  # (addressee record, ASCQ)
        self.queued: list[tuple[Record, int]] = []  # what the last command queued

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def covers(rec: Record, n: NexusT) -> bool:
        init, isid, port = rec
        return init == n[0] and isid in (None, n[1]) and port in (None, n[2])

    @staticmethod
    def clash(a: Record, b: Record) -> bool:
        return (
            a[0] == b[0]
            and (a[1] is None or b[1] is None or a[1] == b[1])
            and (a[2] is None or b[2] is None or a[2] == b[2])
        )

    def own(self, n: NexusT) -> Record | None:
        found = [r for r in self.regs if self.covers(r, n)]
        assert len(found) <= 1
        return found[0] if found else None

    def holds(self, n: NexusT) -> bool:
        rec = self.own(n)
        if self.res_type is None or rec is None:
            return False
        return self.res_type in AR_TYPES or self.res_holder == rec

    def ua(self, recs: list[Record], ascq: int) -> None:
        for rec in recs:
            item = (rec, ascq)
            if item not in self.pending:
                self.pending.append(item)
                self.queued.append(item)

    def drop(self, recs: list[Record]) -> None:
        for rec in recs:
            del self.regs[rec]
            del self.made_on[rec]
        if self.res_type in AR_TYPES and not self.regs:
            self.res_type = None
        elif self.res_holder is not None and self.res_holder not in self.regs:
            self.res_type = self.res_holder = None

    # -- the commands -------------------------------------------------------------------
    def run(self, n: NexusT, c: Cmd) -> str:
        self.queued = []
        if c.kind == "out":
            return self.pr_out(n, c)
        if c.kind == "in":
            if self.scsi2 not in (None, n):
                return CONFLICT
            return INV_CDB if c.sa > 3 else GOOD
        if c.kind in ("reserve", "release"):
            return self.scsi2_cmd(n, c.kind == "reserve")
        if c.kind in ("read", "write"):
            return GOOD if self.may(n, c.kind == "write") else CONFLICT
        raise ValueError(c.kind)

    def take_ua(self, n: NexusT) -> tuple[Record, int] | None:
        for item in self.pending:
            if self.covers(item[0], n):
                self.pending.remove(item)
                return item
        return None

    def may(self, n: NexusT, write: bool) -> bool:
        """SPC-4 §5.12 reservation table for READ/WRITE; SPC-2 for a SCSI-2 holder."""
        if self.scsi2 is not None:
            return self.scsi2 == n
        if self.res_type is None or self.holds(n):
            return True
        registered = self.own(n) is not None
        t = self.res_type
        if t in (1, 3):
            return t == 1 and not write
        if registered:
            return True
        return t in (5, 7) and not write

    def scsi2_cmd(self, n: NexusT, reserve: bool) -> str:
        if self.regs:  # SPC-4 §5.12.3
            rec = self.own(n)
            ok = (
                rec is not None
                and self.res_type is not None
                and (self.holds(n) or self.res_type in RO_TYPES | AR_TYPES)
            )
            return GOOD if ok else CONFLICT
        if reserve:
            if self.scsi2 not in (None, n):
                return CONFLICT
            self.scsi2 = n
        elif self.scsi2 == n:
            self.scsi2 = None
        return GOOD

    def shape_error(self, c: Cmd) -> str | None:
        if c.shape == "short" or (c.shape == "cut" and c.sa != 7 and not c.spec_i_pt):
            return PLL  # fewer than 24 bytes, or less data than promised
        if c.sa == 7:
            if c.move_reserved:
                return INV_PL
            if c.shape != "ok":
                return PLL
            return INV_PL if c.bad_tid else None
        if c.spec_i_pt and c.sa != 0:
            return INV_PL
        if c.shape != "ok":
            return PLL
        return INV_PL if c.spec_i_pt and c.bad_tid else None

    def pr_out(self, n: NexusT, c: Cmd) -> str:
        if self.scsi2 is not None:
            return CONFLICT
        if c.sa > 8:
            return INV_CDB
        err = self.shape_error(c)
        if err:
            return err
        if c.sa in (1, 4, 5, 8) and (c.scope != 0 or c.type not in VALID_TYPES):
            return INV_CDB
        if c.sa == 8:
            return INV_RELEASE  # nothing is ever lost
        rec = self.own(n)
        if c.sa == 6:
            return self.register(n, c, rec, ignore=True)
        if c.sa == 0:
            return self.register(n, c, rec, ignore=False)
        if rec is None or self.regs[rec] != c.key:
            return CONFLICT
        return {1: self.reserve, 2: self.release, 3: self.clear, 4: self.preempt,
                5: self.preempt, 7: self.move}[c.sa](n, c, rec)  # fmt: skip

    def register(self, n: NexusT, c: Cmd, rec: Record | None, ignore: bool) -> str:
        if rec is not None:
            if not ignore and c.key != self.regs[rec]:
                return CONFLICT
            if c.spec_i_pt:
                return INV_PL
            if c.sa_key == 0:  # §5.12.11.2.3
                was_holder, old_type = self.holds(n), self.res_type
                self.drop([rec])
                if was_holder and old_type in RO_TYPES:
                    self.ua(list(self.regs), RES_RELEASED)
            else:
                self.regs[rec] = c.sa_key
            self.aptpl = c.aptpl
            self.gen += 1
            return GOOD
        if not ignore and c.key != 0:
            return CONFLICT
        if c.sa_key == 0:
            return GOOD
        new: Record = (n[0], n[1], None if c.all_tg_pt else n[2])
        clashing = [r for r in self.regs if self.clash(r, new)]
        if clashing and not ignore:
            return CONFLICT
        extra: list[Record] = []
        if c.spec_i_pt:
            for init, isid in c.tids:
                dest: Record = (init, isid, None if c.all_tg_pt else n[2])
                if dest == new or dest in extra:
                    continue
                if any(self.clash(dest, r) for r in [new, *extra, *self.regs]):
                    return INV_PL
                extra.append(dest)
        holder_folded = self.res_holder in clashing
        for r in clashing:
            del self.regs[r]
            del self.made_on[r]
        for r in [new, *extra]:
            self.regs[r] = c.sa_key
            self.made_on[r] = n[2]
        if holder_folded:
            self.res_holder = new
        self.aptpl = c.aptpl
        self.gen += 1
        return GOOD

    def reserve(self, n: NexusT, c: Cmd, rec: Record) -> str:
        if self.res_type is not None:
            return GOOD if self.holds(n) and self.res_type == c.type else CONFLICT
        self.res_type = c.type
        self.res_holder = None if c.type in AR_TYPES else rec
        return GOOD

    def release(self, n: NexusT, c: Cmd, rec: Record) -> str:
        if self.res_type is None or not self.holds(n):
            return GOOD
        if c.type != self.res_type or c.scope != 0:
            return INV_RELEASE
        if self.res_type in RO_TYPES | AR_TYPES:
            self.ua([r for r in self.regs if r != rec], RES_RELEASED)
        self.res_type = self.res_holder = None
        return GOOD

    def clear(self, n: NexusT, c: Cmd, rec: Record) -> str:
        self.ua([r for r in self.regs if r != rec], RES_PREEMPTED)
        self.regs.clear()
        self.made_on.clear()
        self.res_type = self.res_holder = None
        self.gen += 1
        return GOOD

    def preempt(self, n: NexusT, c: Cmd, rec: Record) -> str:
        all_reg = self.res_type in AR_TYPES
        if c.sa_key == 0 and not all_reg:
            return INV_PL
        holder_key = self.regs[self.res_holder] if self.res_holder is not None else None
        if (all_reg and c.sa_key == 0) or (not all_reg and c.sa_key == holder_key):
            old_type = self.res_type
            gone = [r for r in self.regs if r != rec and c.sa_key in (0, self.regs[r])]
            self.drop(gone)
            self.res_type = c.type
            self.res_holder = None if c.type in AR_TYPES else rec
            self.ua(gone, REG_PREEMPTED)
            if old_type != c.type:
                self.ua([r for r in self.regs if r != rec], RES_RELEASED)
        else:
            gone = [r for r in self.regs if self.regs[r] == c.sa_key]
            if not gone:
                return CONFLICT
            self.drop(gone)
            self.ua([r for r in gone if r != rec], REG_PREEMPTED)
        self.gen += 1
        return GOOD

    def move(self, n: NexusT, c: Cmd, rec: Record) -> str:
        if c.sa_key == 0:
            return INV_PL
        if self.res_type is None:
            return INV_CDB
        if not self.holds(n) or self.res_type in AR_TYPES:
            return CONFLICT
        known = {n[2]} | set(self.made_on.values())
        if c.rtpi not in known:
            return INV_PL
        init, isid = c.tids[0]
        if init == n[0] and isid in (None, n[1]):
            return INV_PL
        dest: Record = (init, isid, c.rtpi)
        hits = [r for r in self.regs if self.clash(r, dest)]
        if rec in hits:
            return INV_PL
        if len(hits) > 1 or (hits and not self.covers(hits[0], (init, isid, c.rtpi))):
            return INV_PL
        target = hits[0] if hits else dest
        self.regs[target] = c.sa_key
        self.made_on.setdefault(target, c.rtpi)
        self.res_holder = target
        if c.unreg:
            del self.regs[rec]
            del self.made_on[rec]
        self.aptpl = c.aptpl
        self.gen += 1
        return GOOD
