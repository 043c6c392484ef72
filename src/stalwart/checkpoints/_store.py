"""The Redis side of a run: its record, its journal, and the fenced writes to both."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart.checkpoints import _scripts
from stalwart.checkpoints._entries import (
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    RunRecord,
    RunStatus,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    decode_entry,
    encode_entry,
    record_from_hash,
)
from stalwart.checkpoints._pipe import ScriptPipe
from stalwart.checkpoints._reach import first_contact
from stalwart.errors import (
    CorruptRecordError,
    InvalidRequestError,
    LeaseLost,
    RunNotFoundError,
    ServerUnavailableError,
    StalwartError,
)

_log = structlog.get_logger("stalwart.checkpoints")

if TYPE_CHECKING:
    import msgspec


def _unplaced_end(now: float, status: RunStatus, error_type: str, reason: str) -> bytes:
    """The Finished entry that ends a run no worker holds (cancel, reject, dead letter)."""
    return encode_entry(
        Finished(
            status=status,
            epoch=0,
            worker="",
            at=now,
            error=ErrorInfo(error_type, reason, retryable=False),
        )
    )


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


def _settled_quietly(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a fire-and-forget call's failure is not an error


class JournalConflict(StalwartError):
    """An append found its journal position already taken by a different entry."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Outcome of :meth:`CheckpointStore.claim`.

    ``outcome`` is ``ok`` (this epoch now owns the run; ``seq`` is the Started entry),
    ``terminal`` (the run already ended with ``status``), ``stale`` (a newer epoch owns it),
    ``wrong_agent`` (the run belongs to agent ``status``), ``missing`` (a resume of a run
    that does not exist) or ``poisoned`` (the run failed here with ``PlacementLimitExceeded``;
    ``seq`` is its Finished entry, ``status`` the error message).
    """

    outcome: Literal["ok", "terminal", "stale", "wrong_agent", "missing", "poisoned"]
    seq: int = 0
    status: str = ""
    cancel: str = ""
    input: bytes = b""
    trace: str = ""
    deadline: float = 0.0
    at: float = 0.0
    """When the claim was made (the ``Started`` entry's time)."""


CancelOutcome = Literal["missing", "terminal", "cancelled", "requested"]
RejectOutcome = Literal["missing", "unrelated", "rejected"]

REJECTED_ERROR = "RequestRejected"
"""``error_type`` of a run ended by the rejection of its own submission."""
POISONED_ERROR = "PlacementLimitExceeded"
"""``error_type`` of a run failed by the ``max_placements`` limit."""


def fork_entries(entries: list[JournalEntry], upto_key: str) -> list[Entry] | None:
    """The entries a fork at step ``upto_key`` keeps (None when the step is not journaled).

    Everything journaled up to and including the step's outcome, except what belongs to
    placements (``Started``, ``Finished``) and what would leave a step half done in the fork:
    attempts, at-most-once intents and waits of steps whose outcome came later (those steps
    run live in the fork, from their first attempt).
    """
    end = next(
        (
            je.seq
            for je in entries
            if isinstance(je.entry, StepDone | StepError) and je.entry.key == upto_key
        ),
        None,
    )
    if end is None:
        return None
    prefix = [je.entry for je in entries if je.seq <= end]
    done = {e.key for e in prefix if isinstance(e, StepDone | StepError)}
    return [
        e
        for e in prefix
        if isinstance(e, StepDone | StepError)
        or (isinstance(e, StepAttempt | StepIntent | WaitStarted) and e.key in done)
    ]


class CheckpointStore:
    """Journal and run record of every run, in one Redis primary.

    Keys, with the run id as a hash tag so a run's keys would share a cluster slot (the
    clients are not cluster-aware yet):
    ``<ns>:{<run_id>}:run`` (hash), ``<ns>:{<run_id>}:journal`` (stream),
    ``<ns>:runs`` (sorted set of run ids by creation time) and ``<ns>:active``
    (set of runs not yet ended, scanned by the supervisor).
    """

    def __init__(
        self, client: aioredis.Redis, namespace: str = "stalwart", *, retry_for: float = 30.0
    ) -> None:
        self.redis = client
        self.ns = namespace
        self.retry_for = retry_for
        """How long a journal write keeps retrying through a Redis outage before giving up."""
        self._create = client.register_script(_scripts.CREATE_RUN)
        self._claim = client.register_script(_scripts.CLAIM)
        self._append = client.register_script(_scripts.APPEND)
        self._finish = client.register_script(_scripts.FINISH)
        self._cancel = client.register_script(_scripts.CANCEL)
        self._signal = client.register_script(_scripts.SIGNAL)
        self._passivate = client.register_script(_scripts.PASSIVATE)
        self._dead_letter = client.register_script(_scripts.DEAD_LETTER)
        self._fork = client.register_script(_scripts.FORK_RUN)
        self._reject = client.register_script(_scripts.REJECT)
        self._pipe: ScriptPipe | None = None
        """Auto-pipelined connection for journal appends (see ``_pipe``), when the URL allows."""

    @classmethod
    async def connect(
        cls,
        url: str,
        namespace: str = "stalwart",
        *,
        max_connections: int = 64,
        connect_timeout: float = 10.0,
    ) -> CheckpointStore:
        """Connect to Redis at ``url`` and check it answers within ``connect_timeout`` s.

        ``max_connections`` bounds the pool for everything but journal appends (which share
        one pipelined connection); callers past it wait for a connection. Raises
        :class:`ConfigurationError` for a URL that is not a Redis URL and
        :class:`ServerUnavailableError` (URL with credentials masked, and the reason) when
        Redis does not answer in time, refuses the credentials or is not Redis.
        """
        # First contact without retries, bounded: the pool below retries for ~25 s.
        # Appends go out as EVALSHA on the pipe: make sure Redis knows the script.
        await first_contact(url, connect_timeout, (_scripts.APPEND,))
        # Every command rides out a short Redis restart. Scripts are safe to resend: appends
        # use explicit ids (a resent append finds its own entry), claims are idempotent.
        # A blocking pool: a burst of placements past the pool's size waits for a free
        # connection instead of failing (redis-py's default pool raises at its limit).
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=30,
            decode_responses=False,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=30),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        store = cls(client, namespace)
        if ScriptPipe.supports(url):
            store._pipe = ScriptPipe(url)
        return store

    async def close(self) -> None:
        """Close the connection pool (and the append pipe)."""
        if self._pipe is not None:
            await self._pipe.close()
        await self.redis.aclose()

    # -- keys ---------------------------------------------------------------------------

    def record_key(self, run_id: str) -> str:
        """Key of the run record hash."""
        return f"{self.ns}:{{{run_id}}}:run"

    def journal_key(self, run_id: str) -> str:
        """Key of the run's journal stream."""
        return f"{self.ns}:{{{run_id}}}:journal"

    def signals_key(self, run_id: str) -> str:
        """Key of the run's signal inbox (a stream)."""
        return f"{self.ns}:{{{run_id}}}:signals"

    @property
    def timers_key(self) -> str:
        """Sorted set of passivated runs by the time their timer fires."""
        return f"{self.ns}:timers"

    @property
    def runs_key(self) -> str:
        """Sorted set of all run ids by creation time."""
        return f"{self.ns}:runs"

    @property
    def active_key(self) -> str:
        """Set of run ids that have not ended."""
        return f"{self.ns}:active"

    def _keys(self, run_id: str) -> list[str]:
        return [self.record_key(run_id), self.journal_key(run_id)]

    # -- run records --------------------------------------------------------------------

    async def create_run(
        self, run_id: str, agent: str, input: msgspec.Raw, *, trace: str = ""
    ) -> tuple[str, str] | None:
        """Create the record of a new run. Returns ``(status, agent)`` if it already existed."""
        now = time.time()
        existing = await self._create(
            keys=[self.record_key(run_id)], args=[run_id, agent, bytes(input), repr(now), trace]
        )
        if existing:
            return existing[0].decode(), existing[1].decode()
        await self._index(run_id, now)
        return None

    async def fork_run(self, src: str, dst: str, upto_key: str, *, trace: str = "") -> RunRecord:
        """Create run ``dst`` from ``src``'s journal up to and including step ``upto_key``.

        The new run has the source's agent and input, status ``accepted`` and a journal that
        starts with a ``Started`` marker (epoch 0, worker ``fork:<src>@<step>``) followed by
        the kept entries (:func:`fork_entries`), so when it is placed it replays them and
        goes live after the step. Returns the source's record. Raises
        :class:`InvalidRequestError` for an unknown source or step, or an existing ``dst``.

        Not atomic across the two runs (their keys live in different cluster slots): the
        source is read first, then the new run's record and journal are written by one
        script. That is enough: journals only grow, so the prefix read cannot change, and
        nothing knows of the new run until its request is published after this returns.
        """
        record = await self.get_run(src)
        if record is None:
            raise RunNotFoundError(src)
        entries = await self.read_journal(src)
        kept = fork_entries(entries, upto_key)
        if kept is None:
            keys = [je.entry.key for je in entries if isinstance(je.entry, StepDone | StepError)]
            shown = ", ".join(keys[:20]) + (", ..." if len(keys) > 20 else "")
            raise InvalidRequestError(
                f"run {src!r} has no completed or failed step {upto_key!r} "
                f"(journaled steps: {shown or 'none'})"
            )
        now = time.time()
        marker = Started(epoch=0, worker=f"fork:{src}@{upto_key}", at=now)
        reply = await self._fork(
            keys=self._keys(dst),
            args=[
                dst,
                record.agent,
                bytes(record.input or b""),
                repr(now),
                trace,
                f"{src}@{upto_key}",
                encode_entry(marker),
                *(encode_entry(e) for e in kept),
            ],
        )
        if reply != b"ok":
            raise InvalidRequestError(f"run id {dst!r} is already taken; fork to another id")
        await self._index(dst, now)
        return record

    async def _index(self, run_id: str, now: float) -> None:
        if self._pipe is not None:
            # Both go out in one write; Redis answers in order, so the second settles last.
            first = self._pipe.call("ZADD", self.runs_key, "NX", repr(now), run_id)
            second = self._pipe.call("SADD", self.active_key, run_id)
            first.add_done_callback(_settled_quietly)
            try:
                replies = (await second, await first)
            except (RedisConnectionError, RedisTimeoutError):
                pass
            else:
                if not any(isinstance(r, ResponseError) for r in replies):
                    return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.runs_key, {run_id: now}, nx=True)
            pipe.sadd(self.active_key, run_id)
            await pipe.execute()

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run's record, or None for an unknown run id."""
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(self.record_key(run_id)))
        return record_from_hash(raw)

    async def list_runs(self, limit: int = 100) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first."""
        ids = cast("list[bytes]", await self.redis.zrevrange(self.runs_key, 0, limit - 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hgetall(self.record_key(rid.decode()))
            rows = await pipe.execute()
        records: list[RunRecord] = []
        for row in rows:
            try:
                record = record_from_hash(row)
            except CorruptRecordError as exc:  # one bad hash must not hide every other run
                _log.warning("run.record_corrupt", error=str(exc))
                continue
            if record is not None:
                records.append(record)
        return records

    async def active_runs(self) -> list[str]:
        """Ids of runs that have not ended (accepted or running)."""
        members = cast("set[bytes]", await self.redis.smembers(self.active_key))
        return sorted(m.decode() for m in members)

    async def mark_inactive(self, run_id: str) -> None:
        """Drop an ended run from the active set (a separate key: not atomic with finish)."""
        await self.redis.srem(self.active_key, run_id)

    # -- ownership ----------------------------------------------------------------------

    async def claim(
        self,
        run_id: str,
        *,
        agent: str,
        input: msgspec.Raw,
        epoch: int,
        worker: str,
        trace: str = "",
        run_timeout: float = 0.0,
        kind: str = "start",
        max_placements: int = 0,
    ) -> Claim:
        """Make ``epoch`` the run's owner if it is newer than the current one.

        Refuses a run of another agent and a resume of an unknown run; fails the run when
        this is its ``max_placements + 1``-th placement in a row without journal progress.
        """
        now = time.time()
        fresh = encode_entry(Started(epoch=epoch, worker=worker, at=now))
        resumed = encode_entry(Started(epoch=epoch, worker=worker, at=now, resumed=True))
        poison_error = (
            f"run {run_id!r} was placed {max_placements + 1} times in a row without "
            f"journaling anything (max_placements={max_placements}): its actor or worker "
            "dies on every placement (a crash, an exception that escapes the run, a step "
            "that kills its process). It is failed instead of being placed again."
        )
        poison = encode_entry(
            Finished(
                status="failed",
                epoch=epoch,
                worker=worker,
                at=now,
                error=ErrorInfo(POISONED_ERROR, poison_error, retryable=False),
            )
        )
        reply = await self._with_retry(
            self._claim,
            run_id,
            [
                epoch,
                worker,
                repr(now),
                run_id,
                agent,
                bytes(input),
                trace,
                fresh,
                resumed,
                repr(run_timeout or 0.0),
                kind,
                max_placements,
                poison,
                poison_error,
            ],
        )
        outcome = reply[0].decode()
        if outcome in ("terminal", "wrong_agent"):
            return Claim(outcome, status=reply[1].decode())
        if outcome in ("stale", "missing"):
            return Claim(outcome)
        if outcome == "poisoned":
            await self.mark_inactive(run_id)
            return Claim("poisoned", seq=int(reply[1]), status=poison_error, at=now)
        await self._index(run_id, now)
        return Claim(
            "ok",
            seq=int(reply[1]),
            cancel=reply[2].decode(),
            input=bytes(reply[3]),
            trace=reply[4].decode(),
            deadline=float(reply[5] or 0.0),
            at=now,
        )

    # -- journal ------------------------------------------------------------------------

    async def read_journal(self, run_id: str, after: int = 0) -> list[JournalEntry]:
        """All journal entries with ``seq > after``, in order."""
        start = f"({after}-0" if after else "-"
        rows = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrange(self.journal_key(run_id), min=start, max="+"),
        )
        return [
            JournalEntry(seq=int(rid.split(b"-", 1)[0]), entry=decode_entry(fields[b"d"]))
            for rid, fields in rows
        ]

    async def journal_bytes(self, run_id: str) -> int:
        """Memory Redis uses for the run's journal (``MEMORY USAGE``), for size reports."""
        usage = await self.redis.memory_usage(self.journal_key(run_id), samples=0)
        return int(usage or 0)

    async def append(self, run_id: str, epoch: int, seq: int, entry: Entry) -> str:
        """Append ``entry`` at ``seq`` if ``epoch`` still owns the run.

        Returns the run's cancel flag ("" when not cancelled). Raises :class:`LeaseLost` when
        a newer epoch owns the run. An append retried after a lost reply is recognised and
        not written twice.
        """
        return await self.append_future(run_id, epoch, seq, entry)

    def append_future(self, run_id: str, epoch: int, seq: int, entry: Entry) -> asyncio.Future[str]:
        """:meth:`append` as a future that is already under way and settles on its own.

        The caller can stop waiting (be cancelled) without abandoning the write, and no
        task is created on the fast path: the append goes down the shared pipe, and only a
        lost connection, an error reply or a taken position falls back to :meth:`append`'s
        retrying path (which recognises an entry the first try already wrote).
        """
        data = encode_entry(entry)
        args: list[object] = [epoch, f"{seq}-0", data, repr(time.time())]
        if self._pipe is None:
            return asyncio.ensure_future(self._fenced(self._append, run_id, args, seq, data))
        loop = asyncio.get_running_loop()
        out: asyncio.Future[str] = SettlingFuture(loop=loop)
        first = self._evalsha(self._pipe, self._append, run_id, args)

        def settle(f: asyncio.Future[Any]) -> None:
            reply = None if f.exception() is not None else f.result()
            if isinstance(reply, list) and reply[0] in (b"ok", b"stale"):
                try:
                    out.set_result(self._fenced_reply(run_id, args, reply))
                except LeaseLost as exc:
                    out.set_exception(exc)
                return
            # Lost connection, error reply (NOSCRIPT after a restart) or a taken position:
            # the redis-py path, without trying the pipe a second time.
            slow = loop.create_task(
                self._fenced(self._append, run_id, args, seq, data, via_pipe=False)
            )
            slow.add_done_callback(lambda t: _chain(t, out))

        first.add_done_callback(settle)
        return out

    async def finish(self, run_id: str, epoch: int, seq: int, entry: Finished) -> None:
        """Append the final entry and set the record's end state, fenced by ``epoch``."""
        data = encode_entry(entry)
        err = entry.error or ErrorInfo("", "")
        args = [
            epoch,
            f"{seq}-0",
            data,
            repr(entry.at),
            entry.status,
            bytes(entry.result),
            err.type,
            err.message,
        ]
        await self._fenced(self._finish, run_id, args, seq, data)
        if self._pipe is None:
            await self.mark_inactive(run_id)
            return
        # Not waited for: the run has ended in its record, and a supervisor drops ended runs
        # it still finds in the active set, so a lost SREM costs nothing but a later one.
        self._pipe.call("SREM", self.active_key, run_id).add_done_callback(_settled_quietly)

    async def _fenced(
        self,
        script: object,
        run_id: str,
        args: list[object],
        seq: int,
        data: bytes,
        *,
        via_pipe: bool = True,
    ) -> str:
        reply = await self._with_retry(script, run_id, args, via_pipe=via_pipe)
        if reply[0] in (b"ok", b"stale"):
            return self._fenced_reply(run_id, args, reply)
        # conflict: our id is taken. It is ours if the stored entry is byte-identical.
        rows = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrange(self.journal_key(run_id), min=f"{seq}-0", max=f"{seq}-0"),
        )
        if rows and rows[0][1].get(b"d") == data:
            cancel = cast("bytes | None", await self.redis.hget(self.record_key(run_id), "cancel"))
            return cancel.decode() if cancel else ""
        raise JournalConflict(
            f"run {run_id!r}: journal position {seq} is taken by another entry "
            f"({reply[1].decode()})"
        )

    @staticmethod
    def _fenced_reply(run_id: str, args: list[object], reply: list[bytes]) -> str:
        """The cancel flag from an ``ok`` reply; :class:`LeaseLost` from a ``stale`` one."""
        if reply[0] == b"ok":
            return reply[1].decode()
        raise LeaseLost(
            f"run {run_id!r}: epoch {args[0]} no longer owns the run "
            f"(current epoch {reply[1].decode() or 'none'})"
        )

    def _evalsha(
        self, pipe: ScriptPipe, script: object, run_id: str, args: list[object]
    ) -> asyncio.Future[Any]:
        """``script`` on the run's two keys, sent down the shared pipe."""
        sha: str = script.sha  # type: ignore[attr-defined]
        return pipe.call("EVALSHA", sha, 2, *self._keys(run_id), *args)  # type: ignore[arg-type]

    async def _with_retry(
        self, script: object, run_id: str, args: list[object], *, via_pipe: bool = True
    ) -> Any:
        """Run a fenced script, riding out a Redis restart for up to ``retry_for`` seconds.

        A script whose reply was lost may have run: the retry then hits its own entry at
        the same position, which ``_fenced`` recognises (explicit ids make this safe).
        """
        if self._pipe is not None and via_pipe:
            # First down the shared pipe; an error reply (NOSCRIPT after a Redis restart) or
            # a lost connection falls through to redis-py, which loads scripts and retries.
            try:
                reply = await self._evalsha(self._pipe, script, run_id, args)
            except (RedisConnectionError, RedisTimeoutError):
                pass
            else:
                if not isinstance(reply, ResponseError):
                    return reply
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await script(keys=self._keys(run_id), args=args)  # type: ignore[operator]
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailableError(
                        f"run {run_id!r}: Redis unreachable for {self.retry_for:.0f}s: {exc}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- cancellation -------------------------------------------------------------------

    async def request_cancel(self, run_id: str, reason: str = "cancelled") -> CancelOutcome:
        """Cancel a run: at once if it was never placed, else at its owner's next step."""
        outcome, _ = await self.cancel_run(run_id, reason)
        return outcome

    async def cancel_run(
        self, run_id: str, reason: str = "cancelled"
    ) -> tuple[CancelOutcome, int | None]:
        """Like :meth:`request_cancel`; also returns the epoch to wake if the run is passivated."""
        now = time.time()
        entry = _unplaced_end(now, "cancelled", "RunCancelled", reason)
        reply = await self._cancel(keys=self._keys(run_id), args=[repr(now), reason, entry])
        outcome: CancelOutcome = reply[0].decode()
        if outcome == "cancelled":
            await self.mark_inactive(run_id)
        wake = int(reply[2]) if len(reply) > 2 and reply[1] == b"wake" else None
        return outcome, wake

    async def reject_request(
        self, run_id: str, agent: str, reason: str, *, own: bool
    ) -> tuple[RejectOutcome, int]:
        """Record the rejection of an unusable request naming ``run_id`` (sent to ``agent``).

        Ends the run (``rejected``, with the seq of its Finished entry) only when ``own``
        (the request is the run's own submission) and the run of ``agent`` was never placed.
        ``missing``: no such run; ``unrelated``: the run is live, ended or another agent's,
        and the rejection is not about it.
        """
        now = time.time()
        entry = _unplaced_end(now, "failed", REJECTED_ERROR, reason)
        reply = await self._reject(
            keys=self._keys(run_id), args=[repr(now), reason, entry, agent, "1" if own else "0"]
        )
        outcome: RejectOutcome = reply[0].decode()
        if outcome == "rejected":
            await self.mark_inactive(run_id)
            return outcome, int(reply[1])
        return outcome, 0

    async def dead_letter(self, run_id: str, agent: str, reason: str) -> bool:
        """Fail a run whose request could not be delivered; False if a worker placed it."""
        now = time.time()
        entry = _unplaced_end(now, "failed", "DeadLettered", reason)
        reply = await self._dead_letter(
            keys=self._keys(run_id), args=[repr(now), reason, entry, run_id, agent]
        )
        if reply[0] == b"failed":
            await self.mark_inactive(run_id)
            return True
        return False

    async def reject(self, run_id: str, agent: str, reason: str) -> str:
        """End ``agent``'s run that was never placed as rejected (``RunRejected`` to readers).

        For a request that will never be served (no worker serves its agent, or the runs
        stream refused it): the run's own request, so :meth:`reject_request` with ``own``.
        Returns ``rejected``, ``missing`` (no record: nothing to end) or ``skipped`` (a
        worker placed it meanwhile, it has ended, or it is another agent's run).
        """
        outcome, _ = await self.reject_request(run_id, agent, reason, own=True)
        return "skipped" if outcome == "unrelated" else outcome

    # -- signals and passivation ------------------------------------------------------------

    async def add_signal(
        self, run_id: str, name: str, payload: bytes, *, max_pending: int = 0
    ) -> tuple[str, str, int]:
        """Store a signal for the run. Returns (outcome, signal id, epoch).

        ``outcome`` is ``wake`` when the run is passivated waiting for this signal (the
        caller must have it re-placed), ``stored``, ``terminal``, ``missing``, or ``full``
        when the run already holds ``max_pending`` unconsumed signals (then the third
        item is how many; nothing was stored). ``max_pending`` 0 means no limit.
        """
        reply = await self._signal(
            keys=[self.record_key(run_id), self.signals_key(run_id)],
            args=[name, payload, repr(time.time()), max_pending],
        )
        outcome = reply[0].decode()
        if outcome in ("wake", "stored", "full"):
            return outcome, reply[1].decode(), int(reply[2])
        return outcome, "", 0

    async def read_signals(
        self, run_id: str, *, after: str = "", count: int | None = None
    ) -> list[tuple[str, str, bytes]]:
        """Signals sent to the run and not yet deleted: (signal id, name, msgpack payload).

        Oldest first; only those after signal id ``after`` when given, at most ``count``.
        """
        rows = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrange(
                self.signals_key(run_id), min=f"({after}" if after else "-", count=count
            ),
        )
        return [(sid.decode(), f[b"name"].decode(), f.get(b"payload", b"")) for sid, f in rows]

    async def read_signal(self, run_id: str, sid: str) -> bytes | None:
        """One signal's payload, or None when it is gone."""
        found = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await self.redis.xrange(self.signals_key(run_id), min=sid, max=sid),
        )
        return found[0][1].get(b"payload", b"") if found else None

    async def delete_signals(self, run_id: str, sids: list[str]) -> None:
        """Drop consumed signals from the inbox (their consumption is in the journal)."""
        if sids:
            await self.redis.xdel(self.signals_key(run_id), *sids)

    async def cancel_flag(self, run_id: str) -> str:
        """The run's pending cancellation reason ("" for none), without reading the record."""
        raw = await self.redis.hget(self.record_key(run_id), "cancel")
        return raw.decode() if isinstance(raw, bytes) else ""

    async def passivate(self, run_id: str, epoch: int, waiting_for: str, wake_at: float) -> None:
        """Mark the run waiting (fenced by ``epoch``) and arm its timer if it has one."""
        reply = await self._passivate(
            keys=[self.record_key(run_id)],
            args=[epoch, waiting_for, repr(wake_at), repr(time.time())],
        )
        if reply[0] != b"ok":
            raise LeaseLost(f"run {run_id!r}: epoch {epoch} no longer owns the run")
        if wake_at:
            await self.redis.zadd(self.timers_key, {run_id: wake_at})

    async def due_timers(self, now: float, limit: int = 500) -> list[str]:
        """Runs whose timer is due."""
        ids = cast(
            "list[bytes]",
            await self.redis.zrangebyscore(self.timers_key, "-inf", now, start=0, num=limit),
        )
        return [i.decode() for i in ids]

    async def remove_timer(self, run_id: str) -> None:
        """Disarm a run's timer."""
        await self.redis.zrem(self.timers_key, run_id)
