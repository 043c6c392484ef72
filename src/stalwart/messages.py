"""Messages on the wire: run requests (msgpack) and run events (JSON).

Run requests are msgpack because only Stalwart reads them. Run events are JSON so that any
tool (``nats sub``, a dashboard in another language) can read a run's event stream.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec
import structlog

from stalwart._json import json_safe

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "EVENT_DATA",
    "EV_ACCEPTED",
    "EV_CANCELLED",
    "EV_COMPLETED",
    "EV_CONCURRENCY_WAITING",
    "EV_FAILED",
    "EV_LEASE_LOST",
    "EV_OUTCOME_UNKNOWN",
    "EV_PASSIVATED",
    "EV_REJECTED",
    "EV_RELEASED",
    "EV_RESUMED",
    "EV_SIGNAL",
    "EV_STARTED",
    "EV_STEP_COMPLETED",
    "EV_STEP_FAILED",
    "EV_STEP_INTENT",
    "EV_STEP_RESET",
    "EV_STEP_RETRYING",
    "EV_STEP_STARTED",
    "EV_STUCK",
    "EV_WAIT_STARTED",
    "TERMINAL_EVENTS",
    "ConcurrencyWaitingData",
    "ErrorData",
    "EventData",
    "EventType",
    "OutcomeUnknownData",
    "ReasonData",
    "RequestKind",
    "RequestRejectedData",
    "RunAcceptedData",
    "RunEndedData",
    "RunEvent",
    "RunPassivatedData",
    "RunRequest",
    "RunResumedData",
    "RunStuckData",
    "SignalReceivedData",
    "StepEndedData",
    "StepIntentData",
    "StepKind",
    "StepResetData",
    "StepRetryingData",
    "StepStartedData",
    "WaitStartedData",
    "data_dict",
    "decode_event",
    "decode_request",
    "encode_event",
    "encode_request",
    "event_data",
    "read_event",
]

RequestKind = Literal["start", "resume"]


class RunRequest(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Ask a worker to start (or resume) a run of ``agent``.

    Publish it to ``<namespace>.runs.<agent>`` with header ``Nats-Msg-Id: <run_id>``.
    """

    run_id: str
    agent: str
    input: Any = None
    kind: RequestKind = "start"
    epoch: Annotated[int, msgspec.Meta(ge=0)] = 0
    """For a resume: the epoch of the owner that was lost (used to skip stale resumes)."""
    submitted_at: float = 0.0
    trace: dict[str, str] = {}
    """W3C trace-context carrier of the submitter, so the run joins the caller's trace."""
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    """Orders the run among runs waiting for a concurrency slot (higher first)."""
    conversation: str = ""
    """The conversation this run is a turn of ("": none; see docs/conversations.md)."""
    on_busy: Literal["queue", "reject", "interrupt"] = "queue"
    """What the run does while another run of its conversation is going: wait its turn,
    fail with ``conversation.busy``, or cancel the running one and take over."""


class RunEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event in a run's life, published to ``<namespace>.events.<agent>.<run_id>.sys``
    (by workers and supervisors) or ``.client`` (what clients announce).

    ``type`` is an :data:`EventType` (the ``EV_*`` constants below) or a type agent code
    passed to ``ctx.emit``; :func:`event_data` reads the ``data`` of Stalwart's own types as
    their typed structs (:data:`EventData`). ``jseq`` is the journal sequence the
    event reflects (0 for events that are not journaled, such as ``step.started``); a
    resumed actor uses it to publish whatever a crash kept from being published.

    ``agent`` is the run's agent: every publisher sets it, and the subject carries it
    (:data:`NO_AGENT_TOKEN` when unknown); readers take it from the subject, "" for events
    stored before it existed. ``seq`` is the event's sequence in the events stream: 0 as
    published, filled in by readers from the message's metadata (a value in the body is
    never trusted), so a reader can resume after the last event it saw.
    """

    type: str
    run_id: str
    at: float
    worker: str = ""
    epoch: int = 0
    jseq: int = 0
    step: str = ""
    data: Any = None
    agent: str = ""
    seq: int = 0
    attempt: int = 0
    """The attempt of ``step`` during whose body a live event was emitted (``ctx.emit``
    inside a step), 0 for events emitted outside a step attempt. With ``epoch`` it tells
    which attempt a streamed chunk belongs to (see ``step.reset``, docs/streaming.md)."""


EventType = Literal[
    "run.accepted",
    "run.started",
    "run.resumed",
    "step.started",
    "step.completed",
    "step.failed",
    "step.retrying",
    "step.intent",
    "wait.started",
    "signal.received",
    "run.passivated",
    "run.stuck",
    "step.outcome_unknown",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "request.rejected",
    "run.lease_lost",
    "run.released",
    "concurrency.waiting",
    "step.reset",
]
"""The event types Stalwart publishes; ``ctx.emit`` may publish any other type."""

EV_ACCEPTED: Final = "run.accepted"
EV_STARTED: Final = "run.started"
EV_RESUMED: Final = "run.resumed"
EV_STEP_STARTED: Final = "step.started"
EV_STEP_COMPLETED: Final = "step.completed"
EV_STEP_FAILED: Final = "step.failed"
EV_STEP_RETRYING: Final = "step.retrying"
EV_STEP_INTENT: Final = "step.intent"
EV_WAIT_STARTED: Final = "wait.started"
EV_SIGNAL: Final = "signal.received"
EV_PASSIVATED: Final = "run.passivated"
EV_STUCK: Final = "run.stuck"
EV_OUTCOME_UNKNOWN: Final = "step.outcome_unknown"
EV_COMPLETED: Final = "run.completed"
EV_FAILED: Final = "run.failed"
EV_CANCELLED: Final = "run.cancelled"
EV_REJECTED: Final = "request.rejected"
EV_LEASE_LOST: Final = "run.lease_lost"
EV_RELEASED: Final = "run.released"
EV_CONCURRENCY_WAITING: Final = "concurrency.waiting"
EV_STEP_RESET: Final = "step.reset"

StepKind = Literal["step", "model", "tool", "signal", "sleep"]
"""The step kinds Stalwart journals itself: ``ctx.step``, model and tool calls, and the two
durable waits. Adapters may journal kinds of their own (``handoff``, ``node``...), so the
``kind`` of an event or entry is typed ``str``."""

# -- typed event data ---------------------------------------------------------------------------
# One struct per event type Stalwart publishes. On the wire ``data`` is the struct's JSON
# object; ``RunEvent.data`` keeps plain dicts so that readers of decoded events (and the
# size bounding of events) see what they always saw. ``event_data`` gives the typed view.


class _Data(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the typed event data: frozen, keyword-only, unset fields left out."""


class ErrorData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """An error as events carry it: the exception's type name and its (bounded) message."""

    type: str
    message: str


class RunAcceptedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``run.accepted``: the client stored the run and is about to queue it (a fork: of run
    ``forked_from``, at its step ``at``)."""

    agent: str
    forked_from: str | msgspec.UnsetType = msgspec.UNSET
    at: str | msgspec.UnsetType = msgspec.UNSET


class RunResumedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``run.resumed``: a new owner took the run over; it replays this many steps first."""

    journaled_steps: int


class StepStartedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``step.started``: an attempt of a live step body begins (not journaled)."""

    kind: str
    attempt: int


class StepEndedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``step.completed`` and ``step.failed`` (with ``error``): a step's journaled outcome."""

    kind: str
    name: str
    duration: float
    error: ErrorData | msgspec.UnsetType = msgspec.UNSET


class StepRetryingData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``step.retrying``: attempt ``attempt`` failed; the next one starts after ``delay`` s."""

    attempt: int
    delay: float
    error: ErrorData


class StepIntentData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``step.intent``: an at-most-once attempt was about to call its function."""

    attempt: int
    name: str


class WaitStartedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``wait.started``: a durable wait began (``until`` 0: no deadline; ``signal`` "": sleep)."""

    until: float
    signal: str


class SignalReceivedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``signal.received``: a signal was stored in the run's inbox under id ``sid``."""

    name: str
    sid: str


class RunPassivatedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``run.passivated``: the run left its worker while it waits (``wake_at`` 0: no timer)."""

    signal: str
    wake_at: float


class RunStuckData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``run.stuck``: the run made no progress for ``idle_seconds``; what the supervisor did."""

    idle_seconds: float
    action: str


class OutcomeUnknownData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``step.outcome_unknown``: an at-most-once step's outcome is awaited as a signal."""

    signal: str
    idempotency_key: str


class RunEndedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``run.completed``, ``run.failed``, ``run.cancelled``: how the run ended.

    ``result`` when it completed with a result small enough for an event (else
    ``result_bytes``, its encoded size: read the record); ``error`` when it failed or was
    cancelled.
    """

    result: Any = msgspec.UNSET
    result_bytes: int | msgspec.UnsetType = msgspec.UNSET
    error: ErrorData | msgspec.UnsetType = msgspec.UNSET


class RequestRejectedData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``request.rejected``: a run request was refused before the run started."""

    reason: str
    agent: str = ""
    stream_seq: int | msgspec.UnsetType = msgspec.UNSET


