"""Paging through the runs index (a sorted set of run ids by creation time, sharded on Redis
Cluster) newest first, with an opaque cursor that stays valid while runs are added.

A position is ``(created_at, run_id)``: the index orders entries by score, then by member,
so a position names one place in it whatever is inserted later (new runs have higher
scores and land before every page already read).
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import TYPE_CHECKING, cast

from stalwart.errors import InvalidRequestError

if TYPE_CHECKING:
    from stalwart.checkpoints import CheckpointStore

Position = tuple[float, str]
"""``(created_at, run_id)`` of an index entry."""


def encode_cursor(position: Position) -> str:
    """The opaque cursor of the entry at ``position`` (the next page starts after it)."""
    text = f"{position[0]!r}|{position[1]}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor of :func:`encode_cursor` names; a clear error for anything else."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        score_text, sep, run_id = text.partition("|")
        score = float(score_text)
    except (ValueError, UnicodeError, binascii.Error):
        score, sep, run_id = math.nan, "", ""
    if not sep or not run_id or not math.isfinite(score):
        shown = cursor if len(cursor) <= 80 else cursor[:80] + "..."
        raise InvalidRequestError(
            f"invalid cursor {shown!r}: pass back the next_cursor of a previous page"
        )
    return score, run_id


async def index_page(
    store: CheckpointStore,
    after: Position | None,
    since: float | None,
    until: float | None,
    count: int,
) -> list[Position]:
    """Up to ``count`` index entries older than ``after`` (all when None), newest first,
    created in ``[since, until]`` (either bound may be None)."""
    low = "-inf" if since is None else repr(since)
    high = math.inf if until is None else until
    ties = after is not None and after[0] <= high
    if after is not None:
        high = min(high, after[0])
    found: list[Position] = []
    # The newest ``count`` of the union are among the newest ``count`` of every shard.
    for key in store.keys.runs_shards:
        if ties and after is not None:
            # Entries created at the very same instant as ``after`` order by id: keep those
            # below it. (A handful at most: scores are creation times to the microsecond.)
            same = await _zrev(store, key, repr(after[0]), repr(after[0]), None)
            found.extend(p for p in same if p[1] < after[1])
            upper = f"({after[0]!r}"
        else:
            upper = "+inf" if math.isinf(high) else repr(high)
        found.extend(await _zrev(store, key, upper, low, count))
    found.sort(reverse=True)
    return found[:count]


async def _zrev(
    store: CheckpointStore, key: str, high: str, low: str, count: int | None
) -> list[Position]:
    rows = cast(
        "list[tuple[bytes, float]]",
        await store.redis.zrevrangebyscore(
            key,
            high,
            low,
            start=0 if count is not None else None,
            num=count,
            withscores=True,
        ),
    )
    return [(float(score), rid.decode()) for rid, score in rows]
