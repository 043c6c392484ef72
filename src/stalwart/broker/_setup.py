"""Looking up (and, where allowed, creating) the streams, KV buckets and consumers Stalwart uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from nats.js import JetStreamContext

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
        f"permissions for the namespace, or {PROVISION_HINT}"
    )


def _missing(what: str, names: Names) -> ConfigurationError:
    return ConfigurationError(
        f"{what} of namespace {names.namespace!r} does not exist and this process does not "
        f"create it (STALWART_PROVISION=off): {PROVISION_HINT}"
    )


async def lookup_stream(js: JetStreamContext, name: str, names: Names) -> StreamConfig | None:
    """The config of stream ``name``, or None when it does not exist."""
    try:
        return (await js.stream_info(name)).config
    except NotFoundError:
        return None
    except NatsTimeoutError:
        raise _no_answer(f"look up stream {name}", names) from None


async def _create(what: str, names: Names, call: Awaitable[object]) -> None:
    try:
        await call
    except NatsTimeoutError:
        raise _no_answer(f"create {what}", names) from None


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
        ),
    ]


def kv_configs(names: Names) -> list[KeyValueConfig]:
    """The KV buckets of a namespace."""
    return [
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
    js: JetStreamContext, names: Names, config: StreamConfig, create: bool
) -> None:
    assert config.name is not None
    current = await lookup_stream(js, config.name, names)
    if current is not None:
        if create:  # only a process allowed to create may also fill in missing limits
            await _add_limits(js, current, config)
        return
    if not create:
        raise _missing(f"stream {config.name}", names)
    try:
        await _create(f"stream {config.name}", names, js.add_stream(config))
    except BadRequestError as exc:
        if exc.err_code != _EXISTS_DIFFERENTLY:
            raise
        # Another process created it meanwhile, configured differently (e.g. another
        # max_age). Keep it, except for limits it does not have at all (see _add_limits).
        current = await lookup_stream(js, config.name, names)
        if current is not None:
            await _add_limits(js, current, config)


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


async def _ensure_kv(
    js: JetStreamContext, names: Names, config: KeyValueConfig, create: bool
) -> None:
    stream = names.kv_stream(config.bucket)
    if await lookup_stream(js, stream, names) is not None:
        return
    if not create:
        raise _missing(f"KV bucket {config.bucket}", names)
    try:
        await _create(f"KV bucket {config.bucket}", names, js.create_key_value(config))
    except BadRequestError as exc:
        if exc.err_code != _EXISTS_DIFFERENTLY:
            raise
        log.info("bucket.exists_with_other_config", bucket=config.bucket)


async def ensure_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Make sure every stream and bucket of the namespace exists; safe from every process.

    Each is looked up first (a right every role has), so a process connecting to a
    provisioned namespace creates nothing and needs no create rights. What is missing is
    created when ``settings.provision`` is ``auto`` (the default), and is an error saying
    to run ``stalwart provision`` when it is ``off``.
    """
    create = settings.provision == "auto"
    for stream in stream_configs(names, settings):
        await _ensure_stream(js, names, stream, create)
    for kv in kv_configs(names):
        await _ensure_kv(js, names, kv, create)


async def ensure_agent_consumer(
    js: JetStreamContext, names: Names, settings: Settings, agent: str, lane: str = ""
) -> None:
    """The durable pull consumer all workers of ``agent`` in ``lane`` share (a work queue
    allows one consumer per subject; each lane has its own subject).

    Looked up first, like the streams (see :func:`ensure_topology`).
    """
    durable = names.consumer(agent, lane)
    try:
        await js.consumer_info(names.runs_stream, durable)
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
