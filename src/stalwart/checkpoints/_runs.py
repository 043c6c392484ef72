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


@dataclass(frozen=True, slots=True)
class LeasePosition:
    """Where a lease stands: its bucket's ``generation`` and its ``revision`` in that bucket.

    Claims are ordered by it (generation first): see ``_scripts.CLAIM``. ``generation`` 0
    is a record's position before any claim recorded one.
    """

    generation: int
    revision: int

    def __post_init__(self) -> None:
        if self.generation < 0 or self.revision < 0:
            raise ValueError(f"a lease position is never negative (got {self})")


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of :meth:`CheckpointStore.claim`.

    ``outcome`` is ``ok`` (the run is now owned by ``epoch``, assigned by the claim, which
    fences every later write; ``seq`` is the Started entry), ``terminal`` (the run already
    ended with ``status``), ``stale`` (the record holds a newer lease position,
    ``position``, owned by ``epoch``), ``wrong_agent`` (the run belongs to agent
    ``status``), ``missing`` (a resume of a run that does not exist) or ``poisoned`` (the
    run failed here with ``PlacementLimitExceeded``; ``seq`` is its Finished entry,
    ``status`` the error message).
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
    position: LeasePosition | None = None
    """For ``stale``: the lease position the record holds (None from an older script)."""


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
    """The CLAIM script's reply as a :class:`Claim` (``epoch``: the one the claim asked for,
    used when an ``ok`` reply does not name it)."""
    outcome = reply[0].decode()
    if outcome in ("terminal", "wrong_agent"):
        return Claim(outcome, status=reply[1].decode())  # type: ignore[arg-type]
    if outcome == "missing":
        return Claim("missing")
    if outcome == "stale":
        position = None
        if len(reply) >= 4:
            position = LeasePosition(int(reply[2] or 0), int(reply[3] or 0))
        return Claim("stale", epoch=int(reply[1] or 0), position=position)
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
        epoch=int(reply[6]) if len(reply) > 6 else epoch,
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
