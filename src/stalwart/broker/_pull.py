"""Pull requests on a durable consumer that never ask for more than a worker can place.

nats-py's ``fetch`` is a poor fit for a worker whose slots fill and free one by one: its
``no_wait`` probe carries an expiry, so the server holds it open like a long pull, and a stale
``408`` from an earlier request, read as the probe's answer, makes ``fetch`` send a second
request while the first is still open. Whatever the server then delivers to the leftover request
waits in the subscription's queue until the next ``fetch`` — which a full worker does not make,
while other workers sit idle (a request waited 0.2-0.8 s, and without bound when the worker
stayed full). And one ``fetch`` a second per agent per worker is most of an idle system's
traffic.

A :class:`PullFeed` keeps its own account instead. Every pull request it sends is remembered
with its batch (its *credits*); a delivered request spends one, a ``408``/``409`` ends one
request and returns its unspent credits. Its owner asks for credits only for slots it has free
(see :func:`allot`), and a request arriving when no slot is free after all is given back at
once (nak), so no request ever waits in a worker's buffer. Closing the feed unsubscribes its
inbox, and the server drops pull requests whose reply subject nobody listens to any more.

How long a request stays open is a trade-off. Longer means less idle traffic (one request and
its expiry per ``expires``). But an open request is a promise of capacity the server keeps
even when the process behind it froze (SIGSTOP, a paused VM, a partition): what it delivers
there waits for ``ack_wait``. Requests that lapse within half a lease TTL (the default) are
gone before anyone takes the frozen worker for dead, so the resume requests for its runs go
to live workers. Long requests (20 s and more) carry idle heartbeats, so requests lost with a
server are noticed before they expire.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = structlog.get_logger("stalwart.broker")

API_PREFIX = "$JS.API"

_HEARTBEAT = "100"
_EXPIRED = "408"
_BACKOFF = 1.0
"""Seconds a feed sends no pull request after the server refused or cut one off (a deleted
consumer answers every pull at once: without a pause the owner would ask in a tight loop)."""

_CLOSE_MARK = "Stalwart-Pull-Closed"


def heartbeat_for(expires: float) -> float:
    """Idle heartbeat interval of pull requests open for ``expires`` seconds (0: none).

    Requests shorter than 20 s go without: a lost one is forgotten at its expiry anyway,
    and heartbeats would cost more traffic than the expiry saves. Longer ones get one every
    5 s, so a lost request is noticed within about 11 s.
    """
    return 5.0 if expires >= 20 else 0.0


def allot(
    free: int, outstanding: list[int], threshold: int, busy: list[bool] | None = None
) -> list[int]:
    """How many credits to ask for on each feed, given ``free`` slots, each feed's
    ``outstanding`` credits and whether it is ``busy`` (see :attr:`PullFeed.busy`).

    Credits in total stay at or below ``free``, with one exception: a feed with no credits
    left gets one whenever a slot is free, so every agent a worker serves stays reachable
    (at most one request per such feed can then find no slot, and it is given back at once).
    Beyond that, unclaimed slots are asked for only once at least ``threshold`` of them have
    gathered, split evenly, so slots freed one by one do not each cost a pull request.

    With ``busy`` given and more than one feed, an idle feed gets that one credit and no
    more, and the other slots go to busy feeds only: a credit is a promise the server keeps
    until the request expires, and credits split evenly over idle feeds (other agents, other
    lanes) left a busy agent's feed a handful of slots and a pull request per run placed,
    while the rest of the worker sat unused (issue #19). An idle feed's first request
    makes it busy, and its next pull asks for the free slots.
    """
    n = len(outstanding)
    if busy is None or len(busy) != n or n == 1:
        return _split(free, outstanding, threshold)
    asks = [0] * n
    if free <= 0:
        return asks
    hungry = [i for i in range(n) if busy[i]]
    for i in range(n):
        if not busy[i] and outstanding[i] == 0:
            asks[i] = 1  # reachable, and no more: nothing showed demand there
    # What the busy feeds may hold in all; at least one, so an empty one stays reachable.
    theirs = max(free - sum(outstanding) - sum(asks) + sum(outstanding[i] for i in hungry), 1)
    split = _split(theirs, [outstanding[i] for i in hungry], threshold)
    for i, ask in zip(hungry, split, strict=True):
        asks[i] = ask
    return asks


def _split(free: int, outstanding: list[int], threshold: int) -> list[int]:
    """:func:`allot` among feeds that all count as busy."""
    asks = [0] * len(outstanding)
    if free <= 0 or not outstanding:
        return asks
    spare = free - sum(outstanding)
    empty = [i for i, n in enumerate(outstanding) if n == 0]
    if spare < max(threshold, 1) and not empty:
        return asks
    share = max(spare, 0) // len(outstanding)
    extra = max(spare, 0) - share * len(outstanding)
    for i, n in enumerate(outstanding):
        ask = share + (1 if i < extra else 0)
        if n == 0:
            ask = max(ask, 1)
        elif spare < max(threshold, 1):
            ask = 0  # only the empty feeds are topped up
        asks[i] = ask
    return asks


@dataclass(slots=True)
class _Request:
    left: int
    """Credits of this request not yet spent on a delivery."""
    ends: float
    """Monotonic time after which the server has surely expired it."""


class PullFeed:
    """Pull requests for one durable consumer, delivered to ``deliver`` one message at a time.

    ``deliver`` is called for every run request that arrives (never for status messages);
    ``changed`` whenever credits came back (a request expired or was cut off), so the owner
    can ask again.
    """

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        *,
        expires: float,
        deliver: Callable[[Msg], None],
        changed: Callable[[], None],
        label: str = "",
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.label = label or durable
        self.expires = expires
        self.heartbeat = heartbeat_for(expires)
        self._subject = f"{API_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        # Under the namespace's inbox prefix (the connection's), which NATS permissions
        # let the namespace's workers read.
        self._inbox = nc.new_inbox()
        self._deliver = deliver
        self._changed = changed
        self._requests: deque[_Request] = deque()
        self._sub: Subscription | None = None
        self._seen = time.monotonic()
        self._reconnects = self._reconnect_count()
        self._quiet_until = 0.0
        self.closed = False
        self.busy = False
        """Whether requests arrived since a pull request last expired unfilled (demand)."""
        self.pulls = 0
        """Pull requests sent (for tests and metrics)."""

    @property
    def outstanding(self) -> int:
        """Credits asked for and not yet spent or returned."""
        return sum(r.left for r in self._requests)

    def _reconnect_count(self) -> int:
        return int(self.nc.stats.get("reconnects", 0))

    async def start(self) -> None:
        """Subscribe the feed's inbox (before the first pull)."""
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)

    async def pull(self, batch: int) -> None:
        """Ask the consumer for up to ``batch`` more requests (open for ``expires``)."""
        now = time.monotonic()
        if batch <= 0 or self.closed or now < self._quiet_until:
            return
        body = {"batch": batch, "expires": int(self.expires * 1e9)}
        if self.heartbeat:
            body["idle_heartbeat"] = int(self.heartbeat * 1e9)
        if not self._requests:
            self._seen = now  # heartbeats are due from now on
        # A request the server never saw (lost with the connection) must not hold credits
        # forever: past its expiry (and a margin for a slow 408) it is forgotten.
        self._requests.append(_Request(batch, now + self.expires + 1.0))
        self.pulls += 1
        await self.nc.publish(self._subject, json.dumps(body).encode(), reply=self._inbox)

    def check(self) -> bool:
        """Forget requests the server has surely dropped; True if some were.

        Call it now and then (the owner's loop does, about once a second). Requests are lost
        with a server restart or a reconnect (noticed by the connection's reconnect count) or,
        for requests with heartbeats, when heartbeats stop (two missed, plus a second);
        requests past their expiry are gone whatever happened.
        """
        now = time.monotonic()
        lost = ""
        reconnects = self._reconnect_count()
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            lost = "reconnected"
        elif self.heartbeat and self._requests and now - self._seen > 2 * self.heartbeat + 1.0:
            lost = "no heartbeat"
        if lost:
            if self._requests:
                log.info("pull.requests_lost", feed=self.label, why=lost, credits=self.outstanding)
            self._requests.clear()
            return True
        before = len(self._requests)
        while self._requests and self._requests[0].ends < now:
            self._requests.popleft()
        return len(self._requests) != before

    def _spend(self) -> None:
        # The server serves a consumer's waiting requests oldest first.
        if self._requests:
            self._requests[0].left -= 1
            if self._requests[0].left <= 0:
                self._requests.popleft()

    def _end_oldest(self) -> None:  # the oldest open request expired
        if self._requests:
            self._requests.popleft()

    async def _on_msg(self, msg: Msg) -> None:
        self._seen = time.monotonic()
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if headers.get(_CLOSE_MARK):
            return
        if not status:
            if msg.reply:  # a run request (with its ack subject)
                self._spend()
                self.busy = True
                self._deliver(msg)
            return
        if status == _HEARTBEAT:
            return
        if status == _EXPIRED and "Nats-Pending-Messages" in headers:
            # Requests are all open for the same time, so the oldest expires first. It found
            # nothing to deliver for its whole life: the feed is idle.
            self._end_oldest()
            self.busy = False
        else:
            # Refused or cut off (409: consumer deleted, leader changed, too many waiting
            # requests; 404/503: no consumer or no JetStream): maybe every request is gone.
            # Start over after a pause.
            log.info(
                "pull.ended", feed=self.label, status=status, reason=headers.get("Description")
            )
            self._requests.clear()
            self._quiet_until = time.monotonic() + _BACKOFF
        self._changed()

    async def close(self, timeout: int = 2) -> None:
        """Stop receiving: the server drops this feed's open pull requests.

        The inbox is unsubscribed after one more message, and that message is a marker the
        feed publishes to itself: a request the server delivered before it saw the
        unsubscribe still reaches ``deliver`` (which gives it back), instead of vanishing
        until ``ack_wait``.
        """
        if self.closed:
            return
        self.closed = True
        sub, self._sub = self._sub, None
        self._requests.clear()
        if sub is None or self.nc.is_closed:
            return
        try:
            await sub.unsubscribe(limit=sub.delivered + 1)
            await self.nc.publish(self._inbox, b"", headers={_CLOSE_MARK: "1"})
            await self.nc.flush(timeout=timeout)
        except Exception as exc:  # closing anyway: the connection is going away
            log.info("pull.close_failed", feed=self.label, error=repr(exc))
