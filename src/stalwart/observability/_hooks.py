"""What the runtime calls at the points worth a span, a metric or a log line.

Each hook is one call from the runtime (actor, worker, supervisor, client, broker), so the
runtime's code reads as before and everything about telemetry lives here. Spans:

- ``submit <agent>`` / ``fork <agent>`` (PRODUCER) in the client; its context travels in the
  request's NATS headers and in the run record;
- ``run <agent>`` (CONSUMER), one per placement of a run on a worker, a child of the submit
  span (read from the run record, so a resumed run continues the same trace) and linked to
  the request that placed it when that carried another context (a supervisor's resume);
- one span per live step (``chat <model>``, ``execute_tool <tool>``, ``step <name>``,
  ``wait <signal>``), a child of the run span. Replayed steps are not new work and get no
  span; the run span counts them (``stalwart.steps.replayed``);
- ``resume <agent>`` (PRODUCER) in the supervisor when it re-places a run.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from stalwart.checkpoints import Started, StepDone, StepError, decode_value
from stalwart.observability import _metrics as m
from stalwart.observability._logs import payloads_enabled, preview
from stalwart.observability._tracing import context_from, current_carrier, tracer, tracing_active

if TYPE_CHECKING:
    from collections.abc import Awaitable, Iterator, Mapping
    from types import TracebackType

    from opentelemetry.context import Context

    from stalwart.actors import Worker
    from stalwart.actors._actor import RunActor
    from stalwart.actors._context import StepSpec
    from stalwart.actors._execute import StepExecutor
    from stalwart.actors._waits import Waits
    from stalwart.checkpoints import Finished, JournalEntry, RunRecord, StepAttempt
    from stalwart.supervisor import Supervisor

T = TypeVar("T")

log = structlog.get_logger("stalwart.steps")

_TOOL_CALL_ID = re.compile(r"(?:^|/)tool:([^/]+)$")
_PAYLOADS = payloads_enabled()
"""Debug payload logging (``STALWART_LOG_PAYLOADS``), read once: the step hooks are hot."""


@dataclass(frozen=True, slots=True)
class TraceParent:
    """Where a placed run's span hangs: the submitter's context, and links to the request."""

    context: Context | None = None
    links: tuple[Link, ...] = ()


NO_PARENT: TraceParent = TraceParent()


@dataclass(slots=True)
class _RunState:
    agent: str
    outcome: str = ""


@dataclass(slots=True)
class _StepState:
    outcome: str = ""


_run: ContextVar[_RunState | None] = ContextVar("stalwart_obs_run", default=None)
_step: ContextVar[_StepState | None] = ContextVar("stalwart_obs_step", default=None)
"""The live step of this task (its ``outcome`` is set once the step is journaled)."""


# -- client, broker, supervisor -------------------------------------------------------------------


@contextmanager
def producer_span(
    operation: str, agent: str, run_id: str, subject: str, **attributes: Any
) -> Iterator[dict[str, str]]:
    """A PRODUCER span around publishing a run request; yields the trace carrier to store.

    The carrier is empty when the span does not record (tracing off).
    """
    with tracer().start_as_current_span(
        f"{operation} {agent}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.operation.name": operation,
            "messaging.destination.name": subject,
            "messaging.message.id": run_id,
            "stalwart.run_id": run_id,
            "stalwart.agent": agent,
            **attributes,
        },
    ):
        yield current_carrier()


@contextmanager
def resume_span(record: RunRecord, subject: str, lost_epoch: int) -> Iterator[None]:
    """The supervisor re-places ``record``'s run: a PRODUCER span in the run's own trace."""
    with tracer().start_as_current_span(
        f"resume {record.agent}",
        context=context_from(record.trace),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.operation.name": "resume",
            "messaging.destination.name": subject,
            "stalwart.run_id": record.run_id,
            "stalwart.agent": record.agent,
            "stalwart.epoch": lost_epoch,
            "stalwart.worker": record.worker,
        },
    ):
        yield


def watch_worker(worker: Worker) -> None:
    """A worker started: report its hosted runs and circuit breakers in the gauges."""
    m.watch_worker(worker)


def watch_supervisor(supervisor: Supervisor) -> None:
    """A supervisor started: report what its reconcile passes see in the gauges."""
    m.watch_supervisor(supervisor)


def supervisor_pass(supervisor: Supervisor, run_ids: list[str]) -> None:
    """A reconcile pass starts over the active set ``run_ids``."""
    m.active_set(supervisor, run_ids)


def run_seen(supervisor: Supervisor, run_id: str, record: RunRecord | None) -> None:
    """The supervisor read a run's record (for the passivated-runs gauge)."""
    m.run_status(supervisor, run_id, record.status if record is not None else None)


