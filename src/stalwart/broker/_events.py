"""Publishing run events and reading a run's event stream (replay from the start, then live)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING

import structlog
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from stalwart.messages import (
    EV_STEP_COMPLETED,
    EV_STEP_FAILED,
    EV_STEP_STARTED,
    TERMINAL_EVENTS,
    RunEvent,
    decode_event,
    encode_event,
)
from stalwart.observability._tracing import inject_headers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from stalwart.broker._names import Names

log = structlog.get_logger("stalwart.events")

# Highest journal sequence whose event was published up to and including this message. A
# resumed actor reads it off the run's last event and republishes whatever came after, so a
# crash between a journal append and its event publish loses no event.
JSEQ_HEADER = "Stalwart-Jseq"

_STEP_ENDS = frozenset({EV_STEP_COMPLETED, EV_STEP_FAILED})


class EventPublisher:
    """Publishes run events without putting a round trip, or a socket write, on the step path.

    Events are queued in the order :meth:`publish` is called and handed to the connection
    together ``BATCH_DELAY`` after the first of a batch, so a run stepping quickly costs
    the NATS connection one write per batch instead of one per event, and a run's events
    are stored in order. Journaled events (``jseq > 0``) carry
    ``Nats-Msg-Id: <run_id>:j<jseq>``, so a republish after a resume is dropped as a
    duplicate. Acks are sampled, not awaited: a run's terminal event and at most one other
    journaled event per ``ACK_INTERVAL`` ask for a JetStream ack on a reply subject this
    publisher owns, so a stream that refuses events is logged without a reply message per
    step. (nats-py's own ``publish_async`` is not used: in 2.16 a rejected publish never
    resolves its future.) No event needs its ack for correctness: the journal is the
    truth, and a resumed actor republishes what the stream lacks (``Stalwart-Jseq``).
    Live-only events (token deltas, ``step.started``) are plain publishes, and a
    ``step.started`` whose ``step.completed`` (or ``step.failed``) is queued before the
    batch leaves is not sent at all: a step that took under ``BATCH_DELAY`` shows up as
    its end alone, which halves the messages of runs made of quick steps.
    """

    ACK_INTERVAL = 0.1
    """Seconds between sampled acks of ordinary journaled events."""
    BATCH_DELAY = 0.002
    """Seconds a queued event waits for company before the batch goes to the connection."""

    def __init__(self, nc: NATS, js: JetStreamContext, names: Names) -> None:
        self._nc = nc
        self._js = js
        self._names = names
        self._published_jseq: dict[str, int] = {}
        self._unacked: dict[str, tuple[str, int]] = {}
        self._acked = asyncio.Event()
        self._acked.set()
        self._reply_prefix = ""
        self._next = 0
        self._next_ack_at = 0.0
        self._batch: list[tuple[str, bytes, dict[str, str], str] | None] = []
        self._started: dict[tuple[str, str], int] = {}
        """Queued ``step.started`` events by (run, step): their place in the batch."""
        self._batch_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def _ensure_reply_sub(self) -> None:
        if not self._reply_prefix:
            prefix = f"{self._nc.new_inbox()}."
            await self._nc.subscribe(prefix + "*", cb=self._on_ack)
            self._reply_prefix = prefix

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._reply_prefix) :]
        pending = self._unacked.pop(token, None)
        if not self._unacked:
            self._acked.set()
        if pending is None:
            return
        try:
            reply = json.loads(msg.data or b"{}")
        except ValueError:
            reply = {"error": {"description": f"unreadable ack {msg.data[:80]!r}"}}
        if "error" in reply:
            run_id, jseq = pending
            log.warning("event.publish_failed", run_id=run_id, jseq=jseq, error=reply["error"])

    async def publish(self, event: RunEvent, *, acked: bool = False) -> None:
        """Queue ``event`` for its run's subject (see the class docstring).

        ``acked`` sends it now and waits until the stream has stored it: for events
        published by clients, which must be in the stream before the request they
        announce is published.
        """
        subject = self._names.events_subject(event.run_id)
        top = max(self._published_jseq.get(event.run_id, 0), event.jseq)
        # Subscribers can join the trace of the step or run that published the event.
        headers = inject_headers({JSEQ_HEADER: str(top)})
        data = encode_event(event)
        if acked:
            await self.send_queued()
            await self._js.publish(subject, data, headers=headers)
            return
        reply = ""
        if event.jseq:
            self._published_jseq[event.run_id] = top
            headers["Nats-Msg-Id"] = f"{event.run_id}:j{event.jseq}"
            terminal = event.type in TERMINAL_EVENTS
            now = time.monotonic()
            if terminal or (not self._unacked and now >= self._next_ack_at):
                self._next_ack_at = now + self.ACK_INTERVAL
                await self._ensure_reply_sub()
                self._next += 1
                token = str(self._next)
                self._unacked[token] = (event.run_id, event.jseq)
                self._acked.clear()
                reply = self._reply_prefix + token
            if terminal:
                self._published_jseq.pop(event.run_id, None)
        if event.type == EV_STEP_STARTED:
            self._started[(event.run_id, event.step)] = len(self._batch)
        elif event.type in _STEP_ENDS:
            # The step ended before its start left: the end says both (see class docstring).
            i = self._started.pop((event.run_id, event.step), None)
            if i is not None:
                self._batch[i] = None
        self._batch.append((subject, data, headers, reply))
        if self._batch_task is None:
            self._batch_task = asyncio.get_running_loop().create_task(self._send_later())

    async def _send_later(self) -> None:
        try:
            await asyncio.sleep(self.BATCH_DELAY)
        finally:
            self._batch_task = None
        await self.send_queued()

    async def send_queued(self) -> None:
        """Hand every queued event to the connection now (before a message that must follow)."""
        async with self._send_lock:  # a batch that suspends must not be overtaken
            batch, self._batch = self._batch, []
            self._started.clear()
            for item in batch:
                if item is None:
                    continue
                subject, data, headers, reply = item
                try:
                    await self._nc.publish(subject, data, reply=reply, headers=headers)
                except Exception as exc:  # best effort: the journal is the truth
                    log.warning("event.publish_failed", subject=subject, error=repr(exc))

    async def publish_rejection(self, agent: str, event: RunEvent) -> None:
        """Publish a rejection of a request that has no usable run id."""
        await self._js.publish(self._names.rejected_subject(agent), encode_event(event))

    @property
    def unacked(self) -> int:
        """Journaled events published but not yet acknowledged by the stream."""
        return len(self._unacked)

    async def flush(self, timeout: float = 5.0) -> None:
        """Send what is queued, then wait until every sampled ack asked for so far is in."""
        if self._batch_task is not None:
            self._batch_task.cancel()
            self._batch_task = None
        await self.send_queued()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._acked.wait(), timeout)

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


async def last_event(js: JetStreamContext, names: Names, run_id: str) -> RunEvent | None:
    """The run's newest stored event (one direct get), or None when it has none."""
    try:
        msg = await js.get_msg(names.events_stream, subject=names.events_subject(run_id))
    except NotFoundError:
        return None
    return decode_event(msg.data or b"")


