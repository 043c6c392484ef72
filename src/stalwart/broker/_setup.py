"""Idempotent creation of the streams, KV buckets and consumers Stalwart uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

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

# Expired-lease markers must outlive a supervisor's reconciliation pass so that a takeover
# can CAS against them; a few seconds past the lease TTL is plenty.
_MARKER_TTL_FLOOR = 5


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        # 10058: exists with a different configuration (for example an older max_age).
        if exc.err_code != 10058:
            raise
        await js.update_stream(config)


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
            discard=DiscardPolicy.OLD,
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
            duplicate_window=settings.duplicate_window,
            allow_direct=True,
        ),
    )
    marker_ttl = max(_MARKER_TTL_FLOOR, 2 * settings.lease_ttl)
    await js.create_key_value(
        KeyValueConfig(
            bucket=names.lease_bucket,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=marker_ttl,
            description="Stalwart run leases: key run.<run_id>, value owner worker id",
        )
    )
    await js.create_key_value(
        KeyValueConfig(
            bucket=names.workers_bucket,
            history=1,
            storage=StorageType.FILE,
            limit_marker_ttl=marker_ttl,
            description="Stalwart worker heartbeats",
        )
    )
    await js.create_key_value(
        KeyValueConfig(
            bucket=names.agents_bucket,
            history=1,
            storage=StorageType.FILE,
            description="Agent names served by Stalwart workers",
        )
    )


async def ensure_agent_consumer(
    js: JetStreamContext, names: Names, settings: Settings, agent: str
) -> None:
    """The durable pull consumer all workers of ``agent`` share (work queues allow just one)."""
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
