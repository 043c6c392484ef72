"""Looking up (and, where allowed, creating) the streams, KV buckets and consumers Stalwart uses."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, TypeVar

import structlog
from nats.errors import ConnectionReconnectingError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import (
    APIError,
    BadRequestError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from stalwart.errors import ConfigurationError, ServerUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.js import JetStreamContext
    from nats.js.api import StreamInfo

    from stalwart.broker._names import Names
    from stalwart.config import Settings

log = structlog.get_logger("stalwart.broker")

# Expiry markers only need to live long enough for every watcher to see them; a takeover
# CASes against whatever the key's last message is, marker or not. Independent of the
# lease TTL, so processes configured with different TTLs agree on the bucket.
_MARKER_TTL = 60
_EXISTS_DIFFERENTLY = 10058


# Limit fields a process fills in on an existing stream that has none of its own (a stream
# created before Stalwart set limits): an unlimited value means nobody chose one.
_LIMIT_FIELDS = ("max_msgs", "max_bytes", "max_msg_size")


PROVISION_HINT = (
    "run `stalwart provision` with admin rights (docs/security.md#least-privilege-roles)"
)


def _no_answer(what: str, names: Names) -> ConfigurationError:
    # nats-server drops a request its user may not publish (it logs a permissions
    # violation and tells the client asynchronously), so the only answer is a timeout.
    return ConfigurationError(
        f"NATS did not answer the request to {what} (namespace {names.namespace!r}): this NATS "
        "user is probably not allowed to (a permissions violation gets no reply). Check its "
        f"permissions for the namespace, or {PROVISION_HINT}. (On a NATS cluster, JetStream "
        "also stays silent while it has no meta leader: too few servers up.)"
    )


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    NoStreamResponseError,
    NoRespondersError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
)
"""What a JetStream call raises while a replicated stream elects a leader (or the client
reconnects to another server): worth retrying for a few seconds, unlike a refusal."""

_T = TypeVar("_T")


async def retry_transient(
    what: str,
    call: Callable[[], Awaitable[_T]],
    within: float,
    *,
    pause: float = 0.1,
    timeouts: bool = False,
) -> _T:
    """``await call()``, again after :data:`TRANSIENT_ERRORS` for up to ``within`` seconds.

    A cluster that lost a stream's leader answers "no responders" for the seconds an
    election takes (4-5 s measured on loopback); a process starting then must wait it out
    rather than exit. Past ``within``, :class:`ServerUnavailableError` names ``what``.
    With ``timeouts``, a request nobody answered is retried too (within the same bound):
    a JetStream cluster electing its meta leader answers API requests not at all.
    """
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except NatsTimeoutError:
            if not timeouts or time.monotonic() >= deadline:
                raise
            log.info("jetstream.no_answer_retrying", what=what)
        except TRANSIENT_ERRORS as exc:
            if time.monotonic() >= deadline:
                raise ServerUnavailableError(
                    f"NATS JetStream could not {what} for {within:g}s ({type(exc).__name__}): "
                    "on a cluster, too few servers may be up for the stream to elect a leader"
                ) from exc
            log.info("jetstream.unavailable_retrying", what=what, error=type(exc).__name__)
            await asyncio.sleep(pause)


def _missing(what: str, names: Names) -> ConfigurationError:
    return ConfigurationError(
        f"{what} of namespace {names.namespace!r} does not exist and this process does not "
        f"create it (STALWART_PROVISION=off): {PROVISION_HINT}"
    )


async def lookup_stream(
    js: JetStreamContext, name: str, names: Names, *, within: float = 10.0
) -> StreamConfig | None:
    """The config of stream ``name``, or None when it does not exist.

    Retried for up to ``within`` seconds while JetStream is unavailable (an election).
    """
    try:
        info = await retry_transient(f"look up stream {name}", lambda: js.stream_info(name), within)
    except NotFoundError:
        return None
    except NatsTimeoutError:
        raise _no_answer(f"look up stream {name}", names) from None
    return info.config


def _replication_refused(what: str, exc: APIError, settings: Settings) -> ConfigurationError:
    return ConfigurationError(
        f"NATS refused {what} with {settings.nats_replicas} replica(s)"
        f"{_placement_words(settings)}: {exc.description or exc!r} (error {exc.err_code}). "
        "STALWART_NATS_REPLICAS must not exceed the number of JetStream servers that can hold "
        "it (1 on a single server; the servers must also match STALWART_NATS_PLACEMENT_CLUSTER "
        "and STALWART_NATS_PLACEMENT_TAGS): lower it, or add servers"
    )


async def _create(
    what: str, names: Names, call: Awaitable[object], settings: Settings | None = None
) -> None:
    try:
        await call
    except NatsTimeoutError:
        raise _no_answer(f"create {what}", names) from None
    except APIError as exc:
        if settings is not None and _is_replication_refusal(exc, settings):
            raise _replication_refused(f"to create {what}", exc, settings) from exc
        raise


_NO_PEERS = 10005  # "no suitable peers for placement"
_INSUFFICIENT = 10023  # "insufficient resources"


async def _create_replicated(
    what: str, names: Names, make: Callable[[], Awaitable[object]], settings: Settings
) -> None:
    """:func:`_create`, retried while the cluster cannot place the replicas yet.

    A cluster that just started (or just lost a node) may not count enough peers for a
    moment, and refuses a replicated stream it will accept a second later. Retried until
    ``connect_timeout``; then the refusal is reported with its advice.
    """
    deadline = time.monotonic() + settings.connect_timeout
    while True:
        try:
            await retry_transient(
                f"create {what}",
                lambda: _create(what, names, make(), settings),
                settings.connect_timeout,
            )
            return
        except ConfigurationError as exc:
            cause = exc.__cause__
            placing = isinstance(cause, APIError) and cause.err_code in (_NO_PEERS, _INSUFFICIENT)
            if not placing or time.monotonic() >= deadline:
                raise
            log.info("stream.placement_retrying", what=what, error=str(cause))
            await asyncio.sleep(0.25)


def _is_replication_refusal(exc: APIError, settings: Settings) -> bool:
    # "insufficient resources", "replicas > 1 not supported in non-clustered mode", "no
    # suitable peers for placement": the server cannot place as many replicas as asked.
    if exc.err_code == _EXISTS_DIFFERENTLY:
        return False
    text = (exc.description or "").lower()
    asked = settings.nats_replicas > 1 or bool(
        settings.nats_placement_cluster or settings.placement_tags
    )
    return asked and any(
        w in text for w in ("replica", "insufficient", "placement", "peers", "cluster")
    )


def placement(settings: Settings) -> Placement | None:
    """The placement ``settings`` ask for (cluster, tags), None when they ask for none."""
    tags = settings.placement_tags
    if not settings.nats_placement_cluster and not tags:
        return None
    return Placement(cluster=settings.nats_placement_cluster or None, tags=tags or None)


def _placement_words(settings: Settings) -> str:
    wanted = placement(settings)
    return f" placed in {_show_placement(wanted)}" if wanted is not None else ""


def _show_placement(p: Placement | None) -> str:
    if p is None or (not p.cluster and not p.tags):
        return "any cluster"
    parts = [f"cluster {p.cluster}"] if p.cluster else []
    if p.tags:
        parts.append("tags " + ",".join(sorted(p.tags)))
    return " ".join(parts)


def replication_changes(current: StreamConfig, settings: Settings) -> dict[str, object]:
    """What ``current`` must change to be replicated and placed as ``settings`` ask.

    Fewer replicas than ``nats_replicas`` is a change; more is not (an admin or another
    process asked for more, and scaling down would only lose redundancy). A placement is
    compared only when the settings name one.
    """
    changes: dict[str, object] = {}
    if (current.num_replicas or 1) < settings.nats_replicas:
        changes["num_replicas"] = settings.nats_replicas
    wanted = placement(settings)
    if wanted is not None:
        have = current.placement
        if (have.cluster if have else None) != wanted.cluster or sorted(
            (have.tags or []) if have else []
        ) != sorted(wanted.tags or []):
            changes["placement"] = wanted
    return changes


def _mismatch(
    what: str, names: Names, current: StreamConfig, settings: Settings
) -> ConfigurationError:
    wanted = placement(settings)
    have = f"{current.num_replicas or 1} replica(s)"
    want = f"{settings.nats_replicas} replica(s)"
    if wanted is not None:
        have += f" in {_show_placement(current.placement)}"
        want += f" in {_show_placement(wanted)}"
    env = f"STALWART_NATS_REPLICAS={settings.nats_replicas}"
    if settings.nats_placement_cluster:
        env += f" STALWART_NATS_PLACEMENT_CLUSTER={settings.nats_placement_cluster}"
    if settings.nats_placement_tags:
        env += f" STALWART_NATS_PLACEMENT_TAGS={settings.nats_placement_tags}"
    return ConfigurationError(
        f"{what} of namespace {names.namespace!r} has {have}, but this process wants {want}; "
        "it does not change streams (STALWART_PROVISION=off) and will not run on less "
        f"redundancy than asked. Fix: `{env} stalwart provision` with admin rights "
        "(JetStream changes it in place), or lower STALWART_NATS_REPLICAS"
    )


def stream_configs(names: Names, settings: Settings) -> list[StreamConfig]:
    """The streams of a namespace, as ``settings`` want them."""
    return [
        StreamConfig(
            name=names.runs_stream,
            subjects=[names.runs_wildcard],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=settings.duplicate_window,
            # Full: refuse new requests (the submitter gets an error) rather than drop the
            # oldest, which are accepted runs somebody is waiting for.
            discard=DiscardPolicy.NEW,
            max_msgs=settings.runs_max_msgs,
            max_bytes=settings.runs_max_bytes,
            max_msg_size=settings.request_max_bytes,
            num_replicas=settings.nats_replicas,
            placement=placement(settings),
        ),
        StreamConfig(
            name=names.events_stream,
            subjects=[names.events_wildcard, names.rejected_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.event_max_age,
            # Events are history (the run record is the truth): when full, drop the oldest.
            discard=DiscardPolicy.OLD,
            max_msgs=settings.events_max_msgs,
            max_bytes=settings.events_max_bytes,
            duplicate_window=settings.duplicate_window,
            allow_direct=True,
            num_replicas=settings.nats_replicas,
            placement=placement(settings),
        ),
    ]


def kv_configs(names: Names, settings: Settings) -> list[KeyValueConfig]:
    """The KV buckets of a namespace, replicated and placed as ``settings`` want them."""
    buckets = [
        KeyValueConfig(
            bucket=names.lease_bucket,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=_MARKER_TTL,
            description="Stalwart run leases: key run.<run_id>, value owner worker id",
        ),
        KeyValueConfig(
            bucket=names.workers_bucket,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=_MARKER_TTL,
            description="Stalwart worker heartbeats",
        ),
        KeyValueConfig(
            bucket=names.agents_bucket,
            history=1,
            storage=StorageType.FILE,
            description="Agent names served by Stalwart workers",
        ),
    ]
    for kv in buckets:
        kv.replicas = settings.nats_replicas
        kv.placement = placement(settings)
    return buckets


def consumer_config(names: Names, settings: Settings, agent: str, lane: str = "") -> ConsumerConfig:
    """The durable pull consumer all workers of ``agent`` (in ``lane``) share."""
    return ConsumerConfig(
        durable_name=names.consumer(agent, lane),
        filter_subject=names.runs_subject(agent, lane),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=-1,
    )


async def _ensure_stream(
    js: JetStreamContext, names: Names, config: StreamConfig, settings: Settings
) -> StreamInfo:
    assert config.name is not None
    create = settings.provision == "auto"
    what = f"stream {config.name}"
    info = await _stream_info(js, config.name, names, settings.connect_timeout)
    if info is None:
        if not create:
            raise _missing(what, names)
        try:
            await _create_replicated(what, names, lambda: js.add_stream(config), settings)
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_DIFFERENTLY:
                raise
            # Another process created it meanwhile, configured differently (e.g. another
            # max_age). Keep it, except for limits it does not have at all (see _add_limits).
        info = await _stream_info(js, config.name, names, settings.connect_timeout)
        if info is None:  # deleted again at once: let the next start find out
            raise ServerUnavailableError(f"{what} vanished right after it was created")
    info = await _ensure_replication(js, names, what, info, settings)
    if create:  # only a process allowed to create may also fill in missing limits
        await _add_limits(js, info.config, config)
    return info


def clustered(js: JetStreamContext) -> bool:
    """Whether the server this client is connected to is part of a NATS cluster."""
    return bool(js._nc._server_info.get("cluster"))


_QUICK_ASK = 1.5
"""Seconds a start-up lookup waits on a cluster before asking again. A request sent while a
stream has no leader is dropped, not queued: with nats-py's 5 s, one sent just before an
election ends would wait out its full timeout though the answer is there a moment later."""


def _asker(js: JetStreamContext) -> JetStreamContext:
    """``js``, or on a cluster the same context with :data:`_QUICK_ASK` as its timeout."""
    if not clustered(js):
        return js
    return js._nc.jetstream(prefix=js._prefix, timeout=min(_QUICK_ASK, js._timeout))


async def _stream_info(
    js: JetStreamContext, name: str, names: Names, within: float
) -> StreamInfo | None:
    try:
        # On a cluster, silence may be a meta leader election: asked again within the bound
        # (a permissions violation then takes connect_timeout to be reported, not one request).
        ask = _asker(js)
        return await retry_transient(
            f"look up stream {name}", lambda: ask.stream_info(name), within, timeouts=ask is not js
        )
    except NotFoundError:
        return None
    except NatsTimeoutError:
        raise _no_answer(f"look up stream {name}", names) from None


async def _ensure_replication(
    js: JetStreamContext, names: Names, what: str, info: StreamInfo, settings: Settings
) -> StreamInfo:
    """Bring an existing stream to the replicas and placement ``settings`` want.

    With ``provision=auto`` JetStream changes it in place (the new replicas catch up from
    the leader while it keeps serving); with ``off`` the process refuses to start rather
    than run on less redundancy than asked (see :func:`replication_changes`).
    """
    changes = replication_changes(info.config, settings)
    if not changes:
        return info
    if settings.provision != "auto":
        raise _mismatch(what, names, info.config, settings)
    have = f"{info.config.num_replicas or 1} replica(s) in {_show_placement(info.config.placement)}"
    try:
        updated = await js.update_stream(info.config.evolve(**changes))
    except NatsTimeoutError:
        raise _no_answer(f"update {what}", names) from None
    except APIError as exc:
        if _is_replication_refusal(exc, settings):
            raise _replication_refused(f"to change {what}", exc, settings) from exc
        raise
    log.warning(
        "stream.replication_changed",
        stream=info.config.name,
        had=have,
        now=f"{settings.nats_replicas} replica(s) in {_show_placement(placement(settings))}",
    )
    return updated


def _leader_and_peers(info: StreamInfo) -> tuple[bool, bool]:
    """Whether ``info``'s stream has a leader, and whether a majority of its replicas
    (the leader counts) is current: enough to lose any one of them without losing data.
    Not all of them: with a node down (the reason for replicas) that would never happen."""
    cluster = info.cluster
    if cluster is None:  # a server outside any cluster: it is the stream
        return True, True
    current = 1 + sum(bool(r.current) for r in cluster.replicas or [])
    return bool(cluster.leader), current > (info.config.num_replicas or 1) // 2


async def _wait_ready(
    js: JetStreamContext, names: Names, info: StreamInfo, settings: Settings, deadline: float
) -> None:
    """Wait (until ``deadline``) for a stream to have a leader and its replicas to catch up.

    Right after a replicated stream is created or scaled up, it has no leader for a moment
    and every write to it gets "no responders": a worker registering its agents then would
    fail. No leader by the deadline is an error; replicas still catching up only a warning
    (the stream works, with less redundancy until they have).
    """
    name = info.config.name
    assert name is not None
    while True:
        leader, current = _leader_and_peers(info)
        if leader and current:
            return
        if time.monotonic() >= deadline:
            if not leader:
                raise ServerUnavailableError(
                    f"stream {name} (namespace {names.namespace!r}) has no JetStream leader "
                    f"{settings.connect_timeout:g}s after start: too few of its servers are up "
                    f"for {info.config.num_replicas or 1} replica(s)"
                )
            log.warning("stream.replicas_catching_up", stream=name)
            return
        await asyncio.sleep(0.05)
        found = await _stream_info(js, name, names, max(deadline - time.monotonic(), 0.1))
        if found is None:
            raise ServerUnavailableError(f"stream {name} vanished while waiting for its leader")
        info = found


def limit_changes(current: StreamConfig, wanted: StreamConfig) -> dict[str, object]:
    """The limits ``current`` lacks that ``wanted`` sets (with ``wanted``'s discard policy)."""
    changes: dict[str, object] = {}
    for field in _LIMIT_FIELDS:
        have, want = getattr(current, field), getattr(wanted, field)
        if (have is None or have < 0) and want is not None and want >= 0:
            changes[field] = want
    if changes and current.discard != wanted.discard:
        changes["discard"] = wanted.discard  # a new limit must not drop stored requests
    return changes


async def _add_limits(js: JetStreamContext, current: StreamConfig, wanted: StreamConfig) -> None:
    """Give an existing stream the limits it lacks and ``wanted``'s discard policy.

    Limits someone set (another value than unlimited) are kept; so is everything else.
    A server that refuses the update leaves the stream as it was: logged, never fatal.
    """
    changes = limit_changes(current, wanted)
    if not changes:
        return
    try:
        await js.update_stream(current.evolve(**changes))
    except Exception as exc:
        log.warning("stream.limits_not_updated", stream=wanted.name, error=repr(exc))
        return
    log.info("stream.limits_updated", stream=wanted.name, **{k: str(v) for k, v in changes.items()})


async def wait_ready(
    js: JetStreamContext, names: Names, settings: Settings, streams: list[str | None]
) -> None:
    """Wait (up to ``connect_timeout`` in all) until each of ``streams`` has a leader and a
    majority of current replicas (see :func:`_wait_ready`)."""
    deadline = time.monotonic() + settings.connect_timeout
    for name in streams:
        assert name is not None
        info = await _stream_info(js, name, names, settings.connect_timeout)
        if info is not None:
            await _wait_ready(js, names, info, settings, deadline)


async def _ensure_kv(
    js: JetStreamContext, names: Names, config: KeyValueConfig, settings: Settings
) -> StreamInfo:
    stream = names.kv_stream(config.bucket)
    what = f"KV bucket {config.bucket}"
    info = await _stream_info(js, stream, names, settings.connect_timeout)
    if info is None:
        if settings.provision != "auto":
            raise _missing(what, names)
        try:
            await _create_replicated(what, names, lambda: js.create_key_value(config), settings)
        except BadRequestError as exc:
            if exc.err_code != _EXISTS_DIFFERENTLY:
                raise
            log.info("bucket.exists_with_other_config", bucket=config.bucket)
        info = await _stream_info(js, stream, names, settings.connect_timeout)
        if info is None:
            raise ServerUnavailableError(f"{what} vanished right after it was created")
    # A bucket is a stream (KV_<bucket>): replicas and placement change the same way.
    # (nats-py's create_key_value drops the config's placement: a bucket created here is
    # moved to the wanted placement by this same check, right after it was created.)
    return await _ensure_replication(js, names, what, info, settings)


async def ensure_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Make sure every stream and bucket of the namespace exists; safe from every process.

    Each is looked up first (a right every role has), so a process connecting to a
    provisioned namespace creates nothing and needs no create rights. What is missing is
    created when ``settings.provision`` is ``auto`` (the default), and is an error saying
    to run ``stalwart provision`` when it is ``off``.

    Each must also have at least ``settings.nats_replicas`` replicas (and the placement
    asked for): scaled up in place with ``auto``, refused with ``off``. Returns once every
    one has a leader (bounded by ``connect_timeout``), so what follows can write to them.
    """
    infos = [
        await _ensure_stream(js, names, stream, settings)
        for stream in stream_configs(names, settings)
    ]
    infos += [await _ensure_kv(js, names, kv, settings) for kv in kv_configs(names, settings)]
    deadline = time.monotonic() + settings.connect_timeout
    for info in infos:
        await _wait_ready(js, names, info, settings, deadline)


async def ensure_agent_consumer(
    js: JetStreamContext, names: Names, settings: Settings, agent: str, lane: str = ""
) -> None:
    """The durable pull consumer all workers of ``agent`` in ``lane`` share (a work queue
    allows one consumer per subject; each lane has its own subject).

    Looked up first, like the streams (see :func:`ensure_topology`).
    """
    durable = names.consumer(agent, lane)
    try:
        # A cluster's meta leader, busy creating many replicated consumers at once (workers
        # starting together), may let one lookup go unanswered: asked again, bounded.
        ask = _asker(js)
        await retry_transient(
            f"look up consumer {durable}",
            lambda: ask.consumer_info(names.runs_stream, durable),
            settings.connect_timeout,
            timeouts=ask is not js,
        )
        return
    except NotFoundError:
        pass
    except NatsTimeoutError:
        raise _no_answer(f"look up consumer {durable}", names) from None
    if settings.provision != "auto":
        raise _missing(f"consumer {durable} (agent {agent!r}, lane {lane or 'default'})", names)
    try:
        await _create(f"consumer {durable}", names, _add_consumer(js, names, settings, agent, lane))
    except BadRequestError as exc:
        # Exists with other settings (another worker's ack_wait): share it as it is.
        log.info("consumer.exists_with_other_config", agent=agent, error=exc.description)


async def _add_consumer(
    js: JetStreamContext, names: Names, settings: Settings, agent: str, lane: str
) -> None:
    await js.add_consumer(names.runs_stream, consumer_config(names, settings, agent, lane))
