"""What the runtime tells telemetry: one small frozen record per event, plain fields only.

The runtime (actors, worker, supervisor) builds these from its own state (see the thin
``_telemetry`` modules next to each caller); telemetry never sees a live actor, worker,
supervisor or journal entry, so it imports none of them and can sit below them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Link


@dataclass(frozen=True, slots=True)
class TraceParent:
    """Where a placed run's span hangs: the submitter's context, and links to the request."""

    context: Context | None = None
    links: tuple[Link, ...] = ()


NO_PARENT: TraceParent = TraceParent()


# -- a run on a worker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunPlaced:
    """A worker took a run: what its span and log lines are bound to."""

    run_id: str
    agent: str
    worker: str
    epoch: int
    parent: TraceParent = NO_PARENT


@dataclass(frozen=True, slots=True)
class RunLoaded:
    """The actor read the run's journal."""

    agent: str
    resumed: bool
    """The newest ``Started`` entry says this placement resumes the run."""
    entries: int


@dataclass(frozen=True, slots=True)
class RunLeft:
    """How a placement ended, when the run did not finish or passivate on it."""

    reason: str
    """``lease_lost``, ``abandoned`` (journal unreachable), ``released`` (drain) or ``stopped``."""
    steps_replayed: int
    steps_live: int


@dataclass(frozen=True, slots=True)
class RunEnded:
    """The run's end is journaled (``Finished``)."""

    agent: str
    status: str
    """``completed``, ``failed`` or ``cancelled``."""
    error_type: str = ""
    error_message: str = ""


# -- steps ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepStarted:
    """A live step (or durable wait) starts on this worker."""

    run_id: str
    worker: str
    epoch: int
    key: str
    kind: str
    """``model``, ``tool``, ``step``, ``signal`` or ``sleep``."""
    name: str


@dataclass(frozen=True, slots=True)
class StepJournaled:
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


@dataclass(frozen=True, slots=True)
class StepRetried:
    """A step attempt failed and will be retried after ``delay`` seconds."""

    kind: str
    attempt: int
    delay: float
    error_type: str
    error_message: str


# -- supervisor and worker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunResumed:
    """The supervisor re-places a run whose owner lost its lease."""

    run_id: str
    agent: str
    worker: str
    """The worker that lost the run."""
    trace: str
    """The trace carrier stored in the run record (JSON), empty when none."""
    subject: str
    lost_epoch: int


@dataclass(frozen=True, slots=True)
class ReconcilePass:
    """A supervisor's reconcile pass starts over the active set ``run_ids``."""

    supervisor_id: str
    run_ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class RunSeen:
    """A supervisor read a run's record (``status`` None: the record is gone)."""

    supervisor_id: str
    run_id: str
    status: str | None


@dataclass(frozen=True, slots=True)
class WorkerSnapshot:
    """A worker as the gauges see it when scraped."""

    worker_id: str
    active_runs: int
    breakers: Mapping[str, str] = field(default_factory=dict)
    """Circuit breakers that are not closed, by ``kind:name``."""


@dataclass(frozen=True, slots=True)
class SupervisorSnapshot:
    """A supervisor as the gauges see it when scraped."""

    supervisor_id: str
    leader: bool
