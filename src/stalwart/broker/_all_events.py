"""Every run's events (or one agent's), in stream order, from a stream position on.

Read in batches with JetStream's batched direct get (``$JS.API.DIRECT.GET.<stream>`` with
``next_by_subj`` and ``batch``, nats-server >= 2.11), not with a push consumer: a reader
asks for the next batch only once it has taken the last one, so a slow reader holds at most
one batch, and nothing is dropped on the way (nats-py drops what overflows a push
subscription's buffer, and its ordered consumer does not see that gap). No consumer is
created: nothing is left on the server by a reader that dies. A follower waits for the next
event on a plain subscription to the same subjects, used only as a wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING

from nats.errors import NoRespondersError
from nats.js.errors import APIError, NotFoundError

from stalwart._ids import check_agent_name
from stalwart.messages import read_event

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext

    from stalwart.broker._names import Names
    from stalwart.messages import RunEvent

BATCH = 256
"""Events asked for at once: with :data:`BATCH_BYTES`, what a reader holds at most."""
BATCH_BYTES = 4 * 1024 * 1024
"""Bytes asked for at once (the server sends at least one event, whatever its size)."""
_BATCH_TIMEOUT = 10.0
"""Seconds one batch may take before the read fails."""
_IDLE_POLL = 1.0
"""Seconds a follower waits for a wake-up before it looks anyway (a wake-up can be lost)."""
_STORE_RACE = 0.02
"""Seconds before a second look when a wake-up found nothing new: the plain subscription
can hear of an event a moment before the stream has stored it."""


async def _last_seq(js: JetStreamContext, names: Names, subject: str) -> int:
    """Stream sequence of the newest message on ``subject`` (0 when none)."""
    try:
        msg = await js.get_msg(names.events_stream, subject=subject)
    except NotFoundError:
        return 0
    return int(msg.seq or 0)


class _Batches:
    """Batched direct gets of one stream's messages on one subject, one request at a time.

    One reply subscription for the reader's life; every request gets its own reply token,
    so a late answer to a request that timed out is told apart and dropped.
    """

    def __init__(self, nc: NATS, api_prefix: str, stream: str, subject: str) -> None:
        self._nc = nc
        self._api = f"{api_prefix}.DIRECT.GET.{stream}"
        self._subject = subject
        self._prefix = nc.new_inbox()
        self._n = 0
        self._sub: Subscription | None = None

    async def next(self, start: int) -> tuple[list[Msg], int]:
        """The messages from stream sequence ``start`` on (at most one batch) and how many
        more match after them; ``([], 0)`` when none is there."""
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._prefix}.*")
        self._n += 1
        reply = f"{self._prefix}.{self._n}"
        body = {"seq": start, "next_by_subj": self._subject, "batch": BATCH}
        body["max_bytes"] = BATCH_BYTES
        await self._nc.publish(self._api, json.dumps(body).encode(), reply=reply)
        out: list[Msg] = []
        async with asyncio.timeout(_BATCH_TIMEOUT):
            while True:
                msg = await self._sub.next_msg(timeout=None)
                if msg.subject != reply:
                    continue  # an answer to an earlier request that timed out
                headers = msg.headers or {}
                status = headers.get("Status", "")
                if not status:
                    out.append(msg)
                elif status == "204":  # end of the batch
                    return out, int(headers.get("Nats-Num-Pending", "0") or 0)
                elif status == "404":  # nothing at or after start
                    return out, 0
                elif status == "503":
                    raise NoRespondersError  # no such stream (or no server answers for it)
                else:
                    description = str(headers.get("Description", ""))
                    raise APIError(code=int(status), description=description)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


def events_filter(names: Names, agent: str | None, after: int) -> str:
    """The subject filter of every run's events, or ``agent``'s; raises ``ValueError`` for
    a bad ``after`` and :class:`~stalwart.errors.ConfigurationError` for a bad agent."""
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise ValueError(f"after must be a stream sequence >= 0, not {after!r}")
    if agent is None:
        return names.events_wildcard
    return names.agent_events(check_agent_name(agent))


async def all_events(
    nc: NATS,
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
    when it started. Batches of at most :data:`BATCH` events (:data:`BATCH_BYTES`) are
    asked for one at a time, so a slow reader costs bounded memory and misses nothing the
    stream still holds. Messages that are not events are skipped. With no ``agent``, events
    stored before the agent token (``<ns>.events.<run_id>.<source>``) are read too, with
    ``agent`` ""; an agent's filter cannot match them.
    """
    subject = events_filter(names, agent, after)
    stop_at = 0
    if not follow:
        stop_at = await _last_seq(js, names, subject)
        if stop_at <= after:
            return
    batches = _Batches(nc, str(getattr(js, "_prefix", "$JS.API")), names.events_stream, subject)
    # Subscribed before the first look, so no event stored after that look goes unheard.
    waker = await _Waker.start(nc, subject) if follow else None
    cursor = after + 1
    try:
        while True:
            msgs, more = await batches.next(cursor)
            for msg in msgs:
                headers = msg.headers or {}
                seq = int(headers.get("Nats-Sequence", "0") or 0)
                if seq < cursor or (stop_at and seq > stop_at):
                    return  # not what was asked for, or past the end
                cursor = seq + 1
                event = read_event(msg.data, str(headers.get("Nats-Subject", "")), seq)
                if event is not None:
                    yield event
            if waker is None:  # not following: until the end (or it aged out of the stream)
                if not msgs or cursor > stop_at:
                    return
            elif not (msgs and more):
                await waker.wait(found=bool(msgs))
    finally:
        await batches.close()
        if waker is not None:
            await waker.close()


class _Waker:
    """A plain subscription to the subjects being read, used only to wake the follower."""

    def __init__(self) -> None:
        self.woken = asyncio.Event()
        self._sub: Subscription | None = None
        self._retry_soon = False

    @classmethod
    async def start(cls, nc: NATS, subject: str) -> _Waker:
        waker = cls()
        waker._sub = await nc.subscribe(subject, cb=waker._wake)
        return waker

    async def _wake(self, _: Msg) -> None:
        self.woken.set()

    async def wait(self, *, found: bool) -> None:
        """Wait until it is worth looking again, after a look that ``found`` events or not."""
        if self._retry_soon and not found:
            # Woken, yet nothing new: the event may not be stored yet. Look again soon, once.
            self._retry_soon = False
            await asyncio.sleep(_STORE_RACE)
            return
        try:
            await asyncio.wait_for(self.woken.wait(), _IDLE_POLL)
            self._retry_soon = True
        except TimeoutError:
            self._retry_soon = False
        self.woken.clear()  # what woke it now is in the stream the next look reads

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
