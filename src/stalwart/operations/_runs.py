"""``list_runs``: the runs of a deployment, filtered and paged, with bounded work per call."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, get_args

import msgspec
import structlog

from stalwart._text import clip
from stalwart.checkpoints._codec import open_text
from stalwart.checkpoints._entries import RunStatus, record_from_hash
from stalwart.checkpoints._runs import describe_epoch
from stalwart.errors import CorruptRecordError, InvalidRequestError
from stalwart.operations._index import Position, decode_cursor, encode_cursor, index_page
from stalwart.operations._owners import RunPlacement, lease_holders, placement_of

if TYPE_CHECKING:
    from stalwart.checkpoints import RunRecord
    from stalwart.client import Client

_log = structlog.get_logger("stalwart.operations")

STATUSES: tuple[str, ...] = get_args(RunStatus)
"""Every run status a record can hold."""
PLACEMENTS: tuple[str, ...] = get_args(RunPlacement)
"""Every placement a run can have (see :data:`RunPlacement`)."""
MAX_LIMIT = 1000
"""Most runs one page may ask for."""
MAX_SCAN = 100_000
"""Most index entries one call may be allowed to read (``RunQuery.max_scan``)."""
ERROR_SUMMARY_CHARS = 200
"""Characters of a run's error message kept in its summary (the detail has all of it)."""


class RunQuery(msgspec.Struct, kw_only=True):
    """What :func:`list_runs` lists: every filter is optional and they all apply together.

    ``since`` / ``until`` bound the creation time (epoch seconds, inclusive); ``search``
    keeps run ids that contain it; ``placement`` keeps runs that stand so with the workers
    now (``awaiting_worker``: the runs no worker holds although they were placed; see
    :data:`RunPlacement`); ``cursor`` is a previous page's ``next_cursor``.
    ``max_scan`` caps the index entries one call reads, so a filter that rarely matches
    returns a short (even empty) page and a cursor instead of reading every run at once.
    """

    status: list[str] | None = None
    agent: str | None = None
    since: float | None = None
    until: float | None = None
    search: str | None = None
    placement: list[str] | None = None
    limit: int = 50
    cursor: str | None = None
    max_scan: int = 2000


class RunSummary(msgspec.Struct, kw_only=True):
    """One run as a list shows it. Times are epoch seconds (0: not yet)."""

    run_id: str
    agent: str
    lane: str
    status: str
    """The record's status (``accepted``, ``running``, ``waiting`` or how it ended)."""
    placement: RunPlacement
    """Where it stands with the workers now (see :data:`stalwart.operations.RunPlacement`)."""
    owner: str
    """The worker holding its lease now ("" for nobody): the truth about who runs it."""
    worker: str
    """The worker the record names: the last one that owned it (it may be gone)."""
    epoch: int
    epoch_text: str
    """The epoch as people read it (``<generation>.<revision>``)."""
    created_at: float
    updated_at: float
    ended_at: float
    duration: float
    """Seconds from creation to the end, or to now while it goes on."""
    journal_entries: int
    """Entries in its journal (placements, step outcomes, retries, waits, the end)."""
    error_type: str = ""
    error: str = ""
    """The first characters of the error message (decrypted when this process can)."""
    build: str = ""
    """The build that started it (docs/deploys.md): an ``awaiting_worker`` run waits for a
    worker of this build; "" for a run not placed yet or older than builds."""
    conversation: str = ""
    """The conversation the run is a turn of ("": none; docs/conversations.md)."""


class RunPage(msgspec.Struct, kw_only=True):
    """One page of :func:`list_runs`: ``next_cursor`` is None once nothing older is left."""

    runs: list[RunSummary]
    next_cursor: str | None
    scanned: int
    """Index entries this call read (at most the query's ``max_scan``)."""


