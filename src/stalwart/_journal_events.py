"""The run event of a journal entry: built here, and only here.

A journal entry's event is published live, right after its append, and again by the next
owner of the run when a crash kept it from reaching the stream; both go through
:func:`entry_event`, so the two copies are the same event and the second is dropped as a
duplicate (same ``jseq``, same message id). Pure: no clock, no I/O (with a payload codec,
sealing a result or message draws a random nonce; the two copies then differ in their
ciphertext only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from stalwart._text import SEALED_TEXT_PREFIX, clip
from stalwart.checkpoints import (
    Finished,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    decode_value,
)
from stalwart.checkpoints._codec import payload_codec, seal_text, seal_value_text
from stalwart.messages import (
    EV_CANCELLED,
    EV_COMPLETED,
    EV_FAILED,
    EV_RESUMED,
    EV_STARTED,
    EV_STEP_COMPLETED,
    EV_STEP_FAILED,
    EV_STEP_INTENT,
    EV_STEP_RETRYING,
    EV_WAIT_STARTED,
    ErrorData,
    EventData,
    RunEndedData,
    RunEvent,
    RunResumedData,
    StepEndedData,
    StepIntentData,
    StepRetryingData,
    WaitStartedData,
    data_dict,
)

if TYPE_CHECKING:
    from stalwart.checkpoints import ErrorInfo, JournalEntry

__all__ = ["MAX_EVENT_RESULT", "entry_event", "step_started_data"]

MAX_EVENT_RESULT = 64 * 1024
"""Results up to this many encoded bytes travel in ``run.completed``; larger ones only in
the run record, so an event never exceeds the NATS payload limit."""


SEALED_EVENT_TEXT = 2048
"""With payload encryption, characters of an error message an event carries (sealed): an
encrypted text cannot be cut afterwards, so it is cut before (the journal has it whole)."""


def _error(info: ErrorInfo) -> ErrorData:
    message = info.message
    if payload_codec() is not None and not message.startswith(SEALED_TEXT_PREFIX):
        message = seal_text(clip(message, SEALED_EVENT_TEXT))
    return ErrorData(type=info.type, message=message)


def _ended(e: Finished) -> RunEndedData:
    size = len(e.result)
    error = _error(e.error) if e.error is not None else msgspec.UNSET
    if size == 0:
        return RunEndedData(error=error)
    # Encrypted (a sealed journal entry, or a codec is set): the event carries the
    # envelope as text, never the value; nothing is decrypted here.
    sealed = seal_value_text(bytes(e.result)) if size <= MAX_EVENT_RESULT else None
    if sealed is not None:
        return RunEndedData(result=sealed, error=error)
    if size <= MAX_EVENT_RESULT:
        try:
            return RunEndedData(result=decode_value(e.result), error=error)
        except Exception:  # too deep to decode here: the record has it
            pass
    return RunEndedData(result_bytes=size, error=error)  # read the record for the value


def step_started_data(kind: str, attempt: int) -> dict[str, Any]:
    """The data of ``step.started``: ``data_dict(StepStartedData(kind=..., attempt=...))``.

    Not a journal entry's event, but built here beside them. Spelled as a dict literal
    rather than through the struct: it is published for every live step attempt, and the
    struct round trip costs four times the literal (a unit test pins the two equal).
    """
    return {"kind": kind, "attempt": attempt}


def entry_event(
    run_id: str, je: JournalEntry, *, journaled_steps: int = 0, agent: str = ""
) -> RunEvent:
    """The event that announces journal entry ``je`` of run ``run_id`` (of ``agent``).

    ``journaled_steps`` is what a ``run.resumed`` reports: the steps the new owner replays.
    The event's ``at`` is the entry's own time (a step's end for ``step.completed`` /
    ``step.failed``), so a republished event says when it happened, not when it was resent.
    """
    e = je.entry
    step = ""
    data: EventData | None
    if type(e) is StepDone:
        # The event of nearly every journal entry: its data as the dict literal that
        # data_dict(StepEndedData(...)) gives (a unit test pins the two equal), unbuilt.
        return RunEvent(
            type=EV_STEP_COMPLETED,
            run_id=run_id,
            at=e.at + e.duration,
            worker=e.worker,
            epoch=e.epoch,
            jseq=je.seq,
            step=e.key,
            data={"kind": e.kind, "name": e.name, "duration": e.duration},
            agent=agent,
        )
    if isinstance(e, StepDone | StepError):
        type_ = EV_STEP_COMPLETED if isinstance(e, StepDone) else EV_STEP_FAILED
        step, at = e.key, e.at + e.duration
        error = _error(e.error) if isinstance(e, StepError) else msgspec.UNSET
        data = StepEndedData(kind=e.kind, name=e.name, duration=e.duration, error=error)
    elif isinstance(e, StepAttempt):
        type_, step, at = EV_STEP_RETRYING, e.key, e.at
        data = StepRetryingData(attempt=e.attempt, delay=e.delay, error=_error(e.error))
    elif isinstance(e, StepIntent):
        type_, step, at = EV_STEP_INTENT, e.key, e.at
        data = StepIntentData(attempt=e.attempt, name=e.name)
    elif isinstance(e, WaitStarted):
        type_, step, at = EV_WAIT_STARTED, e.key, e.at
        data = WaitStartedData(until=e.until, signal=e.signal)
    elif isinstance(e, Finished):
        type_ = {"completed": EV_COMPLETED, "failed": EV_FAILED}.get(e.status, EV_CANCELLED)
        at, data = e.at, _ended(e)
    else:  # Started
        type_, at = (EV_RESUMED, e.at) if e.resumed else (EV_STARTED, e.at)
        data = RunResumedData(journaled_steps=journaled_steps) if e.resumed else None
    return RunEvent(
        type=type_,
        run_id=run_id,
        at=at,
        worker=e.worker,
        epoch=e.epoch,
        jseq=je.seq,
        step=step,
        data=data_dict(data) if data is not None else None,
        agent=agent,
    )
