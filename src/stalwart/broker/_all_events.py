"""Every run's events (or one agent's), in stream order, from a stream position on."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from stalwart._ids import check_agent_name
from stalwart.broker._events import PENDING_EVENT_BYTES, PENDING_EVENTS
from stalwart.messages import read_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

    from stalwart.broker._names import Names
    from stalwart.messages import RunEvent

_QUIET = 2.0
"""Seconds without a message after which a reader that does not follow checks whether the
stream still holds anything it has not seen (what it was to reach may have aged out)."""


async def _last_seq(js: JetStreamContext, names: Names, subject: str) -> int:
    """Stream sequence of the newest message on ``subject`` (0 when none)."""
    try:
        msg = await js.get_msg(names.events_stream, subject=subject)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


async def all_events(
    js: JetStreamContext,
    names: Names,
    *,
    agent: str | None = None,
    after: int = 0,
    follow: bool = True,
) -> AsyncIterator[RunEvent]:
    """Yield every run's events (``agent``'s only, when given) from stream sequence
    ``after`` (exclusive; 0 is the first event retained), in stream order, each with its
    ``seq``.

    ``follow`` keeps going live; without it the iterator ends at the event that was last
    when it started. An ephemeral ordered consumer (created with its start position, gone
    when the iterator closes); the subscription buffers at most :data:`PENDING_EVENTS`
    messages, so a slow reader costs bounded memory (past it, the client drops and the
    consumer restarts at the gap). Messages that are not events are skipped. With no
    ``agent``, events stored before the agent token (``<ns>.events.<run_id>.<source>``)
    are read too, with ``agent`` ""; an agent's filter cannot match them.
    """
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be a stream sequence >= 0, not {after!r}")
    if agent is not None:
        check_agent_name(agent)
    subject = names.events_wildcard if agent is None else names.agent_events(agent)
    stop_at = 0
    if not follow:
        stop_at = await _last_seq(js, names, subject)
        if stop_at <= after:
            return
    config = ConsumerConfig(opt_start_seq=after + 1) if after else ConsumerConfig()
    # The stream named: else nats-py asks for every stream name of the account.
    sub = await js.subscribe(
        subject,
        stream=names.events_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if after else DeliverPolicy.ALL,
        config=config,
        pending_msgs_limit=PENDING_EVENTS,
        pending_bytes_limit=PENDING_EVENT_BYTES,
    )
    seen = after
    try:
        while True:
            msg = await _next(sub, follow)
            if msg is None:  # quiet: has what we were to reach aged out of the stream?
                if await _last_seq(js, names, subject) <= seen:
                    return
                continue
            seq = msg.metadata.sequence.stream
            seen = max(seen, seq)
            event = read_event(msg.data, msg.subject, seq)
            if event is not None:
                yield event
            if stop_at and (seq >= stop_at or msg.metadata.num_pending == 0):
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _next(sub: JetStreamContext.PushSubscription, follow: bool) -> Msg | None:
    """The next message; None after :data:`_QUIET` seconds of none (when not following)."""
    try:
        return await sub.next_msg(timeout=None if follow else _QUIET)
    except nats.errors.TimeoutError:
        return None