def check_query(query: RunQuery) -> None:
    """Raise :class:`InvalidRequestError` naming what is wrong with ``query``."""
    limit = query.limit
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be a whole number 1-{MAX_LIMIT}, got {limit!r}")
    if isinstance(query.max_scan, bool) or not isinstance(query.max_scan, int):
        raise InvalidRequestError(f"max_scan must be a whole number, got {query.max_scan!r}")
    if not limit <= query.max_scan <= MAX_SCAN:
        raise InvalidRequestError(
            f"max_scan must be between limit ({limit}) and {MAX_SCAN}, got {query.max_scan}"
        )
    for status in query.status or []:
        if status not in STATUSES:
            raise InvalidRequestError(
                f"unknown run status {status!r} (statuses: {', '.join(STATUSES)})"
            )
    for placement in query.placement or []:
        if placement not in PLACEMENTS:
            raise InvalidRequestError(
                f"unknown placement {placement!r} (placements: {', '.join(PLACEMENTS)})"
            )
    for name, value in (("since", query.since), ("until", query.until)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidRequestError(f"{name} must be epoch seconds, got {value!r}")
    if query.since is not None and query.until is not None and query.since > query.until:
        raise InvalidRequestError(f"since ({query.since}) is after until ({query.until})")
    if query.cursor is not None:
        decode_cursor(query.cursor)


async def list_runs(client: Client, query: RunQuery | None = None) -> RunPage:
    """The runs that match ``query``, newest first, one page at a time.

    Reads at most ``query.max_scan`` index entries (and their records): a page can come
    back short or empty with a ``next_cursor`` when few runs match; follow it to go on. The
    cursor stays valid while new runs are submitted (they sort before it). Owners come
    from the lease bucket for runs that have not ended. Raises
    :class:`~stalwart.errors.InvalidRequestError` for a bad limit, status or cursor.
    """
    query = query or RunQuery()
    check_query(query)
    wanted = set(query.status or [])
    position: Position | None = decode_cursor(query.cursor) if query.cursor else None
    found: list[RunRecord] = []
    owners: dict[str, str] = {}
    scanned = 0
    exhausted = False
    while len(found) < query.limit and scanned < query.max_scan:
        want = min(max(query.limit - len(found), 50), 500, query.max_scan - scanned)
        rows = await index_page(client.store, position, query.since, query.until, want)
        candidates = [p for p in rows if not query.search or query.search in p[1]]
        records = await load_records(client, [rid for _, rid in candidates])
        records = {rid: r for rid, r in records.items() if _matches(r, query, wanted)}
        if query.placement:  # the leases of this batch's live candidates, in one go
            live = [rid for rid, r in records.items() if not r.terminal]
            owners.update(await lease_holders(client.broker, live))
            records = {
                rid: r
                for rid, r in records.items()
                if placement_of(r, owners.get(rid, "")) in query.placement
            }
        for score, rid in rows:
            scanned += 1
            position = (score, rid)
            record = records.get(rid)
            if record is not None:
                found.append(record)
                if len(found) == query.limit:
                    break
        if len(rows) < want and (not rows or position == rows[-1]):
            exhausted = True  # every older entry has been read
            break
    summaries = await summarize(client, found, owners if query.placement else None)
    cursor = encode_cursor(position) if position is not None and not exhausted else None
    return RunPage(runs=summaries, next_cursor=cursor, scanned=scanned)


def _matches(record: RunRecord, query: RunQuery, wanted: set[str]) -> bool:
    if wanted and record.status not in wanted:
        return False
    return not (query.agent and record.agent != query.agent)


async def load_records(client: Client, run_ids: list[str]) -> dict[str, RunRecord]:
    """The records of ``run_ids`` (one pipelined read); missing or corrupt ones left out."""
    if not run_ids:
        return {}
    store = client.store
    async with store.redis.pipeline(transaction=False) as pipe:
        for rid in run_ids:
            pipe.hgetall(store.record_key(rid))
        rows = await pipe.execute()
    out: dict[str, RunRecord] = {}
    for rid, row in zip(run_ids, rows, strict=True):
        try:
            record = record_from_hash(row)
        except CorruptRecordError as exc:  # one bad hash must not hide every other run
            _log.warning("run.record_corrupt", run_id=rid, error=str(exc))
            continue
        if record is not None:
            out[rid] = record
    return out


async def summarize(
    client: Client, records: list[RunRecord], owners: dict[str, str] | None = None
) -> list[RunSummary]:
    """Summaries of ``records``: their journal lengths are read here, and their current
    owners unless ``owners`` (the lease holders of all of them, looked up already) is given."""
    if not records:
        return []
    store = client.store
    async with store.redis.pipeline(transaction=False) as pipe:
        for r in records:
            pipe.xlen(store.journal_key(r.run_id))
        lengths = await pipe.execute()
    if owners is None:
        owners = await lease_holders(client.broker, [r.run_id for r in records if not r.terminal])
    now = time.time()
    return [
        summary(r, owners.get(r.run_id, ""), int(n), now)
        for r, n in zip(records, lengths, strict=True)
    ]


def summary(record: RunRecord, owner: str, journal_entries: int, now: float) -> RunSummary:
    """One record as a :class:`RunSummary` (``owner``: the lease holder, "" for none). Pure."""
    ended = record.updated_at if record.terminal else 0.0
    start = record.created_at
    return RunSummary(
        run_id=record.run_id,
        agent=record.agent,
        lane=record.lane,
        build=record.build,
        status=record.status,
        placement=placement_of(record, owner),
        owner=owner,
        worker=record.worker,
        epoch=record.epoch,
        epoch_text=describe_epoch(record.epoch),
        created_at=start,
        updated_at=record.updated_at,
        ended_at=ended,
        duration=max((ended or now) - start, 0.0) if start else 0.0,
        journal_entries=journal_entries,
        error_type=record.error_type,
        error=clip(open_text(record.error), ERROR_SUMMARY_CHARS),
        conversation=record.conversation,
    )
