"""A run's events, published best effort (a journal entry's event is built by
:func:`stalwart._journal_events.entry_event`, the one place that builds it)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from stalwart._journal_events import entry_event
from stalwart.checkpoints import encode_value, payload_codec
from stalwart.checkpoints._codec import seal_value_text
from stalwart.messages import RunEvent

if TYPE_CHECKING:
    import structlog

    from stalwart.actors._rules import RunState
    from stalwart.broker import Broker
    from stalwart.checkpoints import JournalEntry


class RunEvents:
    """The :class:`~stalwart.actors._ports.EventSink` of a live run: its NATS event stream."""

    def __init__(
        self,
        broker: Broker,
        state: RunState,
        log: structlog.typing.FilteringBoundLogger,
        *,
        agent: str,
    ) -> None:
        self._agent = agent
        self._broker = broker
        self._state = state
        self._log = log

    def event(self, type: str, *, step: str = "", data: Any = None, attempt: int = 0) -> RunEvent:
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
            agent=self._agent,
            attempt=attempt,
        )

    async def publish(self, event: RunEvent) -> None:
        """Publish ``event``; a failure is logged, never raised."""
        try:
            await self._broker.events.publish(event)
        except Exception as exc:  # events are best effort; the journal is the truth
            self._log.warning("event.publish_failed", type=event.type, error=repr(exc))

    # emit and journaled queue directly rather than through publish(): they run several
    # times per step, and a coroutine level costs more than these few repeated lines.

    def emit(self, type: str, *, step: str = "", data: Any = None, attempt: int = 0) -> None:
        """Queue a non-journaled event of the run (sent with the next batch)."""
        state = self._state  # self.event(...) spelled out: several times per step
        event = RunEvent(
            type=type,
            run_id=state.run_id,
            at=time.time(),
            worker=state.worker_id,
            epoch=state.epoch,
            step=step,
            data=data,
            agent=self._agent,
            attempt=attempt,
        )
        try:
            self._broker.events.queue(event)
        except Exception as exc:
            self._log.warning("event.publish_failed", type=event.type, error=repr(exc))

    async def emit_user(
        self, type: str, *, step: str = "", data: Any = None, attempt: int = 0
    ) -> None:
        """Publish an event agent code emitted (``ctx.emit``): its data is the agent's, so
        with a payload codec it is sealed whole (an encrypted text in place of ``data``)."""
        if data is not None and payload_codec() is not None:
            try:
                data = seal_value_text(bytes(encode_value(data)))
            except Exception:  # not msgpack-encodable: never send it in the clear instead
                data = "<event data could not be encrypted>"
        self.emit(type, step=step, data=data, attempt=attempt)

    def journaled(self, je: JournalEntry) -> None:
        """Queue the event of journal entry ``je`` (sent with the next batch)."""
        state = self._state
        event = entry_event(
            state.run_id, je, journaled_steps=len(state.view.done), agent=self._agent
        )
        try:
            self._broker.events.queue(event)
        except Exception as exc:
            self._log.warning("event.publish_failed", type=event.type, error=repr(exc))
