"""SCSI constants, sense data, the one result type every command handler returns and the
one exception that ends a command with CHECK CONDITION.

Kept free of I/O: the engine, the conflict check, the emulation and the ring's Python
fallback all build their answers from these helpers, so sense bytes are formed in exactly
one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tcmu_pr.pr.state import PRState, UnitAttention

# Status codes (SAM-5 §5.3).
GOOD = 0x00
CHECK_CONDITION = 0x02
BUSY = 0x08
RESERVATION_CONFLICT = 0x18
TASK_SET_FULL = 0x28

# Sense keys (SPC-4 table 49).
NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
DATA_PROTECT = 0x7
ABORTED_COMMAND = 0xB
MISCOMPARE = 0xE

# Opcodes the PR core looks at.
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
RESERVE_6 = 0x16
RELEASE_6 = 0x17
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
SYNCHRONIZE_CACHE_10 = 0x35
UNMAP = 0x42
MODE_SENSE_10 = 0x5A
RESERVE_10 = 0x56
RELEASE_10 = 0x57
PERSISTENT_RESERVE_IN = 0x5E
PERSISTENT_RESERVE_OUT = 0x5F
READ_16 = 0x88
COMPARE_AND_WRITE = 0x89
WRITE_16 = 0x8A
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
REPORT_LUNS = 0xA0
MAINTENANCE_IN = 0xA3
READ_12 = 0xA8
WRITE_12 = 0xAA


@dataclass(frozen=True, slots=True)
class Sense:
    """A sense key with its additional sense code and qualifier."""

    key: int
    asc: int
    ascq: int

    def to_bytes(self, *, info: int | None = None) -> bytes:
        """Fixed-format sense data (SPC-4 §4.5.3), 18 bytes, current error."""
        buf = bytearray(18)
        buf[0] = 0x70 | (0x80 if info is not None else 0)
        buf[2] = self.key & 0x0F
        if info is not None:
            buf[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
        buf[7] = 10  # additional sense length
        buf[12] = self.asc
        buf[13] = self.ascq
        return bytes(buf)


# The conditions this project reports; named after SPC's ASC/ASCQ table.
INVALID_COMMAND_OPERATION_CODE = Sense(ILLEGAL_REQUEST, 0x20, 0x00)
INVALID_FIELD_IN_CDB = Sense(ILLEGAL_REQUEST, 0x24, 0x00)
INVALID_FIELD_IN_PARAMETER_LIST = Sense(ILLEGAL_REQUEST, 0x26, 0x00)
PARAMETER_LIST_LENGTH_ERROR = Sense(ILLEGAL_REQUEST, 0x1A, 0x00)
INVALID_RELEASE_OF_PERSISTENT_RESERVATION = Sense(ILLEGAL_REQUEST, 0x26, 0x04)
LBA_OUT_OF_RANGE = Sense(ILLEGAL_REQUEST, 0x21, 0x00)
INSUFFICIENT_REGISTRATION_RESOURCES = Sense(ILLEGAL_REQUEST, 0x55, 0x04)
LOGICAL_UNIT_COMMUNICATION_FAILURE = Sense(HARDWARE_ERROR, 0x08, 0x00)
#: The LU cannot vouch for its reservation state right now (a gateway re-validating after a
#: freeze, or reconnecting after it was cut off): initiators retry (Linux: ADD_TO_MLQUEUE).
LOGICAL_UNIT_BECOMING_READY = Sense(NOT_READY, 0x04, 0x01)
#: A PR update kept losing the compare-and-swap race: retryable, nothing was changed.
PR_UPDATE_CONTENTION = Sense(ABORTED_COMMAND, 0x2C, 0x00)
MISCOMPARE_DURING_VERIFY = Sense(MISCOMPARE, 0x1D, 0x00)
WRITE_ERROR = Sense(MEDIUM_ERROR, 0x0C, 0x00)
READ_ERROR = Sense(MEDIUM_ERROR, 0x11, 0x00)
#: No SCSI-level reason: the ring entry itself was unusable, or answering failed inside us.
INTERNAL_TARGET_FAILURE = Sense(HARDWARE_ERROR, 0x44, 0x00)


class CheckCondition(Exception):
    """End the command with CHECK CONDITION and ``sense``; nothing has been changed.

    The one way every layer (PR engine, emulation, ring loops) refuses a command: checks
    raise it top to bottom like the standard's "shall terminate" clauses, and whoever owns
    the answer turns it into sense bytes.  ``why`` is for logs and tests; ``info`` fills
    INFORMATION (VALID set); ``field`` = (byte, bit) of the CDB bit at fault fills the
    sense-key specific FIELD POINTER, so a host can tell which bit we refused.
    """

    def __init__(
        self,
        sense: Sense,
        why: str = "",
        *,
        info: int | None = None,
        field: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(why or sense)
        self.sense = sense
        self.info = info
        self.field = field

    def sense_bytes(self) -> bytes:
        """Fixed-format sense data with INFORMATION and the CDB field pointer when known."""
        buf = bytearray(self.sense.to_bytes(info=self.info))
        if self.field is not None:
            byte, bit = self.field
            buf[15] = 0x80 | 0x40 | 0x08 | bit  # SKSV, C/D = CDB, BPV, BIT POINTER
            buf[16:18] = byte.to_bytes(2, "big")
        return bytes(buf)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command produced: the state after it, the answer, and UAs it queued.

    ``state is`` the input state object when the command changed nothing, so callers can
    skip the store write with an identity test.
    """

    state: PRState
    status: int = GOOD
    sense: bytes | None = None
    data: bytes | None = None
    unit_attentions: tuple[UnitAttention, ...] = field(default=())

    @classmethod
    def good(cls, state: PRState, data: bytes | None = None) -> Outcome:
        return cls(state, GOOD, None, data)

    @classmethod
    def check(cls, state: PRState, sense: Sense) -> Outcome:
        return cls(state, CHECK_CONDITION, sense.to_bytes())

    @classmethod
    def refused(cls, state: PRState, refusal: CheckCondition) -> Outcome:
        return cls(state, CHECK_CONDITION, refusal.sense_bytes())

    @classmethod
    def conflict(cls, state: PRState) -> Outcome:
        return cls(state, RESERVATION_CONFLICT)


def allocation_truncate(data: bytes, allocation_length: int) -> bytes:
    """Data-in cut to the CDB's ALLOCATION LENGTH (SPC-4 §4.2.5.6); lengths inside stay whole."""
    return data[:allocation_length]
