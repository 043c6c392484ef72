"""What identifies the lease bucket instance a process talks to, and how far its revisions went.

A lease revision is only comparable with revisions of the same bucket instance: a new NATS,
a recreated bucket or one restored from a backup starts again below revisions recorded in
Redis. The instance's identity is the creation time of the stream behind the bucket (a new
or recreated bucket gets a new one); Redis turns identities into ordered generations
(``stalwart.checkpoints._generations``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from stalwart.broker._names import Names


@dataclass(frozen=True, slots=True)
class BucketState:
    """The lease bucket instance: its ``identity`` and its stream's last sequence now."""

    identity: str
    last_seq: int


async def lease_bucket_state(js: JetStreamContext, names: Names) -> BucketState:
    """Ask the server for the lease bucket's identity and last revision (one stream info).

    The identity is ``<stream>@<creation time>``; a server that does not report the
    creation time (none Stalwart supports) gives the stream name alone, so every instance
    then counts as one.
    """
    info = await js.stream_info(names.lease_stream)
    created = info.created.isoformat() if info.created is not None else ""
    return BucketState(f"{names.lease_stream}@{created}", int(info.state.last_seq or 0))
