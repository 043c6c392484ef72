"""``workers`` and ``agents``: the fleet as an operator (or an autoscaler) reads it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec
from nats.js.errors import NotFoundError

from stalwart.broker._names import Names
from stalwart.operations._index import index_page
from stalwart.operations._runs import load_records
from stalwart.supervisor._unserved import _consumers, _filters

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart.client import Client

THROUGHPUT_WINDOW = 300.0
"""Seconds of the window :func:`agents` counts ended runs in."""
THROUGHPUT_LOOKBACK = 3600.0
"""How long before the window a run may have been created and still be counted."""
MAX_SCAN = 5000
"""Most run records :func:`agents` reads for its in-flight and throughput counts."""


class _Heartbeat(msgspec.Struct, kw_only=True):
    # What a worker publishes (stalwart.broker.WorkerInfo), every field optional: newer
    # workers add fields, and anything in the bucket that is not a heartbeat is skipped.
    worker_id: str = ""
    agents: list[str] = []
    capacity: int = 0
    active: int = 0
    pid: int = 0
    host: str = ""
    version: str = ""
    at: float = 0.0
    breakers: dict[str, str] = {}
    lanes: list[str] = []
    started_at: float = 0.0
    draining: bool = False
    free: int | None = None
    build: str = ""


class WorkerView(msgspec.Struct, kw_only=True):
    """One live worker, from its heartbeat (times in epoch seconds)."""

    worker_id: str
    host: str
    pid: int
    version: str
    build: str
    agents: list[str]
    lanes: list[str]
    capacity: int
    active: int
    free: int
    """Runs it would take now (0 while draining)."""
    draining: bool
    breakers: dict[str, str]
    """Circuit breakers that are not closed, by ``kind:name``: ``open`` or ``half_open``."""
    heartbeat_at: float
    heartbeat_age: float
    """Seconds since its last heartbeat (one every lease TTL / 3 while it is healthy)."""
    started_at: float


class AgentView(msgspec.Struct, kw_only=True):
    """One agent in one lane ("" is the default lane).

    ``pending`` is what more workers would take: requests not yet delivered plus delivered
    and not yet placed (``num_pending + num_ack_pending`` of its consumer, as the
    ``stalwart.requests.pending`` gauge). ``in_flight`` counts its runs that have not ended,
    by status, from the active-runs index. ``completed`` and ``failed`` count its runs that
    ended in the last ``window`` seconds (among runs created up to an hour before the
    window, newest first, at most 5000 records read), ``throughput`` is ``completed`` per
    minute over the window.
    """

    agent: str
    lane: str
    consumer: str
    pending: int
    num_pending: int
    num_ack_pending: int
    waiting_pulls: int
    workers: list[str]
    in_flight: dict[str, int]
    completed: int
    failed: int
    window: float
    throughput: float


async def workers(client: Client) -> list[WorkerView]:
    """The workers whose heartbeat is in the workers bucket now, by worker id."""
    broker = client.broker
    bucket = broker.names.workers_bucket
    stream = Names.kv_stream(bucket)
    try:
        info = await broker.js.stream_info(stream, subjects_filter=Names.kv_subject(bucket))
    except NotFoundError:
        return []
    now = time.time()
    out: list[WorkerView] = []
    for subject in sorted(info.state.subjects or {}):
        try:
            msg = await broker.js.get_msg(stream, subject=subject)
        except NotFoundError:
            continue  # its heartbeat expired meanwhile
        headers = msg.headers or {}
        if not msg.data or "Nats-Marker-Reason" in headers or "KV-Operation" in headers:
            continue
        try:
            hb = msgspec.json.decode(msg.data, type=_Heartbeat)
        except msgspec.DecodeError:
            continue  # not a heartbeat (anyone allowed to publish there could)
        if not hb.worker_id:
            continue
        out.append(
            WorkerView(
                worker_id=hb.worker_id,
                host=hb.host,
                pid=hb.pid,
                version=hb.version,
                build=hb.build,
                agents=hb.agents,
                lanes=hb.lanes,
                capacity=hb.capacity,
                active=hb.active,
                free=hb.free if hb.free is not None else _free(hb),
                draining=hb.draining,
                breakers=hb.breakers,
                heartbeat_at=hb.at,
                heartbeat_age=max(now - hb.at, 0.0) if hb.at else 0.0,
                started_at=hb.started_at,
            )
        )
    return out


def _free(hb: _Heartbeat) -> int:
    # A heartbeat from before workers sent ``free``.
    return 0 if hb.draining else max(hb.capacity - hb.active, 0)


async def agents(client: Client, *, window: float = THROUGHPUT_WINDOW) -> list[AgentView]:
    """Every agent (per lane) with a consumer or a registration, by agent then lane."""
    broker = client.broker
    names = broker.names
    views: dict[tuple[str, str], AgentView] = {}

    def view(agent: str, lane: str) -> AgentView:
        key = (agent, lane)
        if key not in views:
            views[key] = AgentView(
                agent=agent, lane=lane, consumer="", pending=0, num_pending=0,
                num_ack_pending=0, waiting_pulls=0, workers=[], in_flight={}, completed=0,
                failed=0, window=window, throughput=0.0,
            )  # fmt: skip
        return views[key]

    for agent in await broker.known_agents():
        view(agent, "")
    prefix = names.runs_subject("")
    try:
        infos = await _consumers(broker)
    except NotFoundError:
        infos = []
    for info in infos:
        subjects = [f for f in _filters(info) if f.startswith(prefix)]
        if len(subjects) != 1 or "*" in subjects[0] or ">" in subjects[0]:
            continue  # not one agent's consumer: its backlog cannot be attributed
        v = view(*names.agent_lane(subjects[0]))
        v.consumer = info.name
        v.num_pending += info.num_pending or 0
        v.num_ack_pending += info.num_ack_pending or 0
        v.waiting_pulls += info.num_waiting or 0
        v.pending = v.num_pending + v.num_ack_pending
    for w in await workers(client):
        for agent in w.agents:
            for lane in w.lanes or [""]:
                view(agent, "" if lane == "default" else lane).workers.append(w.worker_id)
    await _count_runs(client, views, view, window)
    return [views[k] for k in sorted(views)]


async def _count_runs(
    client: Client,
    views: dict[tuple[str, str], AgentView],
    view: Callable[[str, str], AgentView],
    window: float,
) -> None:
    active = (await client.store.active_runs())[:MAX_SCAN]
    for record in (await load_records(client, active)).values():
        if not record.terminal:
            counts = view(record.agent, record.lane).in_flight
            counts[record.status] = counts.get(record.status, 0) + 1
    now = time.time()
    recent = await index_page(
        client.store, None, now - window - THROUGHPUT_LOOKBACK, None, MAX_SCAN
    )
    records = await load_records(client, [rid for _, rid in recent])
    for record in records.values():
        if record.terminal and record.updated_at >= now - window:
            v = view(record.agent, record.lane)
            if record.status == "completed":
                v.completed += 1
            elif record.status == "failed":
                v.failed += 1
    for v in views.values():
        v.throughput = v.completed * 60.0 / window if window > 0 else 0.0
