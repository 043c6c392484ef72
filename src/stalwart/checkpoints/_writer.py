"""Running a run's scripts: down the shared pipe first, riding out a Redis restart or
failover, and recognising a fenced write that a lost reply made the caller send twice.

Retryable (within ``retry_for``): a lost connection or a timeout, and the error replies of
a node that cannot take the write *now* but will (or another node will): READONLY (a
replica, e.g. a demoted primary), LOADING, MASTERDOWN, and Cluster's MOVED, ASK, TRYAGAIN
and CLUSTERDOWN. Any other error reply is a real error. With ``wait_replicas`` set, a write
that fewer replicas acknowledged is retried too (see ``_pipe.NotReplicated``).

Journal continuity: APPEND and FINISH refuse to write above a hole (``{'gap', top}``). A gap
behind an earlier append of the same run that this writer still has in flight is not a hole
(a resend can overtake it): the later write waits for the earlier ones and is sent again.
Any other gap means acknowledged entries were lost (a failover to a replica that had not
received them): :class:`JournalGap`, which makes the owner give the run up so it is placed
again and replays what the journal really holds.

This is the one place a script reaches Redis for a run (a cluster-aware client would route
it here by the run's hash tag).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart.checkpoints._fence import stale_error
from stalwart.checkpoints._pipe import NotReplicated, ScriptPipe, pack_args
from stalwart.errors import LeaseLost, ServerUnavailableError, StalwartError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from stalwart.checkpoints._cluster_pipe import CommandPipe
    from stalwart.checkpoints._keys import KeySchema


class JournalConflict(StalwartError):
    """An append found its journal position already taken by a different entry."""


class JournalGap(StalwartError):
    """The run's journal lost entries this writer had been told were written.

    Raised by a fenced journal write that finds the journal's top below its own previous
    position (or the run's record at an epoch older than the writer's own claim) with no
    earlier write of this writer still in flight: a Redis failover lost acknowledged writes.
    The owner must stop and have the run placed again, to replay what the journal holds.
    """

    def __init__(self, run_id: str, seq: int, top: int | None, detail: str = "") -> None:
        self.run_id = run_id
        self.seq = seq
        """The position this writer was about to write."""
        self.top = top
        """The journal's top position as found (None when the record itself regressed)."""
        where = f"its journal ends at {top}" if top is not None else detail
        super().__init__(
            f"run {run_id!r}: journal entries were lost (a Redis failover?): writing at "
            f"{seq} but {where}; the run is given up and placed again to replay from what "
            "the journal holds"
        )


RETRYABLE_REPLIES = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "MOVED",
    "ASK",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "You can't write against a read only replica",
)
"""Error replies of a node that cannot take a write now but will, or another node will."""


def retryable_error(exc: BaseException | object) -> bool:
    """Whether ``exc`` (an exception, or an error reply as the pipe hands it) is worth
    retrying: a lost connection, a timeout, or one of :data:`RETRYABLE_REPLIES`.

    redis-py reports some of these as their own ``ResponseError`` subclasses (``ReadOnlyError``,
    ``BusyLoadingError``, ...) without the code in the message, so the class counts too.
    """
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return True
    if not isinstance(exc, ResponseError):
        return False
    names = {"ReadOnlyError", "BusyLoadingError", "MasterDownError", "MovedError", "AskError",
             "TryAgainError", "ClusterDownError"}  # fmt: skip
    if any(cls.__name__ in names for cls in type(exc).__mro__):
        return True
    return str(exc).lstrip().startswith(RETRYABLE_REPLIES)


