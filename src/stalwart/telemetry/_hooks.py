"""What the runtime calls at the points worth a span, a metric or a log line.

Each hook is one call from the runtime (actor, worker, supervisor, client, broker) with one
small frozen record (:mod:`stalwart.telemetry._records`) or plain values, so everything about
telemetry lives here and nothing here knows the runtime's classes. Spans:

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

import logging
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from stalwart.telemetry import _metrics as m
from stalwart.telemetry._logs import payloads_enabled, preview
from stalwart.telemetry._records import NO_PARENT, TraceParent
from stalwart.telemetry._tracing import context_from, current_carrier, tracer, tracing_active

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping
    from types import TracebackType

    from stalwart.telemetry._records import (
        ReconcilePass,
        RunEnded,
        RunLeft,
        RunLoaded,
        RunPlaced,
        RunResumed,
        RunSeen,
        StepJournaled,
        StepRetried,
        StepStarted,
        SupervisorSnapshot,
        WorkerSnapshot,
    )

T = TypeVar("T")

log = structlog.get_logger("stalwart.steps")

_TOOL_CALL_ID = re.compile(r"(?:^|/)tool:([^/]+)$")
LOG_PAYLOADS = payloads_enabled()
"""Debug payload logging (``STALWART_LOG_PAYLOADS``), read once: the step hooks are hot. The
runtime reads it too, to build a step's result preview only when it will be logged."""


@dataclass(slots=True)
class _RunState:
    agent: str
    outcome: str = ""


class _StepState(msgspec.Struct, gc=False):
    """A live step's outcome for its span (a Struct: one is built per step)."""

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
def resume_span(event: RunResumed) -> Iterator[None]:
    """The supervisor re-places a run: a PRODUCER span in the run's own trace."""
    with tracer().start_as_current_span(
        f"resume {event.agent}",
        context=context_from(event.trace),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "nats",
            "messaging.operation.type": "send",
            "messaging.operation.name": "resume",
            "messaging.destination.name": event.subject,
            "stalwart.run_id": event.run_id,
            "stalwart.agent": event.agent,
            "stalwart.epoch": event.lost_epoch,
            "stalwart.worker": event.worker,
        },
    ):
        yield


def watch_worker(snapshot: Callable[[], WorkerSnapshot | None]) -> None:
    """A worker started: report it in the gauges (``snapshot`` returns None once it is gone)."""
    m.watch_worker(snapshot)


def watch_supervisor(snapshot: Callable[[], SupervisorSnapshot | None]) -> None:
    """A supervisor started: report it and what its reconcile passes see in the gauges."""
    m.watch_supervisor(snapshot)


def supervisor_pass(event: ReconcilePass) -> None:
    """A reconcile pass starts over the active set."""
    m.active_set(event)


def run_seen(event: RunSeen) -> None:
    """The supervisor read a run's record (for the passivated-runs gauge)."""
    m.run_status(event)


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
def run_scope(placed: RunPlaced, left: Callable[[], RunLeft]) -> Iterator[None]:
    """Around one placement of a run: the run span, the log context, the run metrics.

    ``left`` is asked once, as the placement ends, how it ended and what it did.
    """
    state = _RunState(agent=placed.agent)
    token = _run.set(state)
    parent = placed.parent
    try:
        with (
            structlog.contextvars.bound_contextvars(
                run_id=placed.run_id,
                agent=placed.agent,
                worker=placed.worker,
                epoch=placed.epoch,
            ),
            tracer().start_as_current_span(
                f"run {placed.agent}",
                context=parent.context,
                kind=SpanKind.CONSUMER,
                links=parent.links,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "process",
                    "stalwart.run_id": placed.run_id,
                    "stalwart.agent": placed.agent,
                    "stalwart.epoch": placed.epoch,
                    "stalwart.worker": placed.worker,
                },
            ) as span,
        ):
            try:
                yield
            finally:
                end = left()
                span.set_attributes(
                    {
                        "stalwart.outcome": state.outcome or end.reason,
                        "stalwart.steps.replayed": end.steps_replayed,
                        "stalwart.steps.live": end.steps_live,
                    }
                )
                if end.steps_replayed:
                    m.steps_replayed.add(end.steps_replayed, {"agent": state.agent})
    finally:
        _run.reset(token)