async def _last_stream_seq(js: JetStreamContext, names: Names, run_id: str) -> int:
    try:
        msg = await js.get_msg(names.events_stream, subject=names.events_subject(run_id))
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


async def stored_events(js: JetStreamContext, names: Names, run_id: str) -> AsyncIterator[RunEvent]:
    """Yield the events stored for a run now, oldest first, then stop.

    One direct get per event (``next_by_subj``): no consumer to create, nothing that can
    stall, every request bounded by the client's timeout.
    """
    stop_at = await _last_stream_seq(js, names, run_id)
    subject = names.events_subject(run_id)
    cursor = 1
    while 0 < cursor <= stop_at:
        try:
            msg = await js.get_msg(names.events_stream, seq=cursor, subject=subject, next=True)
        except NotFoundError:
            return
        seq = int(msg.seq or 0)
        if seq == 0 or seq > stop_at:
            return
        yield decode_event(msg.data or b"")
        cursor = seq + 1


async def subscribe_events(
    js: JetStreamContext, names: Names, run_id: str, *, follow: bool = True
) -> AsyncIterator[RunEvent]:
    """Yield a run's events from the first one, in order.

    With ``follow`` the iterator keeps going live and ends after the run's terminal event;
    without it, it ends at the event that was last when it started.
    """
    if not follow:
        async for event in stored_events(js, names, run_id):
            yield event
        return
    sub = await js.subscribe(
        names.events_subject(run_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        async for msg in sub.messages:
            event = decode_event(msg.data)
            yield event
            if event.type in TERMINAL_EVENTS:
                return
    finally:
        await sub.unsubscribe()
