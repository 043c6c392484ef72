"""The actors' side of telemetry: their state and journal entries turned into plain records.

The actor, its step executor and the worker call these with themselves (``obs.step_journaled(
self, entry)``), and each builds the small frozen record that :mod:`stalwart.telemetry`
takes; telemetry never sees an actor or a journal entry. The actor
shapes are structural (protocols), so this module follows the attributes, not the classes.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Protocol

from stalwart import telemetry as tm
from stalwart.checkpoints import Started, StepDone, decode_value
from stalwart.telemetry import (
    NO_PARENT,
    TraceParent,
    journal_appended,
    timed_renewal,
    trace_parent,
)

if TYPE_CHECKING:
    from collections.abc import Sized
    from contextlib import AbstractContextManager

    from stalwart.checkpoints import Finished, JournalEntry, StepAttempt, StepError
    from stalwart.policies import Policies

__all__ = [
    "NO_PARENT",
    "TraceParent",
    "journal_appended",
    "run_finished",
    "run_loaded",
    "run_passivated",
    "run_scope",
    "step_journaled",
    "step_retried",
    "step_scope",
    "timed_renewal",
    "trace_parent",
    "wait_scope",
    "watch_worker",
]


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Step(_Named, Protocol):
    # A StepSpec, by shape: importing it would tie this module into the actor's own imports.
    @property
    def key(self) -> str: ...
    @property
    def kind(self) -> str: ...


class _Placed(Protocol):
    """What every part of an actor knows: which run, on which worker, under which epoch."""

    @property
    def run_id(self) -> str: ...
    @property
    def epoch(self) -> int: ...
    @property
    def worker_id(self) -> str: ...


class _Stepping(_Placed, Protocol):
    @property
    def policies(self) -> Policies: ...


class _Actor(_Placed, Protocol):
    @property
    def spec(self) -> _Named: ...
    @property
    def trace_parent(self) -> TraceParent: ...
    @property
    def lost(self) -> bool: ...
    @property
    def abandoned(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def steps_replayed(self) -> int: ...
    @property
    def steps_live(self) -> int: ...


class _Worker(Protocol):
    @property
    def worker_id(self) -> str: ...
    @property
    def hosted(self) -> Sized: ...
    def breaker_states(self) -> dict[str, str]: ...
    @property
    def capacity(self) -> int: ...
    @property
    def free_slots(self) -> int: ...
    def concurrency_usage(self) -> tuple[tuple[str, str, int, int], ...]: ...


# -- the run ----------------------------------------------------------------------------------


def _left(actor: _Actor) -> tm.RunLeft:
    reason = (
        "lease_lost"
        if actor.lost
        else "abandoned"
        if actor.abandoned
        else "released"
        if actor.draining
        else "stopped"
    )
    return tm.RunLeft(reason, actor.steps_replayed, actor.steps_live)


def run_scope(actor: _Actor) -> AbstractContextManager[None]:
    """Around one placement of a run: its span, log context and metrics."""
    placed = tm.RunPlaced(
        actor.run_id, actor.spec.name, actor.worker_id, actor.epoch, actor.trace_parent
    )
    return tm.run_scope(placed, lambda: _left(actor))


def run_loaded(actor: _Actor, entries: list[JournalEntry]) -> None:
    """The actor read the journal ``entries``."""
    started = next((je.entry for je in reversed(entries) if isinstance(je.entry, Started)), None)
    resumed = bool(started is not None and started.resumed)
    tm.run_loaded(tm.RunLoaded(actor.spec.name, resumed, len(entries)))


def run_finished(actor: _Actor, entry: Finished) -> None:
    """The run's ``Finished`` entry is journaled."""
    error = entry.error
    tm.run_finished(
        tm.RunEnded(
            actor.spec.name,
            entry.status,
            error.type if error is not None else "",
            error.message if error is not None else "",
        )
    )


def run_passivated(actor: _Actor) -> None:
    """The run gave up its slot and lease to wait durably."""
    tm.run_passivated(actor.spec.name)


# -- steps ------------------------------------------------------------------------------------


def step_scope(actor: _Placed, spec: _Step) -> tm.StepScope:
    """Around a live step (all its attempts)."""
    key = spec.key
    return tm.StepScope(
        key,
        lambda: tm.StepStarted(
            actor.run_id, actor.worker_id, actor.epoch, key, spec.kind, spec.name
        ),
    )


def wait_scope(actor: _Placed, key: str, signal: str) -> tm.StepScope:
    """Around a live durable wait (for ``signal``; empty: a durable sleep)."""
    kind, name = ("signal", signal) if signal else ("sleep", "sleep")
    return tm.StepScope(
        key, lambda: tm.StepStarted(actor.run_id, actor.worker_id, actor.epoch, key, kind, name)
    )


def step_journaled(actor: _Stepping, entry: StepDone | StepError) -> None:
    """A live step's outcome is journaled."""
    if isinstance(entry, StepDone):
        model, cost = "", 0.0
        if entry.kind == "model":
            model = entry.model
            priced = entry.model or entry.name
            cost = actor.policies.limits.cost(priced, entry.input_tokens, entry.output_tokens)
        event = tm.StepJournaled(
            entry.kind,
            entry.name,
            entry.attempt,
            entry.duration,
            ok=True,
            model=model,
            input_tokens=entry.input_tokens,
            output_tokens=entry.output_tokens,
            cost_usd=cost,
            # Decoded only when it will be logged: most runs never pay for it.
            result=tm.preview(decode_value(entry.result)) if tm.LOG_PAYLOADS else None,
        )
    else:
        event = tm.StepJournaled(
            entry.kind,
            entry.name,
            entry.attempt,
            entry.duration,
            ok=False,
            error_type=entry.error.type,
            error_message=entry.error.message,
        )
    tm.step_journaled(event)


def step_retried(entry: StepAttempt) -> None:
    """A step attempt failed and will be retried."""
    tm.step_retried(
        tm.StepRetried(
            entry.kind, entry.attempt, entry.delay, entry.error.type, entry.error.message
        )
    )


# -- the worker -------------------------------------------------------------------------------


def watch_worker(worker: _Worker) -> None:
    """A worker started: the gauges ask it for a snapshot when scraped, while it lives."""
    ref = weakref.ref(worker)

    def snapshot() -> tm.WorkerSnapshot | None:
        w = ref()
        if w is None:
            return None
        return tm.WorkerSnapshot(
            w.worker_id,
            len(w.hosted),
            w.breaker_states(),
            w.capacity,
            w.free_slots,
            w.concurrency_usage(),
        )

    tm.watch_worker(snapshot)
