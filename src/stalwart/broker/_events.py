"""Publishing run events and reading a run's event stream (replay from the start, then live)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import structlog
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from stalwart._text import SEALED_TEXT_PREFIX, clip, safe_text
from stalwart.broker._wire import hand_to_connection, hpub_command, reply_inbox
from stalwart.messages import (
    EV_STEP_COMPLETED,
    EV_STEP_FAILED,
    EV_STEP_RESET,
    EV_STEP_STARTED,
    TERMINAL_EVENTS,
    RunEvent,
    encode_event,
    read_event,
)
from stalwart.telemetry import inject_headers
from stalwart.telemetry._tracing import tracing_active

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import RawStreamMsg

    from stalwart.broker._names import EventSource, Names

log = structlog.get_logger("stalwart.events")

# Highest journal sequence whose event was published up to and including this message. A
# resumed actor reads it off the run's last event and republishes whatever came after, so a
# crash between a journal append and its event publish loses no event.
JSEQ_HEADER = "Stalwart-Jseq"

_STEP_ENDS = frozenset({EV_STEP_COMPLETED, EV_STEP_FAILED})

_HEADER_ROOM = 4096
_SUBJECTS_MAX = 8192
"""Bytes of a message's payload budget left for its headers (msg id, jseq, trace context)."""
_MAX_DATA_DEPTH = 32
"""Nesting kept when an event's data is cut down; deeper values are replaced by a marker."""


def _clip_value(value: Any, limit: int, depth: int = 0) -> Any:
    """``value`` with every string (keys too) cut to ``limit`` characters, except encrypted
    payloads: a cut one could never be decrypted (the event size bound still applies)."""
    if isinstance(value, str):
        return value if value.startswith(SEALED_TEXT_PREFIX) else clip(value, limit)
    if depth >= _MAX_DATA_DEPTH:
        return "<nested too deeply for an event>"
    if isinstance(value, dict):
        return {
            clip(safe_text(k), limit): _clip_value(v, limit, depth + 1) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clip_value(v, limit, depth + 1) for v in value]
    return value