class SettlingFuture(asyncio.Future[Any]):
    """A future that cannot be cancelled: a task awaiting it and cancelled meanwhile gets
    its ``CancelledError`` once the future has settled, and can still read the outcome.

    (``Task.cancel`` cancels the future its task awaits; when that refuses, the task is
    cancelled at its next step instead, which is the moment the future settles.) Cheaper
    than ``asyncio.shield``, which builds a second future and two callbacks per await.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


_HEADS_MAX = 4096


class _FirstTry:
    """The first try of :meth:`ScriptRunner.write_future` down a :class:`ScriptPipe`: the
    pipe settles it with the reply as soon as the reply is read, and it settles the
    caller's future (``out``) from it, or starts the retrying path. One object per write
    instead of a second future and a loop callback."""

    __slots__ = ("args", "data", "out", "run_id", "runner", "script", "seq", "tracked")

    def __init__(
        self,
        runner: ScriptRunner,
        out: asyncio.Future[str],
        script: object,
        run_id: str,
        args: list[object],
        seq: int,
        data: bytes,
    ) -> None:
        self.runner = runner
        self.out = out
        self.script = script
        self.run_id = run_id
        self.args = args
        self.seq = seq
        self.data = data
        self.tracked = False

    def done(self) -> bool:
        return self.out.done()

    def set_result(self, reply: Any) -> None:
        if isinstance(reply, list) and reply[0] in (b"ok", b"stale"):
            self._untrack()
            try:
                self.out.set_result(self.runner.reply(self.run_id, self.args, reply))
            except (LeaseLost, JournalGap) as exc:
                self.out.set_exception(exc)
            return
        self._slow()

    def set_exception(self, exception: BaseException) -> None:
        self._slow()

    def _slow(self) -> None:
        # Lost connection, error reply (NOSCRIPT after a restart, READONLY), a taken
        # position or a gap: the redis-py path, without trying the pipe a second time.
        slow = asyncio.get_running_loop().create_task(
            self.runner.write(
                self.script, self.run_id, self.args, self.seq, self.data, via_pipe=False
            )
        )
        slow.add_done_callback(self._chained)

    def _chained(self, slow: asyncio.Future[Any]) -> None:
        self._untrack()
        _chain(slow, self.out)

    def _untrack(self) -> None:
        if self.tracked:
            self.tracked = False
            self.runner._untrack(self.run_id, self.seq)


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

    def __init__(
        self,
        client: aioredis.Redis,
        keys: KeySchema,
        retry_for: float,
        *,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.retry_for = retry_for
        """How long a call keeps retrying through a Redis outage before giving up."""
        self.pipe: CommandPipe | None = None
        """Auto-pipelined connection(s) for fenced writes (see ``_pipe``; on a cluster one
        per master, ``_cluster_pipe``), when the URL allows."""
        self.wait_replicas = wait_replicas
        """Replicas that must acknowledge a script's writes before it counts (0: no WAIT)."""
        self.wait_timeout_ms = wait_timeout_ms
        """How long each WAIT waits for them (ms)."""
        # Journal writes under way, per run and position: a gap behind one of them is not a
        # hole (see the module docstring).
        self._unsettled: dict[str, dict[int, asyncio.Future[Any]]] = {}
        self._heads: dict[tuple[str, str], bytes] = {}
        """``EVALSHA <sha> 2 <record> <journal>`` in RESP by (sha, run): the part of every
        journal write to a run that does not change (see :meth:`_packed`)."""

    def run_keys(self, run_id: str) -> list[str]:
        """The two keys every run script takes: the record, the journal."""
        return self.keys.script_keys(run_id)

    def _packed(
        self, sha: str, run_id: str, args: list[object], packed: bytes | None = None
    ) -> bytes:
        """``EVALSHA`` of ``sha`` on the run's keys with ``args``, in RESP, its head cached
        (``packed``: ``args`` already in RESP, as :func:`pack_args` would give them)."""
        head = self._heads.get((sha, run_id))
        if head is None:
            if len(self._heads) >= _HEADS_MAX:  # runs come and go; a few thousand suffice
                self._heads.clear()
            head = self._heads[(sha, run_id)] = pack_args(
                ["EVALSHA", sha, 2, *self.run_keys(run_id)]
            )
        return b"*%d\r\n%s%s" % (5 + len(args), head, packed or pack_args(args))

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
            # First down the shared pipe; an error reply (NOSCRIPT after a Redis restart,
            # READONLY from a demoted primary) or a lost connection falls through to
            # redis-py, which loads scripts and retries.
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
                return await self._run_script(script, run_id, args)
            except (ResponseError, RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if not retryable_error(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    what = (
                        "not acknowledged by replicas"
                        if isinstance(exc, NotReplicated)
                        else ("unreachable or not writable")
                    )
                    raise ServerUnavailableError(
                        f"run {run_id!r}: Redis {what} for {self.retry_for:.0f}s: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _run_script(self, script: object, run_id: str, args: list[object]) -> Any:
        """One try through redis-py's pool; with ``wait_replicas``, followed by WAIT on the
        same connection (WAIT covers that connection's writes)."""
        keys = self.run_keys(run_id)
        if not self.wait_replicas:
            return await script(keys=keys, args=args)  # type: ignore[operator]
        try:
            reply, acked = await self._script_and_wait(script, keys, args)
        except NoScriptError:
            # The pipeline checked the script on the old primary, then reconnected to a new
            # one (a failover) that never saw it: load it there and go again.
            await self.redis.script_load(script.script)  # type: ignore[attr-defined]
            reply, acked = await self._script_and_wait(script, keys, args)
        if int(acked) < self.wait_replicas:
            raise NotReplicated(
                f"WAIT: {acked} of {self.wait_replicas} replica(s) acknowledged within "
                f"{self.wait_timeout_ms} ms"
            )
        return reply

    async def _script_and_wait(
        self, script: object, keys: list[str], args: list[object]
    ) -> tuple[Any, Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            await script(keys=keys, args=args, client=pipe)  # type: ignore[operator]
            pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
            reply, acked = await pipe.execute()
        return reply, acked

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

        Raises :class:`LeaseLost` when the fence refused it, :class:`JournalConflict`
        when the position holds another entry (one that is byte-identical is ours, from a
        first try whose reply was lost: the script answers ``ok`` for it) and
        :class:`JournalGap` when the journal lost entries below ``seq``.
        """
        tracked = self._track(run_id, seq, asyncio.current_task())
        try:
            while True:
                reply = await self.call(script, run_id, args, via_pipe=via_pipe)
                if reply[0] != b"gap":
                    break
                earlier = self._earlier(run_id, seq)
                if not earlier:
                    raise JournalGap(run_id, seq, int(reply[1]))
                # Overtaken by our own later resend: let the earlier writes land, then again.
                await asyncio.wait(earlier, timeout=self.retry_for)
                via_pipe = False
        finally:
            if tracked:
                self._untrack(run_id, seq)
        if reply[0] in (b"ok", b"stale"):
            return self.reply(run_id, args, reply)
        detail = reply[1].decode() if len(reply) > 1 else ""
        raise JournalConflict(
            f"run {run_id!r}: journal position {seq} is taken by another entry ({detail})"
        )

    def _track(self, run_id: str, seq: int, fut: asyncio.Future[Any] | None) -> bool:
        if fut is None:
            return False
        by_seq = self._unsettled.setdefault(run_id, {})
        if seq in by_seq:
            return False  # already tracked by write_future's own future
        by_seq[seq] = fut
        return True

    def _untrack(self, run_id: str, seq: int) -> None:
        by_seq = self._unsettled.get(run_id)
        if by_seq is not None:
            by_seq.pop(seq, None)
            if not by_seq:
                del self._unsettled[run_id]

    def _earlier(self, run_id: str, seq: int) -> set[asyncio.Future[Any]]:
        """This writer's unsettled journal writes of ``run_id`` below ``seq``."""
        by_seq = self._unsettled.get(run_id, {})
        return {f for s, f in by_seq.items() if s < seq and not f.done()}

    def write_future(
        self,
        script: object,
        run_id: str,
        args: list[object],
        seq: int,
        data: bytes,
        packed: bytes | None = None,
    ) -> asyncio.Future[str]:
        """:meth:`write` as a future that is already under way and settles on its own.

        The caller can stop waiting (be cancelled) without abandoning the write, and no
        task is created on the fast path: the write goes down the shared pipe, and only a
        lost connection, an error reply or a taken position falls back to :meth:`write`'s
        retrying path (which recognises an entry the first try already wrote). ``packed``
        is ``args`` in RESP when the caller built it (see :meth:`_packed`).
        """
        if self.pipe is None:
            return asyncio.ensure_future(self.write(script, run_id, args, seq, data))
        loop = asyncio.get_running_loop()
        out: asyncio.Future[str] = SettlingFuture(loop=loop)
        if type(self.pipe) is ScriptPipe:  # the common case, without a future per reply
            attempt = _FirstTry(self, out, script, run_id, args, seq, data)
            attempt.tracked = self._track(run_id, seq, out)
            sha: str = script.sha  # type: ignore[attr-defined]
            self.pipe.send(self._packed(sha, run_id, args, packed), attempt)
            return out
        if self._track(run_id, seq, out):
            out.add_done_callback(lambda _: self._untrack(run_id, seq))
        first = self.evalsha(script, run_id, args)

        def settle(f: asyncio.Future[Any]) -> None:
            reply = None if f.exception() is not None else f.result()
            if isinstance(reply, list) and reply[0] in (b"ok", b"stale"):
                try:
                    out.set_result(self.reply(run_id, args, reply))
                except (LeaseLost, JournalGap) as exc:
                    out.set_exception(exc)
                return
            # Lost connection, error reply (NOSCRIPT after a restart, READONLY), a taken
            # position or a gap: the redis-py path, without trying the pipe a second time.
            slow = loop.create_task(self.write(script, run_id, args, seq, data, via_pipe=False))
            slow.add_done_callback(lambda t: _chain(t, out))

        first.add_done_callback(settle)
        return out

    @staticmethod
    def reply(run_id: str, args: list[object], reply: list[bytes]) -> str:
        """The cancel flag from an ``ok`` reply; :class:`LeaseLost` from a ``stale`` one.

        A ``stale`` reply naming an epoch *older* than the writer's own (or none) cannot come
        from a newer owner: the record lost the writer's claim (a failover), which is a
        :class:`JournalGap`.
        """
        if reply[0] == b"ok":
            return reply[1].decode()
        current = reply[1].decode()
        mine = str(args[0])
        if mine.isdigit() and (not current.isdigit() or int(current) < int(mine)):
            raise JournalGap(
                run_id,
                int(str(args[1]).split("-", 1)[0]),
                None,
                f"the run's record is back at epoch {current or 'none'}, before this "
                f"writer's claim at {mine}",
            )
        raise stale_error(run_id, args[0], current)

    async def command(self, *args: bytes | str | int | float) -> Any:
        """One plain command, down the shared pipe when there is one; through redis-py's
        pool (which reconnects and retries) when not, or when the pipe lost the connection
        or got an error reply. For commands that are safe to send twice."""
        if self.pipe is not None:
            try:
                reply = await self.pipe.call(*args)
            except (RedisConnectionError, RedisTimeoutError):
                pass
            else:
                if not isinstance(reply, ResponseError):
                    return reply
        return await self.redis.execute_command(*args)  # type: ignore[no-untyped-call]

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
