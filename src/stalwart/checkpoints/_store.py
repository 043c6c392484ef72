"""The Redis side of a run: its record, its journal, and the fenced writes to both.

``CheckpointStore`` is the facade; the seams live in their own modules: the key schema
(``_keys``), the epoch fence (``_fence``), running scripts through the pipe and a Redis
restart (``_writer``), claim/cancel outcomes and fork rules (``_runs``), and steering a run
from outside (``_control``: cancel, signals, timers). ``RunStore`` (``_scoped``) is the part
agent code sees.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, cast

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    BusyLoadingError,
    ReadOnlyError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from stalwart._transport import redis_target
from stalwart.checkpoints import _scripts
from stalwart.checkpoints._cluster import (
    cluster_enabled,
    connect_cluster,
    is_cluster_url,
    parse_cluster_url,
    single_as_cluster,
)
from stalwart.checkpoints._cluster_pipe import ClusterPipe
from stalwart.checkpoints._codec import seal_bytes
from stalwart.checkpoints._control import RunControl
from stalwart.checkpoints._conversations import ConversationStore
from stalwart.checkpoints._entries import (
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    RunRecord,
    Started,
    StepDone,
    StepError,
    decode_entry,
    encode_entry,
    record_from_hash,
    seal_entry,
)
from stalwart.checkpoints._keys import KeySchema
from stalwart.checkpoints._pipe import ScriptPipe
from stalwart.checkpoints._reach import first_contact, parse_redis_url
from stalwart.checkpoints._runs import (
    POISONED_ERROR,
    REJECTED_ERROR,
    CancelOutcome,
    Claim,
    RejectOutcome,
    claim_entries,
    fork_entries,
    poison_error,
    read_claim,
)
from stalwart.checkpoints._sentinel import is_sentinel_url, parse_sentinel_url, resolve_primary
from stalwart.checkpoints._writer import JournalConflict, ScriptRunner, SettlingFuture
from stalwart.errors import (
    ConfigurationError,
    CorruptRecordError,
    InvalidRequestError,
    RunNotFoundError,
)

if TYPE_CHECKING:
    import asyncio

    import msgspec
    from redis.asyncio.sentinel import Sentinel

    from stalwart.config import Settings

# Private names other modules import from here (kept where they were).
__all__ = [
    "POISONED_ERROR",
    "REJECTED_ERROR",
    "CancelOutcome",
    "CheckpointStore",
    "Claim",
    "JournalConflict",
    "RejectOutcome",
    "SettlingFuture",
    "fork_entries",
]

_log = structlog.get_logger("stalwart.checkpoints")

_WAIT_ON_CLUSTER = (
    "redis_wait_replicas is not supported on a Redis Cluster yet (WAIT is per connection and "
    "a cluster's writes go to several masters): set it to 0, or use a primary with replicas "
    "behind Sentinel (docs/deployment.md)"
)

CLUSTER_INDEX_SHARDS = 16
"""Index shards on a Redis Cluster when ``redis_index_shards`` is 0 (auto): enough to spread
submits and finishes over the masters of a typical cluster, few enough that a reader's one
read per shard stays cheap."""

if TYPE_CHECKING:
    from stalwart.checkpoints._cluster import ClusterTarget


def _append_args(epoch: int, seq: int, data: bytes, at: str) -> bytes:
    """An append's arguments (``epoch``, ``<seq>-0``, ``data``, ``at``) in RESP, as
    ``pack_args`` gives them, in one format: this runs for every step."""
    e = b"%d" % epoch
    s = b"%d-0" % seq
    t = at.encode()
    return b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(e), e, len(s), s, len(data), data, len(t), t,
    )  # fmt: skip


class CheckpointStore(RunControl):
    """Journal and run record of every run, in one Redis primary or a Redis Cluster.

    Keys (see :class:`KeySchema`), with the run id as a hash tag so a run's keys share a
    cluster slot: ``<ns>:{<run_id>}:run`` (hash), ``<ns>:{<run_id>}:journal`` (stream),
    the runs index (sorted set of run ids by creation time) and the active set (runs not
    yet ended, scanned by the supervisor), each one key or ``index_shards`` keys. Cancels,
    signals and timers come from :class:`RunControl`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str = "stalwart",
        *,
        retry_for: float = 30.0,
        index_shards: int = 1,
    ) -> None:
        self.redis = client
        """The redis-py client (on a cluster a ``RedisCluster``, which takes the same
        single-key commands and scripts)."""
        self.ns = namespace
        self.keys = KeySchema(namespace, index_shards)
        """Every key this store uses."""
        super().__init__(ScriptRunner(client, self.keys, retry_for))
        self._create = client.register_script(_scripts.CREATE_RUN)
        self._claim = client.register_script(_scripts.CLAIM)
        self._append = client.register_script(_scripts.APPEND)
        self._finish = client.register_script(_scripts.FINISH)
        self._fork = client.register_script(_scripts.FORK_RUN)
        self._sentinel: Sentinel | None = None
        self._conversations: ConversationStore | None = None

    @property
    def conversations(self) -> ConversationStore:
        """The conversations of this namespace (``_conversations``), in the same Redis."""
        if self._conversations is None:
            self._conversations = ConversationStore(self.redis, self.ns)
        return self._conversations

    @property
    def retry_for(self) -> float:
        """How long a journal write keeps retrying through a Redis outage before giving up."""
        return self._runner.retry_for

    @retry_for.setter
    def retry_for(self, value: float) -> None:
        self._runner.retry_for = value

    @classmethod
    async def connect(
        cls,
        url: str,
        namespace: str = "stalwart",
        *,
        max_connections: int = 64,
        connect_timeout: float = 10.0,
        settings: Settings | None = None,
    ) -> CheckpointStore:
        """Connect to Redis at ``url`` and check it answers within ``connect_timeout`` s.

        ``max_connections`` bounds the pool for everything but journal appends (which share
        one pipelined connection); callers past it wait for a connection. TLS comes from a
        ``rediss://`` URL's ``ssl_*`` options and ``settings``' ``redis_tls_*`` files: one
        context serves the pool and the append pipe. Raises :class:`ConfigurationError` for
        a URL that is not a Redis URL or TLS options that cannot be used (naming the option
        and the file), and :class:`ServerUnavailableError` (URL with credentials masked,
        and the reason) when Redis does not answer in time, refuses the credentials or the
        TLS handshake, or is not Redis.

        A Redis Cluster is used through a cluster-aware client and one append pipe per
        master: named by a ``redis+cluster://host:port[,host:port...]`` URL, or detected
        (``CLUSTER INFO``) behind a plain ``redis://`` URL of any of its nodes (see
        ``_cluster``). ``settings.redis_index_shards`` splits the shared indexes (0: 1 on a
        single Redis, :data:`CLUSTER_INDEX_SHARDS` on a cluster).

        A ``redis+sentinel://`` URL (see ``_sentinel``) connects to the primary the
        Sentinels name, and asks them again on every reconnection (pool and pipe alike).
        ``settings``' ``redis_wait_replicas`` makes every run write wait for replicas.
        """
        shards = settings.redis_index_shards if settings is not None else 0
        if settings is not None and settings.redis_wait_replicas and is_cluster_url(url):
            raise ConfigurationError(_WAIT_ON_CLUSTER)
        if is_cluster_url(url):
            return await cls._connect_cluster(
                parse_cluster_url(url, settings),
                namespace,
                max_connections,
                connect_timeout,
                shards,
            )
        parse_redis_url(url)
        sentinel = is_sentinel_url(url)
        if (
            sentinel
            and settings
            and (settings.redis_tls_ca or settings.redis_tls_cert or settings.redis_tls_key)
        ):
            raise ConfigurationError(
                "Redis: TLS settings (redis_tls_*) are set but TLS through Sentinel is not "
                "supported yet: unset them for a redis+sentinel:// URL"
            )
        target = None if sentinel else redis_target(url, settings)
        # First contact without retries, bounded: the pool below retries for ~25 s.
        # Appends go out as EVALSHA on the pipe: make sure Redis knows the script.
        await first_contact(url, connect_timeout, (_scripts.APPEND,), target=target)
        if target is not None and ScriptPipe.supports(url) and not url.lower().startswith("unix"):
            if await cluster_enabled(target, connect_timeout):
                if settings is not None and settings.redis_wait_replicas:
                    raise ConfigurationError(_WAIT_ON_CLUSTER)
                return await cls._connect_cluster(
                    single_as_cluster(url, settings),
                    namespace,
                    max_connections,
                    connect_timeout,
                    shards,
                )
        # Every command rides out a short Redis restart or failover. Scripts are safe to
        # resend: appends use explicit ids (a resent append finds its own entry), claims are
        # idempotent. A blocking pool: a burst of placements past the pool's size waits for
        # a free connection instead of failing (redis-py's default pool raises at its limit).
        common: dict[str, object] = {
            "max_connections": max_connections,
            "timeout": 30,
            "decode_responses": False,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=30),
            # READONLY and LOADING: a demoted primary or one still loading its data.
            "retry_on_error": [
                RedisConnectionError,
                RedisTimeoutError,
                ReadOnlyError,
                BusyLoadingError,
            ],
        }
        wait = (settings.redis_wait_replicas, settings.redis_wait_timeout) if settings else (0, 100)
        pipe: ScriptPipe | None = None
        manager = None
        if sentinel:
            parsed = parse_sentinel_url(url)
            manager = parsed.sentinel(socket_timeout=5.0, socket_connect_timeout=2.0)
            pool: aioredis.ConnectionPool = parsed.pool(manager, **common)

            async def resolve() -> tuple[str, int]:
                return await resolve_primary(manager, parsed.service)

            host, port = await resolve()
            pipe = ScriptPipe(
                parsed.node_url(host, port),
                resolve=resolve,
                wait_replicas=wait[0],
                wait_timeout_ms=wait[1],
            )
        else:
            assert target is not None
            pool = aioredis.BlockingConnectionPool(**target.pool_kwargs(), **common)  # type: ignore[arg-type]
            if ScriptPipe.supports(url):
                pipe = ScriptPipe(
                    target.url,
                    ssl_context=target.ssl_context,
                    wait_replicas=wait[0],
                    wait_timeout_ms=wait[1],
                )
        client = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        store = cls(client, namespace, index_shards=shards or 1)
        store._runner.wait_replicas, store._runner.wait_timeout_ms = wait
        store._runner.pipe = pipe
        store._sentinel = manager
        return store

    @classmethod
    async def _connect_cluster(
        cls,
        ct: ClusterTarget,
        namespace: str,
        max_connections: int,
        connect_timeout: float,
        shards: int,
    ) -> CheckpointStore:
        """The store on a Redis Cluster: cluster client, scripts on every master, and an
        append pipe per master (:class:`ClusterPipe`)."""
        scripts = (_scripts.APPEND, _scripts.FINISH, _scripts.CLAIM)
        client = await connect_cluster(
            ct, max_connections=max_connections, connect_timeout=connect_timeout, scripts=scripts
        )
        # RedisCluster has every command the store sends (one key each, or a script on one
        # run's slot); typed as Redis so the store and its users keep one client type.
        store = cls(
            cast("aioredis.Redis", client),
            namespace,
            index_shards=shards or CLUSTER_INDEX_SHARDS,
        )
        ssl_context = ct.target.ssl_context
        store._runner.pipe = ClusterPipe(
            client, lambda host, port: ScriptPipe(ct.node_url(host, port), ssl_context=ssl_context)
        )
        return store

    async def close(self) -> None:
        """Close the connection pool (and the append pipe, and the Sentinel connections)."""
        if self._runner.pipe is not None:
            await self._runner.pipe.close()
        await self.redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    # -- keys (see KeySchema) -------------------------------------------------------------

    def record_key(self, run_id: str) -> str:
        """Key of the run record hash."""
        return self.keys.run(run_id).record

    async def record_field(self, run_id: str, field: str) -> str:
        """One field of the run's record ("" when it or the record is missing); down the
        append pipe, as it is read at every placement."""
        raw = await self._runner.command("HGET", self.record_key(run_id), field)
        return raw.decode() if isinstance(raw, bytes) else (raw or "")

    async def set_record_field_once(self, run_id: str, field: str, value: str) -> bool:
        """Set a field of the run's record unless it is set (``HSETNX``): whether this set it.
        Sent again after a lost reply, it answers False for its own first write."""
        return bool(await self._runner.command("HSETNX", self.record_key(run_id), field, value))

    def journal_key(self, run_id: str) -> str:
        """Key of the run's journal stream."""
        return self.keys.run(run_id).journal

    def signals_key(self, run_id: str) -> str:
        """Key of the run's signal inbox (a stream)."""
        return self.keys.run(run_id).signals

    @property
    def timers_key(self) -> str:
        """Sorted set of passivated runs by their timer (unsharded indexes only; see
        :attr:`KeySchema.timers_shards`)."""
        return self.keys.timers

    @property
    def runs_key(self) -> str:
        """Sorted set of all run ids by creation time (unsharded indexes only)."""
        return self.keys.runs

    @property
    def active_key(self) -> str:
        """Set of run ids that have not ended (unsharded indexes only)."""
        return self.keys.active

    # -- run records --------------------------------------------------------------------

    async def create_run(
        self, run_id: str, agent: str, input: msgspec.Raw, *, trace: str = "", lane: str = ""
    ) -> tuple[str, str] | None:
        """Create the record of a new run (in ``lane``; "" is the default lane). Returns
        ``(status, agent)`` if it already existed.

        ``input`` is sealed here if the caller did not seal it already (payload encryption).
        """
        now = time.time()
        args: list[str | bytes] = [run_id, agent, seal_bytes(bytes(input)), repr(now), trace]
        if lane:
            args.append(lane)
        existing = await self._create(keys=[self.record_key(run_id)], args=args)
        if existing:
            return existing[0].decode(), existing[1].decode()
        await self._runner.index(run_id, now)
        return None

    async def set_conversation(self, run_id: str, conversation: str, on_busy: str) -> None:
        """Note in the run's record which conversation it is a turn of, and its policy (a
        resumed run reads them back: resume requests do not carry them)."""
        await self.redis.hset(
            self.record_key(run_id), mapping={"conversation": conversation, "on_busy": on_busy}
        )

    async def note_wait(self, run_id: str, signal: str, deadline: float) -> None:
        """Show the durable wait the run is in on its record (``wait_signal``,
        ``wait_deadline``); ``note_wait(run_id, "", 0)`` when it has ended. Informational:
        callers write it only after the fenced journal write of the wait's start or end."""
        await self.redis.hset(
            self.record_key(run_id),
            mapping={"wait_signal": signal, "wait_deadline": repr(deadline)},
        )

    async def run_conversation(self, run_id: str) -> tuple[str, str, float]:
        """``(conversation, on_busy, created_at)`` of the run ("", "queue" when it has no
        conversation)."""
        raw = cast(
            "list[bytes | None]",
            await self.redis.hmget(
                self.record_key(run_id), ["conversation", "on_busy", "created_at"]
            ),
        )
        conv = raw[0].decode() if raw[0] else ""
        created = float(raw[2]) if raw[2] else 0.0
        return conv, (raw[1].decode() if raw[1] else "queue"), created

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
            keys=self._runner.run_keys(dst),
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
        await self._runner.index(dst, now)
        return record

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run's record, or None for an unknown run id."""
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(self.record_key(run_id)))
        return record_from_hash(raw)

    async def list_runs(self, limit: int = 100) -> list[RunRecord]:
        """The newest ``limit`` runs, newest first."""
        ids = await self.newest_run_ids(limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hgetall(self.record_key(rid))
            rows = await pipe.execute() if ids else []
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

    async def newest_run_ids(self, limit: int = 100) -> list[str]:
        """Ids of the newest ``limit`` runs, newest first (merged across index shards)."""
        if limit <= 0:
            return []
        newest: list[tuple[float, str]] = []
        # One read per shard (each its own slot on a cluster): the newest ``limit`` of the
        # union are among the newest ``limit`` of each shard.
        for key in self.keys.runs_shards:
            rows = cast(
                "list[tuple[bytes, float]]",
                await self.redis.zrevrange(key, 0, limit - 1, withscores=True),
            )
            newest.extend((score, rid.decode()) for rid, score in rows)
        newest.sort(reverse=True)  # as ZREVRANGE orders: score, then id, descending
        return [rid for _, rid in newest[:limit]]

    async def active_runs(self) -> list[str]:
        """Ids of runs that have not ended (accepted or running), from every shard."""
        found: set[str] = set()
        for key in self.keys.active_shards:
            members = cast("set[bytes]", await self.redis.smembers(key))
            found.update(m.decode() for m in members)
        return sorted(found)

    async def mark_inactive(self, run_id: str) -> None:
        """Drop an ended run from the active set (a separate key: not atomic with finish)."""
        await self._runner.mark_inactive(run_id)

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

        A worker's epoch is its lease's position, :attr:`LeasePosition.epoch`. Refuses a run
        of another agent and a resume of an unknown run; fails the run when this is its
        ``max_placements + 1``-th placement in a row without journal progress.
        """
        now = time.time()
        poison = poison_error(run_id, max_placements)
        fresh, resumed, poisoned = claim_entries(epoch, worker, now, poison)
        reply = await self._runner.call(
            self._claim,
            run_id,
            [
                epoch,
                worker,
                repr(now),
                run_id,
                agent,
                seal_bytes(bytes(input)),
                trace,
                fresh,
                resumed,
                repr(run_timeout or 0.0),
                kind,
                max_placements,
                poisoned,
                poison,
            ],
        )
        claim = read_claim(reply, now, poison, epoch)
        if claim.outcome == "poisoned":
            await self.mark_inactive(run_id)
        elif claim.outcome == "ok":
            await self._runner.index(run_id, now)
        return claim

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
        task is created on the fast path (see :meth:`ScriptRunner.write_future`).
        """
        data = encode_entry(seal_entry(entry))
        at = repr(time.time())
        args: list[object] = [epoch, f"{seq}-0", data, at]
        return self._runner.write_future(
            self._append, run_id, args, seq, data, _append_args(epoch, seq, data, at)
        )

    async def finish(self, run_id: str, epoch: int, seq: int, entry: Finished) -> None:
        """Append the final entry and set the record's end state, fenced by ``epoch``."""
        entry = seal_entry(entry)  # the record gets the same sealed result and message
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
        await self._runner.write(self._finish, run_id, args, seq, data)
        # Not waited for (down the pipe): the run has ended in its record, and a supervisor
        # drops ended runs it still finds in the active set, so a lost SREM costs nothing
        # but a later one.
        await self._runner.mark_inactive(run_id, wait=False)