def run_loaded(event: RunLoaded) -> None:
    """The actor read the journal: count the placement, note what it will replay."""
    m.runs_started.add(1, {"agent": event.agent, "resumed": event.resumed})
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {"stalwart.resumed": event.resumed, "stalwart.journal.entries": event.entries}
        )


def run_finished(event: RunEnded) -> None:
    """The run's end is journaled."""
    state = _run.get()
    if state is not None:
        state.outcome = event.status
    attrs = {"agent": event.agent}
    if event.status == "completed":
        m.runs_completed.add(1, attrs)
    elif event.status == "failed":
        m.runs_failed.add(1, {**attrs, "error_type": event.error_type})
    else:
        m.runs_cancelled.add(1, attrs)
    span = trace.get_current_span()
    if span.is_recording() and event.status == "failed" and event.error_type:
        span.set_attribute("error.type", event.error_type)
        span.set_status(Status(StatusCode.ERROR, f"{event.error_type}: {event.error_message}"))


def run_passivated(agent: str) -> None:
    """The run gave up its slot and lease to wait durably."""
    state = _run.get()
    if state is not None:
        state.outcome = "passivated"
    m.passivations.add(1, {"agent": agent})


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


def _step_attributes(step: StepStarted) -> dict[str, Any]:
    kind, name, key = step.kind, step.name, step.key
    attrs: dict[str, Any] = {
        "stalwart.run_id": step.run_id,
        "stalwart.step_key": key,
        "stalwart.step_kind": kind,
        "stalwart.step_name": name,
        "stalwart.epoch": step.epoch,
        "stalwart.worker": step.worker,
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


def _log_step_var() -> ContextVar[Any]:
    """structlog's own context variable for the ``step`` key of log lines.

    Looked up once, through the token :func:`structlog.contextvars.bind_contextvars` returns
    (so it is the very variable ``merge_contextvars`` reads, without structlog's private
    registry): setting it directly costs a third of a bind and reset per step.
    """
    global _LOG_STEP
    if _LOG_STEP is None:
        token = structlog.contextvars.bind_contextvars(step=...)["step"]
        _LOG_STEP = token.var
        _LOG_STEP.reset(token)
    return _LOG_STEP


_LOG_STEP: ContextVar[Any] | None = None


class StepScope:
    """Around a live step (all its attempts) or durable wait: its span and its log context.

    A class rather than a generator: it is entered for every step. With tracing off it only
    sets the step key of the log lines: the span and the outcome it is told of are built
    only when a span records.
    """

    __slots__ = ("_ctx_token", "_describe", "_key", "_log_token", "_span", "_state", "_state_token")

    def __init__(self, key: str, describe: Callable[[], StepStarted]) -> None:
        """``describe`` tells the span what the step is (asked only when a span records)."""
        self._key = key
        self._describe = describe
        self._span: trace.Span | None = None

    def __enter__(self) -> None:
        self._log_token = (_LOG_STEP or _log_step_var()).set(self._key)
        if tracing_active():
            step = self._describe()
            self._state = _StepState()
            self._state_token = _step.set(self._state)
            self._span = tracer().start_span(
                _step_span_name(step.kind, step.name),
                kind=SpanKind.CLIENT if step.kind == "model" else SpanKind.INTERNAL,
                attributes=_step_attributes(step),
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
                try:
                    # A journaled failure was described by step_journaled; this is the rest:
                    # the run stopping under the step (lease lost, drain, cancellation,
                    # passivation).
                    if exc_type is not None and not self._state.outcome and span.is_recording():
                        span.set_attribute("stalwart.outcome", f"interrupted:{exc_type.__name__}")
                    otel_context.detach(self._ctx_token)
                    span.end()
                finally:
                    _step.reset(self._state_token)
        finally:
            self._log_token.var.reset(self._log_token)


_DURATION_ATTRS: dict[tuple[str, bool], dict[str, str]] = {}
"""The step duration histogram's attributes by (kind, ok): built once, not once per step."""


def _duration_attrs(kind: str, ok: bool) -> dict[str, str]:
    attrs = _DURATION_ATTRS.get((kind, ok))
    if attrs is None:
        attrs = {"kind": kind, "outcome": "ok" if ok else "error"}
        if len(_DURATION_ATTRS) < 256:  # kinds are few; a flood of odd ones is not cached
            _DURATION_ATTRS[(kind, ok)] = attrs
    return attrs


_debug_on = False
_debug_checked_at = float("-inf")


def _debug_logged() -> bool:
    """Whether ``log.debug`` writes anything: structlog is configured (unconfigured, it
    prints every level: no per-step noise) and its level lets debug lines through.

    Asked once per step; looked up at most once a second (a level set at run time, or a
    configuration made after start-up, applies within a second).
    """
    global _debug_on, _debug_checked_at
    now = time.monotonic()
    if now - _debug_checked_at < 1.0:
        return _debug_on
    if not structlog.is_configured():
        _debug_on = False
    else:
        enabled = getattr(log, "is_enabled_for", None)  # the filtering loggers Stalwart sets
        _debug_on = enabled is None or bool(enabled(logging.DEBUG))
    _debug_checked_at = now
    return _debug_on


def step_journaled(event: StepJournaled) -> None:
    """A live step's outcome is journaled: its latency, tokens and outcome.

    The metrics are recorded always; the span attributes and the debug log line are built
    only when a span records or debug lines are written (most steps: neither).
    """
    ok, kind = event.ok, event.kind
    m.step_duration.record(event.duration, _duration_attrs(kind, ok))
    if kind in ("model", "tool"):
        m.breaker_used(f"{kind}:{event.name}")
    tokens = (
        ok and kind == "model" and bool(event.model or event.input_tokens or event.output_tokens)
    )
    model = event.model or event.name
    if tokens:
        m.model_tokens.add(event.input_tokens, {"model": model, "type": "input"})
        m.model_tokens.add(event.output_tokens, {"model": model, "type": "output"})
    state = _step.get()
    if state is not None:
        state.outcome = "completed" if ok else "failed"
    span = trace.get_current_span() if tracing_active() else trace.INVALID_SPAN
    recording = span.is_recording()
    logged = _debug_logged()
    if not (recording or logged):
        return
    fields: dict[str, Any] = {
        "kind": kind,
        "name": event.name,
        "attempt": event.attempt,
        "duration": round(event.duration, 6),
    }
    attrs: dict[str, Any] = {"stalwart.attempt": event.attempt}
    if ok:
        attrs["stalwart.outcome"] = "completed"
        if tokens:
            attrs.update(
                {
                    "gen_ai.response.model": model,
                    "gen_ai.usage.input_tokens": event.input_tokens,
                    "gen_ai.usage.output_tokens": event.output_tokens,
                    "stalwart.cost_usd": event.cost_usd,
                }
            )
            fields.update(input_tokens=event.input_tokens, output_tokens=event.output_tokens)
        if event.result is not None:
            attrs["stalwart.step.result"] = event.result
            fields["result"] = event.result
    else:
        attrs.update({"stalwart.outcome": "failed", "error.type": event.error_type})
        fields["error"] = f"{event.error_type}: {preview(event.error_message, 200)}"
    if recording:
        span.set_attributes(attrs)
        if not ok:
            span.set_status(
                Status(StatusCode.ERROR, f"{event.error_type}: {preview(event.error_message)}")
            )
    if logged:
        log.debug("step.completed" if ok else "step.failed", **fields)


def step_retried(event: StepRetried) -> None:
    """A step attempt failed and will be retried."""
    m.step_retries.add(1, {"kind": event.kind})
    span = trace.get_current_span() if tracing_active() else trace.INVALID_SPAN
    if span.is_recording():
        span.add_event(
            "stalwart.step.retry",
            {
                "stalwart.attempt": event.attempt,
                "stalwart.retry_delay": event.delay,
                "error.type": event.error_type,
                "error.message": preview(event.error_message),
            },
        )