class ReasonData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``run.lease_lost`` and ``run.released``: why the worker let go of the run."""

    reason: str


class ConcurrencyWaitingData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``concurrency.waiting``: the run waits for a slot of concurrency ``key`` under
    ``rule`` (``limit`` runs of a key at once); ``ahead`` runs of the key wait before it."""

    rule: str
    key: str
    limit: int
    ahead: int = 0


class StepResetData(_Data, frozen=True, kw_only=True, omit_defaults=True):
    """``step.reset``: attempt ``attempt`` of the step begins where an earlier attempt may
    have streamed live events (``reason`` ``retry``: it failed; ``failover``: its owner was
    lost). Every live event of the step from an earlier (epoch, attempt) is void."""

    attempt: int
    reason: str


EventData = (
    RunAcceptedData
    | RunResumedData
    | StepStartedData
    | StepEndedData
    | StepRetryingData
    | StepIntentData
    | WaitStartedData
    | SignalReceivedData
    | RunPassivatedData
    | RunStuckData
    | OutcomeUnknownData
    | RunEndedData
    | RequestRejectedData
    | ReasonData
    | ConcurrencyWaitingData
    | StepResetData
)
"""The typed data of Stalwart's events, told apart by the event's ``type``."""

EVENT_DATA: Mapping[str, type[EventData] | None] = {
    EV_ACCEPTED: RunAcceptedData,
    EV_STARTED: None,
    EV_RESUMED: RunResumedData,
    EV_STEP_STARTED: StepStartedData,
    EV_STEP_COMPLETED: StepEndedData,
    EV_STEP_FAILED: StepEndedData,
    EV_STEP_RETRYING: StepRetryingData,
    EV_STEP_INTENT: StepIntentData,
    EV_WAIT_STARTED: WaitStartedData,
    EV_SIGNAL: SignalReceivedData,
    EV_PASSIVATED: RunPassivatedData,
    EV_STUCK: RunStuckData,
    EV_OUTCOME_UNKNOWN: OutcomeUnknownData,
    EV_COMPLETED: RunEndedData,
    EV_FAILED: RunEndedData,
    EV_CANCELLED: RunEndedData,
    EV_REJECTED: RequestRejectedData,
    EV_LEASE_LOST: ReasonData,
    EV_RELEASED: ReasonData,
    EV_CONCURRENCY_WAITING: ConcurrencyWaitingData,
    EV_STEP_RESET: StepResetData,
}
"""The data struct of each :data:`EventType` (None: the event carries no data)."""


def event_data(event: RunEvent) -> EventData | None:
    """The typed data of one of Stalwart's own events; None for ``run.started`` and for
    types agent code emitted.

    Raises ``msgspec.ValidationError`` when the data does not have the type's shape (an
    event cut down to fit the payload limit, or one someone else published).
    """
    struct = EVENT_DATA.get(event.type)
    if struct is None:
        return None
    if isinstance(event.data, struct):
        return event.data
    return msgspec.convert(event.data, struct)


def data_dict(data: EventData) -> dict[str, Any]:
    """``data`` as the plain dict a :class:`RunEvent` carries (unset fields left out).

    Shallow on purpose: a ``result`` is the agent's value, passed through as it is (the
    encoder makes it JSON-safe).
    """
    out: dict[str, Any] = {}
    for name in data.__struct_fields__:
        value = getattr(data, name)
        if value is msgspec.UNSET:
            continue
        out[name] = msgspec.structs.asdict(value) if isinstance(value, ErrorData) else value
    return out


TERMINAL_EVENTS = frozenset({EV_COMPLETED, EV_FAILED, EV_CANCELLED, EV_REJECTED})

_request_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(RunRequest)
_event_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(RunEvent)


def encode_request(req: RunRequest) -> bytes:
    """Encode a run request for the wire."""
    return _request_encoder.encode(req)


def decode_request(data: bytes) -> RunRequest:
    """Decode a run request.

    Raises ``msgspec.DecodeError`` / ``ValidationError`` on bad data, and ``RecursionError``
    on data nested too deeply for the decoder; callers treat any exception as "unusable".
    """
    return _request_decoder.decode(data)


_STALWART_DATA = frozenset(EVENT_DATA) - {EV_COMPLETED}
"""Event types whose data Stalwart builds itself (no user value inside; see encode_event)."""


