"""Many compare-and-set writes to JetStream at once, without a coroutine per write.

A worker renews every lease it holds each third of a TTL: with thousands of runs in flight
that is thousands of writes in a burst. Through nats-py's ``JetStreamContext.publish`` each
write is a task (``asyncio.gather``), a fresh reply inbox and future, a header validation
and a JSON ack parsed into a ``PubAck``: about 70 µs of the worker's CPU, and on a loop
busy with the runs' steps the tasks' sends go out over several loop iterations. A pass
that reaches the server after the leases' TTL finds them expired, and every run of the
worker is lost at once (measured: 4,096 runs of trivial steps on one worker, see
docs/benchmarks.md, "Leases under load").

:class:`CasWriter` builds the ``HPUB`` commands itself (the lease subjects and values are
Stalwart's own), hands a whole pass to the connection as one write the moment the pass
starts, and takes the acks on one wildcard reply subscription.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from nats.js.errors import APIError, NoStreamResponseError

from stalwart.broker._wire import hand_to_connection, reply_inbox

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

__all__ = ["CasWriter"]


def _outcome(msg: Msg) -> int | BaseException:
    """A JetStream publish ack as the stored sequence, or the error it reports."""
    if not msg.data:  # a status message: no stream answered (503) or similar
        return NoStreamResponseError()
    try:
        ack = json.loads(msg.data)
        err = ack.get("error")
        if err is None:
            return int(ack["seq"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return APIError(description=f"unreadable publish ack {msg.data[:80]!r}")
    try:
        APIError.from_error(err)  # raises the matching subclass (nats-py's own mapping)
    except APIError as exc:
        return exc
    return APIError(description=str(err))  # pragma: no cover - from_error always raises


def _no_ack(timeout: float) -> TimeoutError:
    return TimeoutError(f"no publish ack within {timeout:g}s")


def _expire(fut: asyncio.Future[int | BaseException], timeout: float) -> None:
    if not fut.done():
        fut.set_result(_no_ack(timeout))


class CasWriter:
    """Pipelined ``Nats-Expected-Last-Subject-Sequence`` writes with a ``Nats-TTL``."""

    def __init__(self, nc: NATS, timeout: float) -> None:
        self._nc = nc
        self.timeout = timeout
        """Seconds a pass waits for its acks; a write unanswered by then is reported as a
        ``TimeoutError`` (it may still have been stored)."""
        self._prefix = b""
        """The reply subjects' prefix (ASCII), as the commands carry it."""
        self._next = 0
        self._waiting: dict[str, asyncio.Future[int | BaseException]] = {}

    async def _ready(self) -> None:
        if not self._prefix:
            self._prefix = (await reply_inbox(self._nc, self._on_ack)).encode()

    async def _on_ack(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if fut is not None and not fut.done():
            fut.set_result(_outcome(msg))

    async def write_one(self, subject: str, value: bytes, expected: int, ttl: int) -> int:
        """One CAS write (a placement's lease): the new sequence; raises ``APIError`` for a
        refusal, ``TimeoutError`` or a NATS error for no answer.

        Without :meth:`write`'s ``asyncio.wait``: a timer settles the one future instead.
        """
        await self._ready()
        loop = asyncio.get_running_loop()
        self._next += 1
        token = str(self._next)
        fut: asyncio.Future[int | BaseException] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(self.timeout, _expire, fut, self.timeout)
        try:
            await hand_to_connection(
                self._nc, [self._command(subject, value, expected, ttl, token)]
            )
            res = await fut
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if isinstance(res, BaseException):
            raise res
        return res

    def _command(self, subject: str, value: bytes, expected: int, ttl: int, token: str) -> bytes:
        hdr = b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\nNats-TTL: %d\r\n\r\n" % (
            expected,
            ttl,
        )
        return b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            subject.encode(),
            self._prefix,
            token.encode(),
            len(hdr),
            len(hdr) + len(value),
            hdr,
            value,
        )

    async def write(
        self, writes: list[tuple[str, bytes, int]], ttl: int
    ) -> list[int | BaseException]:
        """Send each ``(subject, value, expected_seq)`` as a CAS write with TTL ``ttl``
        seconds, all in one go; per write, in order: the new sequence or the error
        (``APIError`` for a refusal, ``TimeoutError`` / a NATS error for no answer).

        Subjects must pass ``_wire.plain_subject``.
        """
        if not writes:
            return []
        await self._ready()
        loop = asyncio.get_running_loop()
        tokens: list[str] = []
        futs: list[asyncio.Future[int | BaseException]] = []
        commands: list[bytes] = []
        for subject, value, expected in writes:
            self._next += 1
            token = str(self._next)
            fut: asyncio.Future[int | BaseException] = loop.create_future()
            self._waiting[token] = fut
            tokens.append(token)
            futs.append(fut)
            commands.append(self._command(subject, value, expected, ttl, token))
        try:
            await hand_to_connection(self._nc, commands)
            await asyncio.wait(futs, timeout=self.timeout)
        except Exception as exc:  # closed connection, full buffer: nothing more will come
            for fut in futs:
                if not fut.done():
                    fut.set_result(exc)
        finally:
            for token in tokens:
                self._waiting.pop(token, None)
        return [fut.result() if fut.done() else _no_ack(self.timeout) for fut in futs]
