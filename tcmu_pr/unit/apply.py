"""The one way a PR change reaches the store: read, compute, compare-and-swap, retry.

Every gateway that exports a LU runs this loop against the same slot.  The compare-and-swap
token is the exact bytes read, so a writer that lost a race (another gateway, or a v1 peer,
wrote in between) re-reads and re-computes its change on the new state instead of
overwriting it.  A command is answered GOOD only after its change landed; after
``max_attempts`` lost races it gets CHECK CONDITION (PR_UPDATE_CONTENTION) and changed nothing,
which an initiator retries.  SUSE's target_core_rbd answered GOOD on a lost race: that is the
bug this module exists not to have.

Telling the other gateways is not done here: the caller learns whether a new blob landed
(:class:`Applied`, :class:`Landed`) and confirms it through its store (tcmu_pr/unit/lu.py).

Cost at scale: a blob with a thousand registrations takes milliseconds to decode, and every
change reads the blob once or more.  A :class:`BlobCache` remembers the decoded state of the
bytes last seen (and of the bytes last written), so unchanged bytes are never decoded twice.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from tcmu_pr import engine, scsi
from tcmu_pr.backends.base import PRSlot, StoreError
from tcmu_pr.pr import codec
from tcmu_pr.pr.nexus import Nexus
from tcmu_pr.pr.state import MAX_REGISTRATIONS, U32, PRState

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTEMPTS = 32

#: Seconds to wait before attempt ``n`` (1-based count of races lost so far).
Backoff = Callable[[int], float]


def jittered_backoff(lost: int, *, base: float = 0.0005, cap: float = 0.02) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**lost)).

    Random so that two gateways that collided do not collide again in lock step; short
    because the whole loop runs while an initiator waits for its command.
    """
    return random.uniform(0.0, min(cap, base * (1 << min(lost, 16))))


def no_backoff(lost: int) -> float:
    """Retry at once (tests that want lost races, or a single writer)."""
    return 0.0


@dataclass(slots=True)
class ApplyStats:
    """Counters the benchmark and tests read; pass one in to have a call add to it."""

    calls: int = 0  # apply/apply_update invocations
    attempts: int = 0  # reads + computations (1 + lost races, per call)
    conflicts: int = 0  # compare-and-swaps lost and retried
    writes: int = 0  # compare-and-swaps that landed
    gave_up: int = 0  # calls that ran out of attempts


class ApplyError(Exception):
    """A PR change that could not be made; ``sense`` is what the initiator is told."""

    sense: scsi.Sense = scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE

    def __init__(self, message: str, state: PRState) -> None:
        super().__init__(message)
        #: The last state read (PRState() if none could be), for the Outcome.
        self.state = state


class CorruptBlobError(ApplyError):
    """The stored blob does not decode: nothing is changed, a human must look."""


class EncodeError(ApplyError):
    """The new state cannot be encoded (a bug, or too large: see ``sense``)."""

    def __init__(self, message: str, state: PRState, *, too_large: bool) -> None:
        super().__init__(message, state)
        self.too_large = too_large
        if too_large:
            self.sense = scsi.INSUFFICIENT_REGISTRATION_RESOURCES


class ContentionError(ApplyError):
    """Every attempt lost the race; nothing was changed."""

    sense = scsi.PR_UPDATE_CONTENTION


class BlobCache:
    """The decoded state of the last blob seen, keyed by its exact bytes.

    A bytes compare costs microseconds where decoding (and validating) thousands of
    registrations costs milliseconds.  Safe to share between threads: the entry is one tuple,
    replaced whole.
    """

    def __init__(self) -> None:
        self._last: tuple[bytes, PRState] = (b"", PRState())
        self.decodes = 0  # how often the bytes had to be decoded (tests, benchmarks)

    def decode(self, blob: bytes) -> PRState:
        """``codec.decode(blob)`` (PRState() for b""); ValueError as codec raises it."""
        last_blob, last_state = self._last
        if blob == last_blob:
            return last_state
        state = codec.decode(blob)
        self.decodes += 1
        self._last = (blob, state)
        return state

    def remember(self, blob: bytes, state: PRState) -> None:
        """``blob`` encodes ``state`` (we just wrote it): no need to decode it when read."""
        self._last = (blob, state)


def _read_state(slot: PRSlot, cache: BlobCache | None) -> tuple[bytes, PRState]:
    blob = slot.read()
    if not blob:
        return blob, PRState()
    try:
        return blob, (cache.decode(blob) if cache is not None else codec.decode(blob))
    except ValueError as err:
        log.error("pr_info in %r does not decode, refusing to change it: %s", slot, err)
        raise CorruptBlobError(f"stored pr_info does not decode: {err}", PRState()) from err


