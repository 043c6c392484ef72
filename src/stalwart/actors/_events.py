"""A run's events: built from its journal entries by pure functions, published best effort."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from stalwart.checkpoints import (
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    decode_value,
)
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
    RunEvent,
)

if TYPE_CHECKING:
    import structlog

    from stalwart.actors._rules import RunState
    from stalwart.broker import Broker
    from stalwart.checkpoints import JournalEntry

# Results up to this size travel in the run.completed event; larger ones only in the record,
# so an event never exceeds the NATS payload limit.
_MAX_EVENT_RESULT = 64 * 1024


def journal_event(run_id: str, je: JournalEntry, journaled_steps: int) -> RunEvent:
    """The event that tells of journal entry ``je`` (``journaled_steps``: for a resume)."""
    e = je.entry
    if isinstance(e, Started):
        return RunEvent(
            type=EV_RESUMED if e.resumed else EV_STARTED,
            run_id=run_id,
            at=e.at,
            worker=e.worker,
            epoch=e.epoch,
            jseq=je.seq,
            data={"journaled_steps": journaled_steps} if e.resumed else None,
        )
    if isinstance(e, StepDone | StepError):
        data: dict[str, Any] = {"kind": e.kind, "name": e.name, "duration": e.duration}
        if isinstance(e, StepError):
            data["error"] = {"type": e.error.type, "message": e.error.message}
        return RunEvent(
            type=EV_STEP_COMPLETED if isinstance(e, StepDone) else EV_STEP_FAILED,
            run_id=run_id,
            at=e.at + e.duration,
            worker=e.worker,
            epoch=e.epoch,
            jseq=je.seq,
            step=e.key,
            data=data,
        )
    if isinstance(e, StepAttempt | StepIntent | WaitStarted):
        return _progress_event(run_id, je.seq, e)
    status_event = {"completed": EV_COMPLETED, "failed": EV_FAILED}.get(e.status, EV_CANCELLED)
    fin: dict[str, Any] = {}
    if len(e.result) > _MAX_EVENT_RESULT:
        fin["result_bytes"] = len(e.result)  # too big for an event: read the record
    elif len(e.result):
        try:
            fin["result"] = decode_value(e.result)
        except Exception:  # too deep to decode here: the record has it
            fin["result_bytes"] = len(e.result)
    if e.error is not None:
        fin["error"] = {"type": e.error.type, "message": e.error.message}
    return RunEvent(
        type=status_event,
        run_id=run_id,
        at=e.at,
        worker=e.worker,
        epoch=e.epoch,
        jseq=je.seq,
        data=fin,
    )


def _progress_event(run_id: str, jseq: int, e: StepAttempt | StepIntent | WaitStarted) -> RunEvent:
    if isinstance(e, StepAttempt):
        type_ = EV_STEP_RETRYING
        data: dict[str, Any] = {
            "attempt": e.attempt,
            "delay": e.delay,
            "error": {"type": e.error.type, "message": e.error.message},
        }
    elif isinstance(e, StepIntent):
        type_, data = EV_STEP_INTENT, {"attempt": e.attempt, "name": e.name}
    else:
        type_, data = EV_WAIT_STARTED, {"until": e.until, "signal": e.signal}
    return RunEvent(
        type=type_,
        run_id=run_id,
        at=e.at,
        worker=e.worker,
        epoch=e.epoch,
        jseq=jseq,
        step=e.key,
        data=data,
    )


class RunEvents:
    """The :class:`~stalwart.actors._ports.EventSink` of a live run: its NATS event stream."""

    def __init__(
        self, broker: Broker, state: RunState, log: structlog.typing.FilteringBoundLogger
    ) -> None:
        self._broker = broker
        self._state = state
        self._log = log

    def event(self, type: str, *, step: str = "", data: Any = None) -> RunEvent:
        """A non-journaled event of the run, stamped now."""
        state = self._state
        return RunEvent(
            type=type,
            run_id=state.run_id,
            at=time.time(),
            worker=state.worker_id,
            epoch=state.epoch,
            step=step,
            data=data,
        )

    async def publish(self, event: RunEvent) -> None:
        """Publish ``event``; a failure is logged, never raised."""
        try:
            await self._broker.events.publish(event)
        except Exception as exc:  # events are best effort; the journal is the truth
            self._log.warning("event.publish_failed", type=event.type, error=repr(exc))

    # emit and journaled publish directly rather than through publish(): they run several
    # times per step, and a coroutine level costs more than these few repeated lines.

    async def emit(self, type: str, *, step: str = "", data: Any = None) -> None:
        """Publish a non-journaled event of the run."""
        event = self.event(type, step=step, data=data)
        try:
            await self._broker.events.publish(event)
        except Exception as exc:
            self._log.warning("event.publish_failed", type=event.type, error=repr(exc))

    async def journaled(self, je: JournalEntry) -> None:
        """Publish the event of journal entry ``je``."""
        event = journal_event(self._state.run_id, je, len(self._state.view.done))
        try:
            await self._broker.events.publish(event)
        except Exception as exc:
            self._log.warning("event.publish_failed", type=event.type, error=repr(exc))