def failover(agent: str) -> None:
    """The supervisor published a resume request for a run whose owner died."""
    m.failovers.add(1, {"agent": agent})


def dead_lettered(agent: str) -> None:
    """The supervisor failed a run whose request could never be delivered."""
    m.runs_failed.add(1, {"agent": agent, "error_type": "DeadLettered"})


# -- placement and the run ------------------------------------------------------------------------


def trace_parent(stored: str, headers: Mapping[str, str] | None) -> TraceParent:
    """The trace a placed run continues (from its record) and the request's context as a link."""
    parent = context_from(stored)
    request = context_from(headers) if headers and "traceparent" in headers else None
    if parent is None and request is None:
        return NO_PARENT
    if parent is None:
        return TraceParent(request)
    links: tuple[Link, ...] = ()
    if request is not None:
        placed_by = trace.get_current_span(request).get_span_context()
        if placed_by != trace.get_current_span(parent).get_span_context():
            links = (Link(placed_by, {"stalwart.link": "placed_by"}),)
    return TraceParent(parent, links)


@contextmanager
def run_scope(actor: RunActor) -> Iterator[None]:
    """Around one placement of a run: the run span, the log context, the run metrics."""
    state = _RunState(agent=actor.spec.name)
    token = _run.set(state)
    parent = actor.trace_parent
    try:
        with (
            structlog.contextvars.bound_contextvars(
                run_id=actor.run_id,
                agent=actor.spec.name,
                worker=actor.worker_id,
                epoch=actor.epoch,
            ),
            tracer().start_as_current_span(
                f"run {actor.spec.name}",
                context=parent.context,
                kind=SpanKind.CONSUMER,
                links=parent.links,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "process",
                    "stalwart.run_id": actor.run_id,
                    "stalwart.agent": actor.spec.name,
                    "stalwart.epoch": actor.epoch,
                    "stalwart.worker": actor.worker_id,
                },
            ) as span,
        ):
            try:
                yield
            finally:
                outcome = state.outcome or (
                    "lease_lost"
                    if actor.lost
                    else "abandoned"
                    if actor.abandoned
                    else "released"
                    if actor.draining
                    else "stopped"
                )
                span.set_attributes(
                    {
                        "stalwart.outcome": outcome,
                        "stalwart.steps.replayed": actor.steps_replayed,
                        "stalwart.steps.live": actor.steps_live,
                    }
                )
                if actor.steps_replayed:
                    m.steps_replayed.add(actor.steps_replayed, {"agent": state.agent})
    finally:
        _run.reset(token)


def run_loaded(actor: RunActor, entries: list[JournalEntry]) -> None:
    """The actor read the journal: count the placement, note what it will replay."""
    started = next((je.entry for je in reversed(entries) if isinstance(je.entry, Started)), None)
    resumed = bool(started is not None and started.resumed)
    m.runs_started.add(1, {"agent": actor.spec.name, "resumed": resumed})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({"stalwart.resumed": resumed, "stalwart.journal.entries": len(entries)})