_CLOCK_DATA = frozenset({EV_STEP_COMPLETED, EV_STEP_STARTED})
"""Event types whose data Stalwart builds from a step's kind, name, attempt and duration:
only the duration is looked at (these are published for every step)."""


def encode_event(ev: RunEvent) -> bytes:
    """Encode a run event as JSON; NaN and infinities become ``"NaN"``, ``"Infinity"``...

    (msgspec would write ``null``, losing the value; see ``stalwart._json``.)
    """
    data = ev.data
    if data is None:
        return _event_encoder.encode(ev)
    if ev.type in _CLOCK_DATA and type(data) is dict and len(data) <= 3:
        # One per step: the only float is the duration (kind, name, attempt are not).
        duration = data.get("duration")
        if type(duration) is float and not math.isfinite(duration):
            ev = msgspec.structs.replace(ev, data=json_safe(data))
    elif ev.type in _STALWART_DATA and isinstance(data, dict):
        # Built by Stalwart from journal metadata: only top-level numbers, no user values.
        # A shallow look instead of a walk keeps this off the per-step cost.
        if any(isinstance(v, float) and not math.isfinite(v) for v in data.values()):
            ev = msgspec.structs.replace(ev, data=json_safe(data))
    elif ev.type == EV_COMPLETED and isinstance(data, dict) and "result" in data:
        ev = msgspec.structs.replace(ev, data={**data, "result": json_safe(data["result"])})
    else:  # events emitted by agent code carry its values at any depth
        ev = msgspec.structs.replace(ev, data=json_safe(data))
    return _event_encoder.encode(ev)


def decode_event(data: bytes) -> RunEvent:
    """Decode a run event; raises on anything that is not one (see :func:`read_event`)."""
    return _event_decoder.decode(data)


_log = structlog.get_logger("stalwart.events")
_skipped_logged = False


CLIENT_EVENTS = frozenset({EV_ACCEPTED, EV_REJECTED, EV_SIGNAL, EV_CANCELLED})
"""The event types clients announce, on a run's ``client`` subject
(``<ns>.events.<agent>.<run>.client``)."""

NO_AGENT_TOKEN: Final = "~"
"""Agent token of an events subject whose event has no usable agent (see
``Names.events_subject``). No agent name can be it: agent names are ``[A-Za-z0-9_-]`` only."""


def split_events_subject(subject: str) -> tuple[str, str, str] | None:
    """``(agent token, run id, source)`` of an events subject, agent token "" in the layout
    before the agent token; None for a subject that is neither layout.

    Namespaces are one token, so the layouts differ in their number of tokens:
    ``<ns>.events.<agent>.<run>.<source>`` and ``<ns>.events.<run>.<source>``.
    """
    parts = subject.split(".")
    if len(parts) == 5 and parts[1] == "events":
        return parts[2], parts[3], parts[4]
    if len(parts) == 4 and parts[1] == "events":
        return "", parts[2], parts[3]
    return None


def read_event(data: bytes | None, subject: str = "", seq: int = 0) -> RunEvent | None:
    """Decode a run event, or None for anything that is not one.

    Anyone who can publish on a run's subject can put garbage there; every reader of event
    streams goes through this so that such a message is skipped, not fatal. The first one
    skipped in a process is logged (once: a flood of garbage must not flood the log too).
    An event on a run's ``client`` subject whose type clients never announce (a
    ``step.completed``, a ``run.completed``) is a client's forgery and skipped too, as is
    an event on an events subject of another run. The event's ``agent`` is the subject's
    agent token ("" for :data:`NO_AGENT_TOKEN` and the old layout) and its ``seq`` is
    ``seq`` (the stream sequence the reader got with the message): what the body says of
    either is not taken.
    """
    global _skipped_logged
    try:
        event = _event_decoder.decode(data or b"")
        agent = event.agent
        parts = split_events_subject(subject) if subject else None
        if parts is not None:
            token, run_id, source = parts
            if run_id != event.run_id:
                raise ValueError(f"an event of another run on {run_id!r}'s subject")
            agent = "" if token == NO_AGENT_TOKEN else token
        else:
            source = "client" if subject.endswith(".client") else "sys"
        if source == "client" and event.type not in CLIENT_EVENTS:
            raise ValueError(f"{event.type} is not a client event")
        if event.seq != seq or event.agent != agent:
            event = msgspec.structs.replace(event, seq=seq, agent=agent)
        return event
    except Exception as exc:
        if not _skipped_logged:
            _skipped_logged = True
            _log.warning(
                "event.undecodable_skipped",
                subject=subject,
                bytes=len(data or b""),
                error=type(exc).__name__,
            )
        return None
