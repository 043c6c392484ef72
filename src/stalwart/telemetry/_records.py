"""What the runtime tells telemetry: one small frozen record per event, plain fields only.

msgspec Structs rather than frozen dataclasses: one is built for every step, and a Struct is
built about ten times faster (no per-field ``object.__setattr__``).

The runtime (actors, worker, supervisor) builds these from its own state (see the thin
``_telemetry`` modules next to each caller); telemetry never sees a live actor, worker,
supervisor or journal entry, so it imports none of them and can sit below them all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Link


class TraceParent(msgspec.Struct, frozen=True):
    """Where a placed run's span hangs: the submitter's context, and links to the request."""

    context: Context | None = None
    links: tuple[Link, ...] = ()


NO_PARENT: TraceParent = TraceParent()


# -- a run on a worker ----------------------------------------------------------------------


class RunPlaced(msgspec.Struct, frozen=True):
    """A worker took a run: what its span and log lines are bound to."""

    run_id: str
    agent: str
    worker: str
    epoch: int
    parent: TraceParent = NO_PARENT


class RunLoaded(msgspec.Struct, frozen=True):
    """The actor read the run's journal."""

    agent: str
    resumed: bool
    """The newest ``Started`` entry says this placement resumes the run."""
    entries: int


class RunLeft(msgspec.Struct, frozen=True):
    """How a placement ended, when the run did not finish or passivate on it."""

    reason: str
    """``lease_lost``, ``abandoned`` (journal unreachable), ``released`` (drain) or ``stopped``."""
    steps_replayed: int
    steps_live: int


class RunEnded(msgspec.Struct, frozen=True):
    """The run's end is journaled (``Finished``)."""

    agent: str
    status: str
    """``completed``, ``failed`` or ``cancelled``."""
    error_type: str = ""
    error_message: str = ""


# -- steps ----------------------------------------------------------------------------------


class StepStarted(msgspec.Struct, frozen=True):
    """A live step (or durable wait) starts on this worker."""

    run_id: str
    worker: str
    epoch: int
    key: str
    kind: str
    """``model``, ``tool``, ``step``, ``signal`` or ``sleep``."""
    name: str


class StepJournaled(msgspec.Struct, frozen=True):
    """A live step's outcome is journaled (``StepDone`` / ``StepError``)."""

    kind: str
    name: str
    attempt: int
    duration: float
    ok: bool
    model: str = ""
    """The model the provider reported (model steps; may be empty)."""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    result: str | None = None
    """A bounded preview of the result, only when payload logging is on."""
    error_type: str = ""
    error_message: str = ""


class StepRetried(msgspec.Struct, frozen=True):
    """A step attempt failed and will be retried after ``delay`` seconds."""

    kind: str
    attempt: int
    delay: float
    error_type: str
    error_message: str


# -- supervisor and worker ------------------------------------------------------------------


class RunResumed(msgspec.Struct, frozen=True):
    """The supervisor re-places a run whose owner lost its lease."""

    run_id: str
    agent: str
    worker: str
    """The worker that lost the run."""
    trace: str
    """The trace carrier stored in the run record (JSON), empty when none."""
    subject: str
    lost_epoch: int


class ReconcilePass(msgspec.Struct, frozen=True):
    """A supervisor's reconcile pass starts over the active set ``run_ids``."""

    supervisor_id: str
    run_ids: Sequence[str]


class RunSeen(msgspec.Struct, frozen=True):
    """A supervisor read a run's record (``status`` None: the record is gone)."""

    supervisor_id: str
    run_id: str
    status: str | None


class WorkerSnapshot(msgspec.Struct, frozen=True):
    """A worker as the gauges see it when scraped."""

    worker_id: str
    active_runs: int
    breakers: Mapping[str, str] = msgspec.field(default_factory=dict)
    """Circuit breakers that are not closed, by ``kind:name``."""
    capacity: int = 0
    """Runs the worker hosts at most (its ``concurrency``)."""
    free: int = 0
    """Runs it would take now: ``capacity - active_runs``, 0 while draining."""
    concurrency: tuple[tuple[str, str, int, int], ...] = ()
    """Concurrency limits' busiest keys: (rule, key, running, waiting), namespace-wide."""


class SupervisorSnapshot(msgspec.Struct, frozen=True):
    """A supervisor as the gauges see it when scraped."""

    supervisor_id: str
    leader: bool
    pending: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)
    """Run requests waiting per (agent, lane) (``num_pending + num_ack_pending`` of its
    consumer; the default lane named ``default``), as of the leader's last pass; empty on
    a standby, so the gauge is reported once."""
