"""The persistent-reservation state of one logical unit, as plain immutable values.

Everything that travels between the codec, the engine and the stores is one of these
frozen dataclasses; nothing here does I/O.  SPC-4 §5.12 is the model: registrations are
per I_T nexus (or per initiator port on every target port with ALL_TG_PT), at most one
persistent reservation exists, and the generation counts PERSISTENT RESERVE OUT changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tcmu_pr.pr.nexus import Nexus

# Reservation types (SPC-4 §6.16.4, table 169).
WRITE_EXCLUSIVE = 0x1
EXCLUSIVE_ACCESS = 0x3
WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8
PR_TYPES = frozenset({0x1, 0x3, 0x5, 0x6, 0x7, 0x8})
ALL_REGISTRANTS_TYPES = frozenset({0x7, 0x8})
REGISTRANTS_ONLY_TYPES = frozenset({0x5, 0x6})

#: Upper bound on registrations per LU; one more answers INSUFFICIENT REGISTRATION RESOURCES.
MAX_REGISTRATIONS = 2048

# Unit attention conditions a PR change queues for other nexuses (ASC 0x2A, SPC-4 §5.12.11).
UA_RESERVATIONS_PREEMPTED = (0x2A, 0x03)
UA_RESERVATIONS_RELEASED = (0x2A, 0x04)
UA_REGISTRATIONS_PREEMPTED = (0x2A, 0x05)

U32 = 0xFFFFFFFF


def _covers(recorded: Nexus, all_tg_pt: bool, nexus: Nexus) -> bool:
    """Whether a record made on ``recorded`` (every port if ``all_tg_pt``) is ``nexus``'s."""
    if not recorded.same_initiator_port(nexus):
        return False
    return all_tg_pt or recorded.same_target_port(nexus)


@dataclass(frozen=True, slots=True)
class Registration:
    """A registered reservation key.

    ``rtpi`` is the relative target port identifier the registration arrived through (None
    when unknown, as in every v1 blob).  With ``all_tg_pt`` the registration stands for the
    initiator port on every target port; ``nexus`` then records where it was made.
    """

    key: int
    nexus: Nexus
    rtpi: int | None = None
    all_tg_pt: bool = False

    def covers(self, nexus: Nexus) -> bool:
        """Whether this registration is the one of ``nexus``."""
        return _covers(self.nexus, self.all_tg_pt, nexus)


@dataclass(frozen=True, slots=True)
class Reservation:
    """The persistent reservation (scope is always LU_SCOPE).

    ``nexus`` is the I_T nexus that created it; for the all-registrants types every
    registered nexus is a holder and ``nexus`` is informational.
    """

    key: int
    nexus: Nexus
    type: int


@dataclass(frozen=True, slots=True)
class UnitAttention:
    """A unit attention owed to a nexus that a PR change on some other nexus affected.

    Kept in the shared state so that the gateway serving that nexus, whichever it is,
    delivers it.  ``all_tg_pt`` widens the addressee to the initiator port on any target
    port, like the registration it came from.
    """

    nexus: Nexus
    asc: int
    ascq: int
    all_tg_pt: bool = False

    def addresses(self, nexus: Nexus) -> bool:
        return _covers(self.nexus, self.all_tg_pt, nexus)


@dataclass(frozen=True, slots=True)
class PRState:
    """All PR state of one LU, shared by every gateway through the backing store.

    ``seq`` counts writes of the blob (the compare-and-swap token); ``generation`` is SPC's
    PRGENERATION.  ``aptpl`` is the last APTPL value a REGISTER set (v1 blobs imply 1 while
    registrations exist, as SUSE forced it on).
    """

    seq: int = 0
    generation: int = 0
    scsi2_holder: Nexus | None = None
    reservation: Reservation | None = None
    registrations: tuple[Registration, ...] = ()
    aptpl: bool = False
    unit_attentions: tuple[UnitAttention, ...] = ()

    def registration_of(self, nexus: Nexus) -> Registration | None:
        for reg in self.registrations:
            if reg.covers(nexus):
                return reg
        return None

    def holder_registration(self) -> Registration | None:
        """The registration through which the reservation is held (non all-registrants)."""
        if self.reservation is None:
            return None
        return self.registration_of(self.reservation.nexus)

    def is_holder(self, nexus: Nexus) -> bool:
        """SPC-4 §5.12.10: whether ``nexus`` is a persistent reservation holder."""
        res = self.reservation
        if res is None:
            return False
        reg = self.registration_of(nexus)
        if reg is None:
            return False
        if res.type in ALL_REGISTRANTS_TYPES:
            return True
        return reg == self.holder_registration()
