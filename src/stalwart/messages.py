"""Messages on the wire: run requests (msgpack) and run events (JSON).

Run requests are msgpack because only Stalwart reads them. Run events are JSON so that any
tool (``nats sub``, a dashboard in another language) can read a run's event stream.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import msgspec
import structlog

from stalwart._json import json_safe

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


class RunEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event in a run's life, published to ``<namespace>.events.<run_id>``.

    ``type`` is one of the ``EV_*`` constants below. ``jseq`` is the journal sequence the
    event reflects (0 for events that are not journaled, such as ``step.started``); a
    resumed actor uses it to publish whatever a crash kept from being published.
    """

    type: str
    run_id: str
    at: float
    worker: str = ""
    epoch: int = 0
    jseq: int = 0
    step: str = ""
    data: Any = None


EV_ACCEPTED = "run.accepted"
EV_STARTED = "run.started"
EV_RESUMED = "run.resumed"
EV_STEP_STARTED = "step.started"
EV_STEP_COMPLETED = "step.completed"
EV_STEP_FAILED = "step.failed"
EV_STEP_RETRYING = "step.retrying"
EV_STEP_INTENT = "step.intent"
EV_WAIT_STARTED = "wait.started"
EV_SIGNAL = "signal.received"
EV_PASSIVATED = "run.passivated"
EV_STUCK = "run.stuck"
EV_OUTCOME_UNKNOWN = "step.outcome_unknown"
EV_COMPLETED = "run.completed"
EV_FAILED = "run.failed"
EV_CANCELLED = "run.cancelled"
EV_REJECTED = "request.rejected"
EV_LEASE_LOST = "run.lease_lost"
EV_RELEASED = "run.released"

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


_STALWART_DATA = frozenset(
    {
        EV_ACCEPTED,
        EV_STARTED,
        EV_RESUMED,
        EV_STEP_STARTED,
        EV_STEP_COMPLETED,
        EV_STEP_FAILED,
        EV_STEP_RETRYING,
        EV_STEP_INTENT,
        EV_WAIT_STARTED,
        EV_SIGNAL,
        EV_PASSIVATED,
        EV_STUCK,
        EV_OUTCOME_UNKNOWN,
        EV_FAILED,
        EV_CANCELLED,
        EV_REJECTED,
        EV_LEASE_LOST,
        EV_RELEASED,
    }
)
"""Event types whose data Stalwart builds itself (no user value inside; see encode_event)."""


def encode_event(ev: RunEvent) -> bytes:
    """Encode a run event as JSON; NaN and infinities become ``"NaN"``, ``"Infinity"``...

    (msgspec would write ``null``, losing the value; see ``stalwart._json``.)
    """
    data = ev.data
    if data is None:
        return _event_encoder.encode(ev)
    if ev.type in _STALWART_DATA and isinstance(data, dict):
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


def read_event(data: bytes | None, subject: str = "") -> RunEvent | None:
    """Decode a run event, or None for anything that is not one.

    Anyone who can publish on a run's subject can put garbage there; every reader of event
    streams goes through this so that such a message is skipped, not fatal. The first one
    skipped in a process is logged (once: a flood of garbage must not flood the log too).
    """
    global _skipped_logged
    try:
        return _event_decoder.decode(data or b"")
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