def _is_size_limit(err: ValueError, state: PRState) -> bool:
    """Whether an encode failure is a resource limit rather than a bug.

    TooLargeError is the blob over the format's size cap; a StateError on "registrations"
    with more than MAX_REGISTRATIONS of them is the registration limit.
    """
    if isinstance(err, codec.TooLargeError):
        return True
    return (
        isinstance(err, codec.StateError)
        and err.path == "registrations"
        and len(state.registrations) > MAX_REGISTRATIONS
    )


def _encode(state: PRState, old: PRState, version: int | None = None) -> bytes:
    try:
        return codec.encode(state, version=version)
    except ValueError as err:
        too_large = _is_size_limit(err, state)
        if too_large:
            log.warning("new PR state does not fit the store: %s", err)
        else:
            log.error("cannot encode new PR state (bug?): %s; state=%r", err, state)
        raise EncodeError(f"cannot encode PR state: {err}", old, too_large=too_large) from err


@dataclass(frozen=True, slots=True)
class Landed:
    """What :func:`update` left in the store: the state, and whether we wrote it."""

    state: PRState
    wrote: bool


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`execute` answers, and whether a new blob landed (others must hear of it)."""

    outcome: scsi.Outcome
    changed: bool


def update(
    slot: PRSlot,
    fn: Callable[[PRState], PRState | None],
    *,
    cache: BlobCache | None = None,
    version: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: Backoff = jittered_backoff,
    stats: ApplyStats | None = None,
) -> Landed:
    """Apply ``fn`` to the stored state until it lands (encoded as ``version``, default: the
    codec's choice).

    ``fn`` gets the decoded state and returns the new one, or None / the same object when
    there is nothing to write.  It may run several times (once per lost race), so it must be
    pure; a caller that needs a by-product (an Outcome, a unit attention) keeps the one from
    the last call.  ``seq`` is bumped here (mod 2**32), never by ``fn``.

    Raises CorruptBlobError, EncodeError, ContentionError (all ApplyError) or StoreError.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    stats = stats if stats is not None else ApplyStats()
    stats.calls += 1
    state = PRState()
    for attempt in range(max_attempts):
        if attempt:
            delay = backoff(attempt)
            if delay > 0:
                time.sleep(delay)
        stats.attempts += 1
        blob, state = _read_state(slot, cache)
        new = fn(state)
        if new is None or new is state:
            return Landed(state, False)
        new = dataclasses.replace(new, seq=(state.seq + 1) & U32)
        encoded = _encode(new, state, version)
        if slot.compare_and_swap(blob, encoded):
            stats.writes += 1
            if cache is not None:
                cache.remember(encoded, new)
            return Landed(new, True)
        stats.conflicts += 1
        log.debug("lost the pr_info race on %r (attempt %d), re-applying", slot, attempt + 1)
    stats.gave_up += 1
    log.warning("gave up on a PR update of %r after %d lost races", slot, max_attempts)
    raise ContentionError(f"lost the compare-and-swap {max_attempts} times", state)


def apply_update(
    slot: PRSlot, fn: Callable[[PRState], PRState | None], **kwargs: object
) -> PRState:
    """:func:`update`, returning only the state now stored."""
    return update(slot, fn, **kwargs).state  # type: ignore[arg-type]


def execute(
    slot: PRSlot,
    nexus: Nexus,
    cdb: bytes,
    data: bytes = b"",
    *,
    rtpi: int | None = None,
    cache: BlobCache | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    backoff: Backoff = jittered_backoff,
    stats: ApplyStats | None = None,
) -> Applied:
    """Run one PR command (or the conflict check of any other CDB) against the store.

    The engine's answer comes back with ``state`` replaced by what was stored (seq bumped);
    when the command changed nothing the engine's Outcome is returned untouched.  Failures to
    read, decode, encode or land the change become CHECK CONDITION and change nothing.
    """
    last: list[scsi.Outcome] = []

    def step(state: PRState) -> PRState | None:
        outcome = engine.execute(state, nexus, cdb, data, rtpi=rtpi)
        last[:] = [outcome]
        return None if outcome.state is state else outcome.state

    try:
        landed = update(slot, step, cache=cache, max_attempts=max_attempts, backoff=backoff,
                        stats=stats)  # fmt: skip
    except ApplyError as err:
        return Applied(scsi.Outcome.check(err.state, err.sense), False)
    except StoreError as err:
        log.error("PR store %r failed: %s", slot, err)
        return Applied(scsi.Outcome.check(PRState(), scsi.LOGICAL_UNIT_COMMUNICATION_FAILURE),
                       False)  # fmt: skip
    outcome = last[0]
    if not landed.wrote:
        return Applied(outcome, False)
    return Applied(dataclasses.replace(outcome, state=landed.state), True)


def apply(slot: PRSlot, nexus: Nexus, cdb: bytes, data: bytes = b"", **kwargs: object
          ) -> scsi.Outcome:  # fmt: skip
    """:func:`execute`, returning only the answer (for a caller alone on the store)."""
    return execute(slot, nexus, cdb, data, **kwargs).outcome  # type: ignore[arg-type]