def run_finished(actor: RunActor, entry: Finished) -> None:
    """The run's end is journaled."""
    state = _run.get()
    if state is not None:
        state.outcome = entry.status
    attrs = {"agent": actor.spec.name}
    if entry.status == "completed":
        m.runs_completed.add(1, attrs)
    elif entry.status == "failed":
        error_type = entry.error.type if entry.error else ""
        m.runs_failed.add(1, {**attrs, "error_type": error_type})
    else:
        m.runs_cancelled.add(1, attrs)
    span = trace.get_current_span()
    if span.is_recording() and entry.status == "failed" and entry.error is not None:
        span.set_attribute("error.type", entry.error.type)
        span.set_status(Status(StatusCode.ERROR, f"{entry.error.type}: {entry.error.message}"))


def run_passivated(actor: RunActor) -> None:
    """The run gave up its slot and lease to wait durably."""
    state = _run.get()
    if state is not None:
        state.outcome = "passivated"
    m.passivations.add(1, {"agent": actor.spec.name})


def journal_appended(seconds: float) -> None:
    """A journal append was acknowledged by Redis after ``seconds``."""
    m.journal_append_duration.record(seconds)


async def timed_renewal(call: Awaitable[T], leases: int) -> T:
    """Await a batched lease renewal, measuring it (an empty batch is not measured)."""
    t0 = time.perf_counter()
    try:
        return await call
    finally:
        if leases:
            m.lease_renew_duration.record(time.perf_counter() - t0)


# -- steps ----------------------------------------------------------------------------------------


def _step_span_name(kind: str, name: str) -> str:
    if kind == "model":
        return f"chat {name}"
    if kind == "tool":
        return f"execute_tool {name}"
    if kind in ("signal", "sleep"):
        return f"wait {name}"
    return f"{kind} {name}"


def _step_attributes(actor: StepExecutor | Waits, key: str, kind: str, name: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "stalwart.run_id": actor.run_id,
        "stalwart.step_key": key,
        "stalwart.step_kind": kind,
        "stalwart.step_name": name,
        "stalwart.epoch": actor.epoch,
        "stalwart.worker": actor.worker_id,
        "stalwart.replayed": False,
    }
    # OpenTelemetry GenAI semantic conventions where they apply.
    if kind == "model":
        attrs["gen_ai.operation.name"] = "chat"
        attrs["gen_ai.request.model"] = name
    elif kind == "tool":
        attrs["gen_ai.operation.name"] = "execute_tool"
        attrs["gen_ai.tool.name"] = name
        call = _TOOL_CALL_ID.search(key)
        if call:
            attrs["gen_ai.tool.call.id"] = call.group(1)
    return attrs


