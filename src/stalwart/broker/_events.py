"""Publishing run events and reading a run's event stream (replay from the start, then live)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from stalwart.messages import TERMINAL_EVENTS, RunEvent, decode_event, encode_event

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.js import JetStreamContext

    from stalwart.broker._names import Names

log = structlog.get_logger("stalwart.events")

# Highest journal sequence whose event was published up to and including this message. A
# resumed actor reads it off the run's last event and republishes whatever came after, so a
# crash between a journal append and its event publish loses no event.
JSEQ_HEADER = "Stalwart-Jseq"


class EventPublisher:
    """Publishes run events without putting a round trip on the step path.

    Journaled events (``jseq > 0``) go through JetStream's async publish with a
    ``Nats-Msg-Id`` of ``<run_id>:j<jseq>``, so a republish after a resume is dropped as a
    duplicate; their acks are collected in the background. Live-only events (token
    deltas, ``step.started``) are plain publishes the stream captures. Both go over one
    connection, so a run's events are stored in the order they were published.
    """

    def __init__(self, nc: NATS, js: JetStreamContext, names: Names) -> None:
        self._nc = nc
        self._js = js
        self._names = names
        self._pending: set[asyncio.Future[object]] = set()
        self._published_jseq: dict[str, int] = {}

    async def publish(self, event: RunEvent) -> None:
        """Publish ``event`` on its run's subject."""
        subject = self._names.events_subject(event.run_id)
        top = max(self._published_jseq.get(event.run_id, 0), event.jseq)
        headers = {JSEQ_HEADER: str(top)}
        data = encode_event(event)
        if event.jseq:
            self._published_jseq[event.run_id] = top
            headers["Nats-Msg-Id"] = f"{event.run_id}:j{event.jseq}"
            fut = await self._js.publish_async(subject, data, headers=headers)
            self._pending.add(fut)
            fut.add_done_callback(self._settled)
        else:
            await self._nc.publish(subject, data, headers=headers)
        if event.type in TERMINAL_EVENTS:
            self._published_jseq.pop(event.run_id, None)

    async def publish_rejection(self, agent: str, event: RunEvent) -> None:
        """Publish a rejection of a request that has no usable run id."""
        await self._js.publish(self._names.rejected_subject(agent), encode_event(event))

    def _settled(self, fut: asyncio.Future[object]) -> None:
        self._pending.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("event.publish_failed", error=repr(fut.exception()))

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every journaled event published so far is acknowledged."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)

    async def last_published_jseq(self, run_id: str) -> int:
        """The highest journal sequence whose event is in the stream (0 when none)."""
        try:
            msg = await self._js.get_msg(
                self._names.events_stream, subject=self._names.events_subject(run_id)
            )
        except NotFoundError:
            return 0
        return int((msg.headers or {}).get(JSEQ_HEADER, "0"))

    def forget(self, run_id: str) -> None:
        """Drop per-run state once this process no longer hosts the run."""
        self._published_jseq.pop(run_id, None)


async def _last_stream_seq(js: JetStreamContext, names: Names, run_id: str) -> int:
    try:
        msg = await js.get_msg(names.events_stream, subject=names.events_subject(run_id))
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


async def subscribe_events(
    js: JetStreamContext, names: Names, run_id: str, *, follow: bool = True
) -> AsyncIterator[RunEvent]:
    """Yield a run's events from the first one, in order.

    With ``follow`` the iterator keeps going live and ends after the run's terminal event;
    without it, it ends at the event that was last when it started.
    """
    stop_at = 0 if follow else await _last_stream_seq(js, names, run_id)
    if not follow and stop_at == 0:
        return
    sub = await js.subscribe(
        names.events_subject(run_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        async for msg in sub.messages:
            event = decode_event(msg.data)
            yield event
            if follow and event.type in TERMINAL_EVENTS:
                return
            if not follow and msg.metadata.sequence.stream >= stop_at:
                return
    finally:
        await sub.unsubscribe()