def bounded_event(event: RunEvent, text_limit: int, max_bytes: int) -> bytes:
    """``event`` encoded so that it always fits in ``max_bytes``.

    Strings longer than ``text_limit`` (error messages, cancel reasons, step keys, worker
    ids, emitted data) are cut; a ``result`` is kept whole or, when the event would not
    fit, replaced by its size; what still does not fit (or cannot be encoded at all) is
    replaced by a marker, keeping the event's type, run, epoch and journal sequence. The
    full texts stay in the journal and the run record; events only announce.
    """
    try:
        data = encode_event(event)
    except Exception:  # data that cannot be encoded (too deep, odd types): cut it down
        data = b""
    if data and len(data) <= min(text_limit, max_bytes):
        return data  # the common case: no string in it can be over the limit
    limit = max(min(text_limit, max_bytes // 4), 16)
    payload = event.data
    result = payload.get("result", None) if isinstance(payload, dict) else None
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "result"}
    cut = msgspec.structs.replace(
        event,
        type=clip(event.type, 64),
        step=clip(event.step, limit),
        worker=clip(event.worker, limit),
        data=_clip_value(payload, limit),
    )
    if result is not None and isinstance(cut.data, dict):
        try:
            whole = encode_event(msgspec.structs.replace(cut, data={**cut.data, "result": result}))
            if len(whole) <= max_bytes:
                return whole
        except Exception:
            pass
        cut = msgspec.structs.replace(cut, data={**cut.data, "result_omitted": True})
    try:
        data = encode_event(cut)
        if len(data) <= max_bytes:
            return data
    except Exception:
        pass
    marker = RunEvent(
        type=cut.type,
        run_id=event.run_id,
        at=event.at,
        worker=clip(cut.worker, 64),
        epoch=event.epoch,
        jseq=event.jseq,
        step=clip(cut.step, 64),
        agent=event.agent,
        data={"truncated": "event data too large or not encodable; see the run's journal"},
    )
    return encode_event(marker)


class _Queued(NamedTuple):
    """An event waiting in the batch, with what :meth:`EventPublisher.publish` decided."""

    event: RunEvent
    subject: str
    top: int
    """The ``Stalwart-Jseq`` header: the highest journal sequence published with it."""
    reply: str
    trace: dict[str, str] | None
    """Trace context headers of the publisher (tracing on), else None."""
    queued: float
    """When it was queued (monotonic): a ``step.started`` is held until ``START_HOLD``."""


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
    Live-only events (token deltas, ``step.started``) are plain publishes. A
    ``step.started`` is held back for up to ``START_HOLD``: if the step's
    ``step.completed`` (or ``step.failed``) is queued meanwhile, the start is not sent (nor
    even encoded), so a step quicker than that shows up as its end alone, which halves the
    messages of runs made of quick steps. A start right after its step's ``step.reset`` (a
    retry, a step run again after a failover) is not held: it goes with the next batch. Any other event of the run queued after the start
    (a token delta the step streams, a wait) releases it first, so a run's events still
    reach the stream in the order they were published.
    """

    ACK_INTERVAL = 0.1
    """Seconds between sampled acks of ordinary journaled events."""
    BATCH_DELAY = 0.002
    """Seconds a queued event waits for company before the batch goes to the connection."""
    START_HOLD = 0.05
    """Seconds a ``step.started`` waits for its step's end before it is sent after all: a
    watcher learns of a longer step that late, and of a quicker one only by its end."""

    def __init__(
        self, nc: NATS, js: JetStreamContext, names: Names, *, text_limit: int = 4096
    ) -> None:
        self._nc = nc
        self._text_limit = text_limit
        self._js = js
        self._names = names
        self._published_jseq: dict[str, int] = {}
        self._unacked: dict[str, tuple[str, int]] = {}
        self._acked = asyncio.Event()
        self._acked.set()
        self._reply_prefix = ""
        self._next = 0
        self._next_ack_at = 0.0
        self._batch: list[_Queued | None] = []
        self._started: dict[tuple[str, str], int] = {}
        """Queued ``step.started`` events by (run, step): their place in the batch."""
        self._subjects: dict[tuple[str, str, str], str] = {}
        """Events subjects by (run, agent, source)."""
        self._holding: dict[str, int] = {}
        """Runs with queued ``step.started`` events: how many each."""
        self._batch_due = 0.0
        self._reset_step: tuple[str, str] | None = None
        """(run, step) of the ``step.reset`` just queued: the start that follows is not held."""
        self._batch_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def ready(self) -> None:
        """Subscribe to this publisher's ack replies, once: :meth:`queue` samples acks only
        after this (a live run calls it before its first event)."""
        await self._ensure_reply_sub()

    async def _ensure_reply_sub(self) -> None:
        if not self._reply_prefix:
            self._reply_prefix = await reply_inbox(self._nc, self._on_ack)

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

    async def publish(
        self, event: RunEvent, *, acked: bool = False, source: EventSource = "sys"
    ) -> None:
        """Queue ``event`` for its run's subject (see the class docstring).

        ``acked`` sends it now and waits until the stream has stored it: for events
        published by clients, which must be in the stream before the request they
        announce is published.
        """
        if acked:
            event, subject = self._addressed(event, source)
            top = max(self._published_jseq.get(event.run_id, 0), event.jseq)
            # Subscribers can join the trace of the step or run that published the event.
            headers = inject_headers({JSEQ_HEADER: str(top)})
            await self.send_queued()
            await self._js.publish(subject, self.encode(event), headers=headers)
            return
        await self._ensure_reply_sub()
        self.queue(event, source)

    def queue(self, event: RunEvent, source: EventSource = "sys") -> None:
        """:meth:`publish` without ``acked``, as a plain call: a run's own events go this way
        (several per step; a coroutine each would cost more than the queueing). Acks are
        sampled only once :meth:`ready` has subscribed to them."""
        event, subject = self._addressed(event, source)
        run_id = event.run_id
        top = self._published_jseq.get(run_id, 0)
        reply = ""
        now = time.monotonic()
        jseq = event.jseq
        if jseq:
            if jseq > top:
                top = self._published_jseq[run_id] = jseq
            terminal = event.type in TERMINAL_EVENTS
            if self._reply_prefix and (
                terminal or (not self._unacked and now >= self._next_ack_at)
            ):
                self._next_ack_at = now + self.ACK_INTERVAL
                self._next += 1
                token = str(self._next)
                self._unacked[token] = (run_id, jseq)
                self._acked.clear()
                reply = self._reply_prefix + token
            if terminal:
                self._published_jseq.pop(run_id, None)
        queued = self._order(event, now)
        # Encoded when the batch leaves, so a dropped step.started is never encoded; the
        # trace context is the publisher's now, so it is taken now (when tracing is on).
        trace = (inject_headers({}) or None) if tracing_active() else None
        self._batch.append(_Queued(event, subject, top, reply, trace, queued))
        if self._batch_task is None or self._batch_due > now + self.BATCH_DELAY:
            self._schedule(now, self.BATCH_DELAY)

    def _addressed(self, event: RunEvent, source: EventSource) -> tuple[RunEvent, str]:
        """``event`` as it is published (no stream position: that is the reader's to fill
        in) and the run's events subject it goes to."""
        if event.seq:
            event = msgspec.structs.replace(event, seq=0)
        subject = self._subjects.get((event.run_id, event.agent, source))
        return event, subject or self._subject(event, source)

    def _subject(self, event: RunEvent, source: EventSource) -> str:
        """The run's events subject, remembered: building it matches the agent name against
        a pattern, once per run rather than per event."""
        if len(self._subjects) >= _SUBJECTS_MAX:
            self._subjects.clear()
        subject = self._names.events_subject(event.run_id, source, agent=event.agent)
        self._subjects[(event.run_id, event.agent, source)] = subject
        return subject

    def _order(self, event: RunEvent, now: float) -> float:
        """Hold, drop or release queued starts for ``event`` (see the class docstring);
        returns when ``event`` counts as queued (a start after a reset: long ago)."""
        queued = now
        if event.type == EV_STEP_STARTED:
            self._hold(event.run_id, event.step, len(self._batch))
            if self._reset_step == (event.run_id, event.step):
                # A retry, or a step run again after a failover: watchers learn of it with
                # the next batch (still dropped if the step ends before that batch leaves).
                queued = -self.START_HOLD
        elif event.run_id in self._holding:
            if event.type in _STEP_ENDS:
                # The step ended before its start left: the end says both.
                i = self._unhold(event.run_id, event.step)
                if i is not None:
                    self._batch[i] = None
            if event.run_id in self._holding:
                self._release(event.run_id)
        self._reset_step = (event.run_id, event.step) if event.type == EV_STEP_RESET else None
        return queued

    def _hold(self, run_id: str, step: str, index: int) -> None:
        self._started[(run_id, step)] = index
        self._holding[run_id] = self._holding.get(run_id, 0) + 1

    def _unhold(self, run_id: str, step: str) -> int | None:
        i = self._started.pop((run_id, step), None)
        if i is not None:
            left = self._holding[run_id] - 1
            if left:
                self._holding[run_id] = left
            else:
                del self._holding[run_id]
        return i

    def _release(self, run_id: str) -> None:
        """Send the run's queued starts with the next batch: a later event of the run
        (other than their steps' ends) must not reach the stream before them."""
        del self._holding[run_id]
        for key in [k for k in self._started if k[0] == run_id]:
            i = self._started.pop(key)
            item = self._batch[i]
            if item is not None:
                self._batch[i] = item._replace(queued=-self.START_HOLD)

    def _schedule(self, now: float, delay: float) -> None:
        """Send the batch ``delay`` from ``now`` (instead of later, if a send was due then)."""
        if self._batch_task is not None:
            self._batch_task.cancel()
        self._batch_due = now + delay
        self._batch_task = asyncio.get_running_loop().create_task(self._send_later(delay))

    async def _send_later(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            return  # replaced by an earlier send (see _schedule), or the publisher closed
        self._batch_task = None
        await self.send_queued(hold=True)

    async def send_queued(self, *, hold: bool = False) -> None:
        """Hand every queued event to the connection now (before a message that must follow).

        With ``hold`` (the batch timer), a ``step.started`` younger than ``START_HOLD`` stays
        queued for the next batch (see the class docstring).
        """
        async with self._send_lock:  # a batch that suspends must not be overtaken
            batch, self._batch = self._batch, []
            self._started.clear()
            self._holding.clear()
            now = time.monotonic()
            if hold:  # before any await, so what is published meanwhile queues behind them
                batch = self._keep_young_starts(batch, now)
            nc = self._nc
            fast = nc.is_connected and not nc.is_draining_pubs
            wire: list[bytes] = []  # HPUB commands built here, sent together, in order
            for item in batch:
                if item is None:
                    continue
                event, subject, top, reply, trace, _ = item
                data = self.encode(event)
                cmd = hpub_command(subject, reply, top, event, data) if fast and not trace else b""
                if cmd:
                    wire.append(cmd)
                    continue
                headers = {JSEQ_HEADER: str(top)}
                if event.jseq:
                    headers["Nats-Msg-Id"] = f"{event.run_id}:j{event.jseq}"
                if trace:
                    headers.update(trace)
                if wire:  # what came before goes first
                    await self._send_wire(wire)
                    wire = []
                try:
                    await nc.publish(subject, data, reply=reply, headers=headers)
                except Exception as exc:  # best effort: the journal is the truth
                    log.warning("event.publish_failed", subject=subject, error=repr(exc))
            if wire:
                await self._send_wire(wire)
            if self._batch and self._batch_task is None:
                # Held starts (and whatever was queued while this batch suspended).
                oldest = min((item.queued for item in self._batch if item), default=now)
                self._schedule(now, max(oldest + self.START_HOLD - now, self.BATCH_DELAY))

    def _keep_young_starts(self, batch: list[_Queued | None], now: float) -> list[_Queued | None]:
        """Requeue the ``step.started`` events younger than ``START_HOLD``; the rest to send.

        Nothing of a held start's run follows it in ``batch`` (that would have released
        it), so it may wait at the head of the next batch without reordering its run.
        """
        out: list[_Queued | None] = []
        for item in batch:
            if item is None:
                continue
            event = item.event
            if event.type == EV_STEP_STARTED and now - item.queued < self.START_HOLD:
                self._hold(event.run_id, event.step, len(self._batch))
                self._batch.append(item)
            else:
                out.append(item)
        return out

    async def _send_wire(self, wire: list[bytes]) -> None:
        """Queue prebuilt HPUB commands on the connection as one write (see
        :func:`hpub_command`): nats-py's ``publish`` would validate and build each again."""
        try:
            await hand_to_connection(self._nc, wire)
        except Exception as exc:  # best effort: the journal is the truth
            log.warning("event.publish_failed", events=len(wire), error=repr(exc))

    def encode(self, event: RunEvent) -> bytes:
        """``event`` encoded within the text limit and the server's payload limit."""
        budget = max(self._nc.max_payload - _HEADER_ROOM, 1024)
        return bounded_event(event, self._text_limit, budget)

    async def publish_rejection(self, agent: str, event: RunEvent) -> None:
        """Publish a rejection of a request that concerns no run (see ``Worker._reject``)."""
        await self._js.publish(self._names.rejected_subject(agent), self.encode(event))

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
        names = self._names
        msg = await _last_msg(self._js, names, [_sys(names.run_events(run_id))])
        if msg is None:  # none since the agent token: a run in flight over the upgrade
            msg = await _last_msg(self._js, names, [_sys(names.legacy_run_events(run_id))])
        if msg is None:
            return 0
        raw = (msg.headers or {}).get(JSEQ_HEADER, "0")
        try:
            jseq = int(raw)
        except (TypeError, ValueError):
            jseq = -1
        if jseq < 0:
            # Not ours (anyone may publish on the subject): republish every journaled event;
            # the stream drops those it still has by their message ids.
            log.warning("event.bad_jseq_header", run_id=run_id, header=clip(safe_text(raw), 80))
            return 0
        return jseq

    def forget(self, run_id: str) -> None:
        """Drop per-run state once this process no longer hosts the run."""
        self._published_jseq.pop(run_id, None)


def _sys(run_filter: str) -> str:
    """The workers' (``sys``) subject within a run's events filter."""
    return run_filter.removesuffix("*") + "sys"


def _run_filters(names: Names, run_id: str) -> list[str]:
    """Both layouts of a run's events: since the agent token, and before it."""
    return [names.run_events(run_id), names.legacy_run_events(run_id)]


async def _last_msg(js: JetStreamContext, names: Names, subjects: list[str]) -> RawStreamMsg | None:
    """The newest stored message on any of ``subjects`` (one direct get each), or None."""
    newest: RawStreamMsg | None = None
    for subject in subjects:
        try:
            msg = await js.get_msg(names.events_stream, subject=subject)
        except NotFoundError:
            continue
        if newest is None or int(msg.seq or 0) > int(newest.seq or 0):
            newest = msg
    return newest


async def last_event(js: JetStreamContext, names: Names, run_id: str) -> RunEvent | None:
    """The run's newest stored event (a direct get per subject layout), or None."""
    msg = await _last_msg(js, names, _run_filters(names, run_id))
    if msg is None:
        return None
    return read_event(msg.data, msg.subject or "", int(msg.seq or 0))


async def _last_stream_seq(js: JetStreamContext, names: Names, run_id: str) -> int:
    msg = await _last_msg(js, names, _run_filters(names, run_id))
    return 0 if msg is None else int(msg.seq or 0)


async def _next_msg(
    js: JetStreamContext, names: Names, subject: str, cursor: int
) -> RawStreamMsg | None:
    try:
        return await js.get_msg(names.events_stream, seq=cursor, subject=subject, next=True)
    except NotFoundError:
        return None


async def stored_events(js: JetStreamContext, names: Names, run_id: str) -> AsyncIterator[RunEvent]:
    """Yield the events stored for a run now, oldest first, each with its ``seq``, then stop.

    One direct get per event (``next_by_subj``): no consumer to create, nothing that can
    stall, every request bounded by the client's timeout. Events of both subject layouts
    (before and since the agent token) are merged in stream order.
    """
    stop_at = await _last_stream_seq(js, names, run_id)
    if stop_at <= 0:
        return
    heads: dict[str, RawStreamMsg | None] = {}
    for subject in _run_filters(names, run_id):
        heads[subject] = await _next_msg(js, names, subject, 1)
    while True:
        live = [(int(m.seq or 0), s, m) for s, m in heads.items() if m is not None]
        if not live:
            return
        seq, subject, msg = min(live, key=lambda t: t[0])
        if seq <= 0 or seq > stop_at:
            return
        event = read_event(msg.data, msg.subject or "", seq)
        if event is not None and event.run_id == run_id:
            yield event
        heads[subject] = await _next_msg(js, names, subject, seq + 1)


async def subscribe_events(
    js: JetStreamContext,
    names: Names,
    run_id: str,
    *,
    follow: bool = True,
    ends: Callable[[RunEvent], Awaitable[bool]] | None = None,
) -> AsyncIterator[RunEvent]:
    """Yield a run's events from the first one, in order.

    With ``follow`` the iterator keeps going live and ends after the run's terminal event
    (one for which ``ends`` says yes, when given: a reader that can check the run record
    does not take an event's word for the run's end); without it, it ends at the event that
    was last when it started. Messages that are not events of this run are skipped.
    """
    if not follow:
        async for stored in stored_events(js, names, run_id):
            yield stored
        return
    # The stream named: else nats-py asks for every stream name of the account (a right
    # least-privilege roles do not have, and other tenants' names). Both subject layouts:
    # a run stored before the agent token still replays.
    sub = await js.subscribe(
        "",
        stream=names.events_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(filter_subjects=_run_filters(names, run_id)),
    )
    try:
        async for msg in sub.messages:
            live = read_event(msg.data, msg.subject, msg.metadata.sequence.stream)
            if live is None or live.run_id != run_id:
                continue
            yield live
            if live.type in TERMINAL_EVENTS and (ends is None or await ends(live)):
                return
    finally:
        await sub.unsubscribe()
