"""Idempotent creation of the streams, KV buckets and consumers Stalwart uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

if TYPE_CHECKING:
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


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _EXISTS_DIFFERENTLY:
            raise
        # Another process (or an operator) configured it differently, e.g. another
        # max_age. Every process starting would otherwise fight over the config: keep it,
        # except for limits it does not have at all, which are added (see _add_limits).
        await _add_limits(js, config)


async def _add_limits(js: JetStreamContext, wanted: StreamConfig) -> None:
    """Give an existing stream the limits it lacks and ``wanted``'s discard policy.

    Limits someone set (another value than unlimited) are kept; so is everything else.
    A server that refuses the update leaves the stream as it was: logged, never fatal.
    """
    assert wanted.name is not None
    current = (await js.stream_info(wanted.name)).config
    changes: dict[str, object] = {}
    for field in _LIMIT_FIELDS:
        have, want = getattr(current, field), getattr(wanted, field)
        if (have is None or have < 0) and want is not None and want >= 0:
            changes[field] = want
    if changes and current.discard != wanted.discard:
        changes["discard"] = wanted.discard  # a new limit must not drop stored requests
    if not changes:
        log.info("stream.exists_with_other_config", stream=wanted.name, kept=True)
        return
    try:
        await js.update_stream(current.evolve(**changes))
    except Exception as exc:
        log.warning("stream.limits_not_updated", stream=wanted.name, error=repr(exc))
        return
    log.info("stream.limits_updated", stream=wanted.name, **{k: str(v) for k, v in changes.items()})


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await js.create_key_value(config)
    except BadRequestError as exc:
        if exc.err_code != _EXISTS_DIFFERENTLY:
            raise
        log.info("bucket.exists_with_other_config", bucket=config.bucket)


async def ensure_topology(js: JetStreamContext, names: Names, settings: Settings) -> None:
    """Create (or update) every stream and bucket; safe to call from every process at start."""
    await _ensure_stream(
        js,
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
    )
    await _ensure_stream(
        js,
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
    )
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=names.lease_bucket,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=_MARKER_TTL,
            description="Stalwart run leases: key run.<run_id>, value owner worker id",
        ),
    )
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=names.workers_bucket,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=_MARKER_TTL,
            description="Stalwart worker heartbeats",
        ),
    )
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=names.agents_bucket,
            history=1,
            storage=StorageType.FILE,
            description="Agent names served by Stalwart workers",
        ),
    )


async def ensure_agent_consumer(
    js: JetStreamContext, names: Names, settings: Settings, agent: str
) -> None:
    """The durable pull consumer all workers of ``agent`` share (work queues allow just one)."""
    try:
        await _add_consumer(js, names, settings, agent)
    except BadRequestError as exc:
        # Exists with other settings (another worker's ack_wait): share it as it is.
        log.info("consumer.exists_with_other_config", agent=agent, error=exc.description)


async def _add_consumer(js: JetStreamContext, names: Names, settings: Settings, agent: str) -> None:
    await js.add_consumer(
        names.runs_stream,
        ConsumerConfig(
            durable_name=names.consumer(agent),
            filter_subject=names.runs_subject(agent),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=settings.max_deliver,
            max_ack_pending=-1,
        ),
    )
