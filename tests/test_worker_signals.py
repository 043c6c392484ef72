"""What operators and autoscalers read of a worker: its heartbeat (lanes, start time, free
slots, draining) and its ``stalwart.worker.capacity`` / ``stalwart.worker.free`` gauges."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import msgspec
import redis.asyncio as aioredis

from stalwart.broker import WorkerInfo
from stalwart.testing import free_port
from tests.helpers import eventually, gate_key
from tests.test_observability import _serving, reaches

if TYPE_CHECKING:
    from stalwart import Client
    from tests.conftest import WorkerFactory


CAPACITY = 16
"""The test workers' concurrency (``worker_process``'s default)."""


async def _heartbeat(client: Client, worker_id: str) -> WorkerInfo | None:
    return next((w for w in await client.broker.workers() if w.worker_id == worker_id), None)


async def test_heartbeat_and_gauges_show_free_slots_lanes_and_draining(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    port = free_port()
    before = time.time()
    proc = await workers(
        "sig1",
        STALWART_METRICS_PORT=str(port),
        STALWART_LANES="default,hi",
        STALWART_DRAIN_TIMEOUT="30",
    )
    await eventually(lambda: _serving(port), timeout=10)
    await reaches(port, "stalwart_worker_capacity", CAPACITY, worker="sig1")
    await reaches(port, "stalwart_worker_free", CAPACITY, worker="sig1")
    beat = await _heartbeat(client, "sig1")
    assert beat is not None
    assert beat.lanes == ["default", "hi"] and beat.draining is False
    assert before - 5 < beat.started_at <= time.time() and beat.free == CAPACITY

    held = await client.submit("sleepy", 1)  # its step waits on a gate: it holds a slot

    async def free_is(n: int) -> bool:
        hb = await _heartbeat(client, "sig1")
        return hb is not None and hb.free == n and hb.active == CAPACITY - n

    await reaches(port, "stalwart_worker_free", CAPACITY - 1, worker="sig1")
    await eventually(lambda: free_is(CAPACITY - 1), timeout=20, message="heartbeat free")

    # SIGTERM: the worker drains (its run is inside a step) and says so at once.
    os.kill(proc.pid, signal.SIGTERM)

    async def draining() -> bool:
        hb = await _heartbeat(client, "sig1")
        return hb is not None and hb.draining and hb.free == 0

    await eventually(draining, timeout=10, message="no draining heartbeat")
    await reaches(port, "stalwart_worker_free", 0, worker="sig1")
    await counters.lpush(gate_key(held.run_id, "in"), "1")


def test_heartbeats_of_either_version_decode_with_the_other() -> None:
    """Fields added later have defaults: an older worker's heartbeat reads, and an older
    reader (modelled by the fields it knew) reads a newer one."""
    old = {
        "worker_id": "w",
        "agents": ["a"],
        "capacity": 4,
        "active": 1,
        "pid": 1,
        "host": "h",
        "version": "0.1",
        "at": 1.0,
    }
    info = msgspec.json.decode(msgspec.json.encode(old), type=WorkerInfo)
    assert (info.lanes, info.started_at, info.draining, info.free) == ([], 0.0, False, None)
    assert info.free_slots == 3

    class OldInfo(msgspec.Struct):
        worker_id: str
        capacity: int
        active: int

    new = WorkerInfo(**old, lanes=["default"], started_at=2.0, draining=True, free=0)  # type: ignore[arg-type]
    assert new.free_slots == 0
    back = msgspec.json.decode(msgspec.json.encode(new), type=OldInfo)
    assert (back.worker_id, back.capacity, back.active) == ("w", 4, 1)