class _StepScope:
    """Around a live step on this worker: its span (when tracing is on) and log context.

    A class rather than a generator: it is entered for every step, and with tracing off it
    only binds the step key for the log lines.
    """

    __slots__ = (
        "_actor",
        "_ctx_token",
        "_key",
        "_kind",
        "_log_tokens",
        "_name",
        "_span",
        "_state",
        "_state_token",
    )

    def __init__(self, actor: StepExecutor | Waits, key: str, kind: str, name: str) -> None:
        self._actor, self._key, self._kind, self._name = actor, key, kind, name
        self._span: trace.Span | None = None

    def __enter__(self) -> None:
        self._log_tokens = structlog.contextvars.bind_contextvars(step=self._key)
        self._state = _StepState()
        self._state_token = _step.set(self._state)
        if tracing_active():
            self._span = tracer().start_span(
                _step_span_name(self._kind, self._name),
                kind=SpanKind.CLIENT if self._kind == "model" else SpanKind.INTERNAL,
                attributes=_step_attributes(self._actor, self._key, self._kind, self._name),
            )
            self._ctx_token = otel_context.attach(trace.set_span_in_context(self._span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            span = self._span
            if span is not None:
                # A journaled failure was described by step_journaled; this is the rest: the
                # run stopping under the step (lease lost, drain, cancellation, passivation).
                if exc_type is not None and not self._state.outcome and span.is_recording():
                    span.set_attribute("stalwart.outcome", f"interrupted:{exc_type.__name__}")
                otel_context.detach(self._ctx_token)
                span.end()
        finally:
            _step.reset(self._state_token)
            structlog.contextvars.reset_contextvars(**self._log_tokens)


def step_scope(actor: StepExecutor | Waits, spec: StepSpec) -> _StepScope:
    """Around a live step (all its attempts): its span and its log context."""
    return _StepScope(actor, spec.key, spec.kind, spec.name)


def wait_scope(actor: StepExecutor | Waits, key: str, signal: str) -> _StepScope:
    """Around a live durable wait on this worker: its span and its log context."""
    return _StepScope(actor, key, "signal" if signal else "sleep", signal or "sleep")


def step_journaled(actor: StepExecutor | Waits, entry: StepDone | StepError) -> None:
    """A live step's outcome is journaled: its latency, tokens and outcome."""
    ok = isinstance(entry, StepDone)
    m.step_duration.record(entry.duration, {"kind": entry.kind, "outcome": "ok" if ok else "error"})
    if entry.kind in ("model", "tool"):
        m.breaker_used(f"{entry.kind}:{entry.name}")
    fields: dict[str, Any] = {
        "kind": entry.kind,
        "name": entry.name,
        "attempt": entry.attempt,
        "duration": round(entry.duration, 6),
    }
    attrs: dict[str, Any] = {"stalwart.attempt": entry.attempt}
    if isinstance(entry, StepDone):
        attrs["stalwart.outcome"] = "completed"
        if entry.kind == "model" and (entry.model or entry.input_tokens or entry.output_tokens):
            model = entry.model or entry.name
            m.model_tokens.add(entry.input_tokens, {"model": model, "type": "input"})
            m.model_tokens.add(entry.output_tokens, {"model": model, "type": "output"})
            cost = actor.policies.limits.cost(model, entry.input_tokens, entry.output_tokens)
            attrs.update(
                {
                    "gen_ai.response.model": model,
                    "gen_ai.usage.input_tokens": entry.input_tokens,
                    "gen_ai.usage.output_tokens": entry.output_tokens,
                    "stalwart.cost_usd": cost,
                }
            )
            fields.update(input_tokens=entry.input_tokens, output_tokens=entry.output_tokens)
        if _PAYLOADS:
            result = preview(decode_value(entry.result))
            attrs["stalwart.step.result"] = result
            fields["result"] = result
    else:
        attrs.update({"stalwart.outcome": "failed", "error.type": entry.error.type})
        fields["error"] = f"{entry.error.type}: {preview(entry.error.message, 200)}"
    state = _step.get()
    if state is not None:
        state.outcome = attrs["stalwart.outcome"]
    span = trace.get_current_span() if tracing_active() else trace.INVALID_SPAN
    if span.is_recording():
        span.set_attributes(attrs)
        if isinstance(entry, StepError):
            span.set_status(
                Status(StatusCode.ERROR, f"{entry.error.type}: {preview(entry.error.message)}")
            )
    if structlog.is_configured():  # unconfigured structlog prints every level: no per-step noise
        log.debug("step.completed" if ok else "step.failed", **fields)


def step_retried(entry: StepAttempt) -> None:
    """A step attempt failed and will be retried."""
    m.step_retries.add(1, {"kind": entry.kind})
    span = trace.get_current_span() if tracing_active() else trace.INVALID_SPAN
    if span.is_recording():
        span.add_event(
            "stalwart.step.retry",
            {
                "stalwart.attempt": entry.attempt,
                "stalwart.retry_delay": entry.delay,
                "error.type": entry.error.type,
                "error.message": preview(entry.error.message),
            },
        )
