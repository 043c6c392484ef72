"""Running a run's scripts: down the shared pipe first, riding out a Redis restart, and
recognising a fenced write that a lost reply made the caller send twice.

This is the one place a script reaches Redis for a run (a cluster-aware client would route
it here by the run's hash tag).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart.checkpoints._fence import stale_error
from stalwart.errors import LeaseLost, ServerUnavailableError, StalwartError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart.checkpoints._cluster_pipe import CommandPipe
    from stalwart.checkpoints._keys import KeySchema


class JournalConflict(StalwartError):
    """An append found its journal position already taken by a different entry."""


class SettlingFuture(asyncio.Future[Any]):
    """A future that cannot be cancelled: a task awaiting it and cancelled meanwhile gets
    its ``CancelledError`` once the future has settled, and can still read the outcome.

    (``Task.cancel`` cancels the future its task awaits; when that refuses, the task is
    cancelled at its next step instead, which is the moment the future settles.) Cheaper
    than ``asyncio.shield``, which builds a second future and two callbacks per await.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


def _chain(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


def settled_quietly(fut: asyncio.Future[Any]) -> None:
    """Done-callback of a fire-and-forget call: its failure is not an error."""
    if not fut.cancelled():
        fut.exception()


class ScriptRunner:
    """Runs scripts on a run's record and journal (``KEYS[1]``, ``KEYS[2]``)."""

    def __init__(self, client: aioredis.Redis, keys: KeySchema, retry_for: float) -> None:
        self.redis = client
        self.keys = keys
        self.retry_for = retry_for
        """How long a call keeps retrying through a Redis outage before giving up."""
        self.pipe: CommandPipe | None = None
        """Auto-pipelined connection(s) for fenced writes (see ``_pipe``; on a cluster one
        per master, ``_cluster_pipe``), when the URL allows."""

    def run_keys(self, run_id: str) -> list[str]:
        """The two keys every run script takes: the record, the journal."""
        return self.keys.script_keys(run_id)

    def evalsha(self, script: object, run_id: str, args: list[object]) -> asyncio.Future[Any]:
        """``script`` on the run's two keys, sent down the shared pipe."""
        assert self.pipe is not None
        sha: str = script.sha  # type: ignore[attr-defined]
        return self.pipe.call("EVALSHA", sha, 2, *self.run_keys(run_id), *args)  # type: ignore[arg-type]

    async def call(
        self, script: object, run_id: str, args: list[object], *, via_pipe: bool = True
    ) -> Any:
        """Run a script, riding out a Redis restart for up to ``retry_for`` seconds.

        A script whose reply was lost may have run: the retry then hits its own entry at
        the same position, which :meth:`write` recognises (explicit ids make this safe).
        """
        if self.pipe is not None and via_pipe:
            # First down the shared pipe; an error reply (NOSCRIPT after a Redis restart) or
            # a lost connection falls through to redis-py, which loads scripts and retries.
            try:
                reply = await self.evalsha(script, run_id, args)
            except (RedisConnectionError, RedisTimeoutError):
                pass
            else:
                if not isinstance(reply, ResponseError):
                    return reply
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await script(keys=self.run_keys(run_id), args=args)  # type: ignore[operator]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailableError(
                        f"run {run_id!r}: Redis unreachable for {self.retry_for:.0f}s: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def write(
        self,
        script: object,
        run_id: str,
        args: list[object],
        seq: int,
        data: bytes,
        *,
        via_pipe: bool = True,
    ) -> str:
        """A fenced journal write of ``data`` at ``seq``; returns the run's cancel flag.

        Raises :class:`LeaseLost` when the fence refused it and :class:`JournalConflict`
        when the position holds another entry (one that is byte-identical is ours, from a
        first try whose reply was lost).
        """
        reply = await self.call(script, run_id, args, via_pipe=via_pipe)
        if reply[0] in (b"ok", b"stale"):
            return self.reply(run_id, args, reply)
        run = self.keys.run(run_id)
        rows = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrange(run.journal, min=f"{seq}-0", max=f"{seq}-0"),
        )
        if rows and rows[0][1].get(b"d") == data:
            cancel = cast("bytes | None", await self.redis.hget(run.record, "cancel"))
            return cancel.decode() if cancel else ""
        raise JournalConflict(
            f"run {run_id!r}: journal position {seq} is taken by another entry "
            f"({reply[1].decode()})"
        )

    def write_future(
        self, script: object, run_id: str, args: list[object], seq: int, data: bytes
    ) -> asyncio.Future[str]:
        """:meth:`write` as a future that is already under way and settles on its own.

        The caller can stop waiting (be cancelled) without abandoning the write, and no
        task is created on the fast path: the write goes down the shared pipe, and only a
        lost connection, an error reply or a taken position falls back to :meth:`write`'s
        retrying path (which recognises an entry the first try already wrote).
        """
        if self.pipe is None:
            return asyncio.ensure_future(self.write(script, run_id, args, seq, data))
        loop = asyncio.get_running_loop()
        out: asyncio.Future[str] = SettlingFuture(loop=loop)
        first = self.evalsha(script, run_id, args)

        def settle(f: asyncio.Future[Any]) -> None:
            reply = None if f.exception() is not None else f.result()
            if isinstance(reply, list) and reply[0] in (b"ok", b"stale"):
                try:
                    out.set_result(self.reply(run_id, args, reply))
                except LeaseLost as exc:
                    out.set_exception(exc)
                return
            # Lost connection, error reply (NOSCRIPT after a restart) or a taken position:
            # the redis-py path, without trying the pipe a second time.
            slow = loop.create_task(self.write(script, run_id, args, seq, data, via_pipe=False))
            slow.add_done_callback(lambda t: _chain(t, out))

        first.add_done_callback(settle)
        return out

    @staticmethod
    def reply(run_id: str, args: list[object], reply: list[bytes]) -> str:
        """The cancel flag from an ``ok`` reply; :class:`LeaseLost` from a ``stale`` one."""
        if reply[0] == b"ok":
            return reply[1].decode()
        raise stale_error(run_id, args[0], reply[1].decode())

    async def index(self, run_id: str, now: float) -> None:
        """Add a run to the runs index and the active set."""
        if self.pipe is not None:
            # Both go out in one write; Redis answers in order, so the second settles last.
            first = self.pipe.call("ZADD", self.keys.runs_of(run_id), "NX", repr(now), run_id)
            second = self.pipe.call("SADD", self.keys.active_of(run_id), run_id)
            first.add_done_callback(settled_quietly)
            try:
                replies = (await second, await first)
            except (RedisConnectionError, RedisTimeoutError):
                pass
            else:
                if not any(isinstance(r, ResponseError) for r in replies):
                    return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.runs_of(run_id), {run_id: now}, nx=True)
            pipe.sadd(self.keys.active_of(run_id), run_id)
            await pipe.execute()

    async def mark_inactive(self, run_id: str, *, wait: bool = True) -> None:
        """Drop an ended run from the active set; without ``wait``, down the pipe unawaited."""
        if wait or self.pipe is None:
            await self.redis.srem(self.keys.active_of(run_id), run_id)
            return
        self.pipe.call("SREM", self.keys.active_of(run_id), run_id).add_done_callback(
            settled_quietly
        )
