"""Run records as the scripts see them: what a claim, a cancel or a rejection answers, the
entries that end an unplaced run or fail a poisoned one, and what a fork keeps. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stalwart.checkpoints._entries import (
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    RunStatus,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    encode_entry,
)

CancelOutcome = Literal["missing", "terminal", "cancelled", "requested"]
RejectOutcome = Literal["missing", "unrelated", "rejected"]

REJECTED_ERROR = "RequestRejected"
"""``error_type`` of a run ended by the rejection of its own submission."""
POISONED_ERROR = "PlacementLimitExceeded"
"""``error_type`` of a run failed by the ``max_placements`` limit."""


REVISION_BITS = 40
"""Bits of an epoch that hold the lease revision; the generation sits above them."""
_MAX_GENERATION = (1 << (53 - REVISION_BITS)) - 1
"""Epochs stay below 2**53: Lua (Redis scripts) compares them as doubles."""


@dataclass(frozen=True, slots=True)
class LeasePosition:
    """Where a lease stands: its bucket's ``generation`` and its ``revision`` in that bucket.

    A run's epoch is its claimant's position packed into one number,
    ``generation * 2**40 + revision`` (:attr:`epoch`), so epochs order claims by
    generation first, then revision, and two acquisitions of a lease never share an epoch:
    revisions are unique within a bucket instance and generations number the instances
    (``_generations``). A late claim by an expired lease of the same bucket has a lower
    epoch and is refused; a claim from a newer bucket (a new NATS, a restored bucket) has a
    higher one whatever its revision. An epoch written before positions existed (a bare
    revision) decodes as generation 0, below every claim made now.
    """

    generation: int
    revision: int

    def __post_init__(self) -> None:
        if not 0 <= self.generation <= _MAX_GENERATION:
            raise ValueError(f"lease generation {self.generation} is outside 0..{_MAX_GENERATION}")
        if not 0 <= self.revision < 1 << REVISION_BITS:
            raise ValueError(
                f"lease revision {self.revision} is outside 0..2**{REVISION_BITS}-1: the "
                "lease bucket has used up its revisions; recreate it (a new bucket is a new "
                "generation and starts again from 1)"
            )

    @property
    def epoch(self) -> int:
        """The epoch a claim at this position takes."""
        return (self.generation << REVISION_BITS) | self.revision

    @classmethod
    def of_epoch(cls, epoch: int) -> LeasePosition:
        """The position an epoch was claimed at."""
        return cls(epoch >> REVISION_BITS, epoch & ((1 << REVISION_BITS) - 1))


def describe_epoch(epoch: int) -> str:
    """An epoch as people read it: ``<generation>.<revision>`` (``1.5``: the fifth lease
    revision of the first lease bucket this Redis saw). The number itself stays the API's."""
    if epoch < 0:
        return str(epoch)
    pos = LeasePosition.of_epoch(epoch)
    return f"{pos.generation}.{pos.revision}"


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of :meth:`CheckpointStore.claim`.

    ``outcome`` is ``ok`` (this epoch now owns the run; ``seq`` is the Started entry),
    ``terminal`` (the run already ended with ``status``), ``stale`` (a newer epoch owns it:
    ``epoch`` is that one), ``wrong_agent`` (the run belongs to agent ``status``),
    ``missing`` (a resume of a run that does not exist) or ``poisoned`` (the run failed
    here with ``PlacementLimitExceeded``; ``seq`` is its Finished entry, ``status`` the
    error message).
    """

    outcome: Literal["ok", "terminal", "stale", "wrong_agent", "missing", "poisoned"]
    seq: int = 0
    status: str = ""
    cancel: str = ""
    input: bytes = b""
    trace: str = ""
    deadline: float = 0.0
    at: float = 0.0
    """When the claim was made (the ``Started`` entry's time)."""
    epoch: int = 0
    """``ok``, ``poisoned``: the claim's epoch; ``stale``: the record's (0 if unknown)."""


def unplaced_end(now: float, status: RunStatus, error_type: str, reason: str) -> bytes:
    """The Finished entry that ends a run no worker holds (cancel, reject, dead letter)."""
    return encode_entry(
        Finished(
            status=status,
            epoch=0,
            worker="",
            at=now,
            error=ErrorInfo(error_type, reason, retryable=False),
        )
    )


def poison_error(run_id: str, max_placements: int) -> str:
    """Why a run placed ``max_placements + 1`` times without progress is failed."""
    return (
        f"run {run_id!r} was placed {max_placements + 1} times in a row without "
        f"journaling anything (max_placements={max_placements}): its actor or worker "
        "dies on every placement (a crash, an exception that escapes the run, a step "
        "that kills its process). It is failed instead of being placed again."
    )


def claim_entries(epoch: int, worker: str, now: float, poison: str) -> tuple[bytes, bytes, bytes]:
    """The entries a claim may journal: Started (fresh), Started (resumed), the poison end."""
    return (
        encode_entry(Started(epoch=epoch, worker=worker, at=now)),
        encode_entry(Started(epoch=epoch, worker=worker, at=now, resumed=True)),
        encode_entry(
            Finished(
                status="failed",
                epoch=epoch,
                worker=worker,
                at=now,
                error=ErrorInfo(POISONED_ERROR, poison, retryable=False),
            )
        ),
    )


def read_claim(reply: list[bytes], now: float, poison: str, epoch: int = 0) -> Claim:
    """The CLAIM script's reply as a :class:`Claim` (``epoch``: the one claimed with)."""
    outcome = reply[0].decode()
    if outcome in ("terminal", "wrong_agent"):
        return Claim(outcome, status=reply[1].decode())  # type: ignore[arg-type]
    if outcome == "missing":
        return Claim("missing")
    if outcome == "stale":
        current = reply[1].decode() if len(reply) > 1 else ""
        return Claim("stale", epoch=int(current) if current.isdigit() else 0)
    if outcome == "poisoned":
        return Claim("poisoned", seq=int(reply[1]), status=poison, at=now, epoch=epoch)
    return Claim(
        "ok",
        seq=int(reply[1]),
        cancel=reply[2].decode(),
        input=bytes(reply[3]),
        trace=reply[4].decode(),
        deadline=float(reply[5] or 0.0),
        at=now,
        epoch=epoch,
    )


def fork_entries(entries: list[JournalEntry], upto_key: str) -> list[Entry] | None:
    """The entries a fork at step ``upto_key`` keeps (None when the step is not journaled).

    Everything journaled up to and including the step's outcome, except what belongs to
    placements (``Started``, ``Finished``) and what would leave a step half done in the fork:
    attempts, at-most-once intents and waits of steps whose outcome came later (those steps
    run live in the fork, from their first attempt).
    """
    end = next(
        (
            je.seq
            for je in entries
            if isinstance(je.entry, StepDone | StepError) and je.entry.key == upto_key
        ),
        None,
    )
    if end is None:
        return None
    prefix = [je.entry for je in entries if je.seq <= end]
    done = {e.key for e in prefix if isinstance(e, StepDone | StepError)}
    return [
        e
        for e in prefix
        if isinstance(e, StepDone | StepError)
        or (isinstance(e, StepAttempt | StepIntent | WaitStarted) and e.key in done)
    ]
