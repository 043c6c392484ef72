"""2. Failover: SIGKILL the worker that owns a run, time until a step completes elsewhere.

Two worker processes and one ``stalwart supervisor`` process serve a long ``ticker`` run
(20 ms steps). Each kill picks the run's owner from its record, waits a random 0.5-1.5 s
(so the kill lands anywhere in the lease-renewal cycle), SIGKILLs it, and reads the run's
events until the other worker starts and completes a step. The killed worker is then
restarted under a new id, so two workers are always up for the next kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Any

from bench._stalwart import Cluster, supervisor_process
from bench._util import log, summary
from stalwart.messages import EV_STEP_COMPLETED, EV_STEP_STARTED
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from bench._context import Ctx
    from stalwart import RunEvent, RunHandle


class _Follower:
    """Collects a run's events in the background (one subscription for the whole run)."""

    def __init__(self, handle: RunHandle) -> None:
        self.events: list[RunEvent] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._follow(handle))

    async def _follow(self, handle: RunHandle) -> None:
        async for ev in handle.events():
            self.events.append(ev)
            self.changed.set()

    async def first(
        self, after: float, worker_not: str, types: tuple[str, ...], timeout: float
    ) -> RunEvent:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.type in types and ev.at >= after and ev.worker != worker_not:
                    return ev
            seen = len(self.events)
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {types} from another worker within {timeout}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def _kills(cl: Cluster, ttl: int, kills: int, rng: random.Random) -> dict[str, list[float]]:
    gen = 0

    def next_id() -> str:
        nonlocal gen
        gen += 1
        return f"fo{ttl}-{gen}"

    ids = [next_id(), next_id()]
    await cl.start_workers(ids, concurrency=4)
    handle = await cl.submit("ticker", 1_000_000)
    follower = _Follower(handle)
    to_started: list[float] = []
    to_completed: list[float] = []
    try:
        await follower.first(0.0, "", (EV_STEP_COMPLETED,), timeout=30)
        for k in range(kills):
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            owner = (await handle.status()).worker
            t_kill = time.time()
            cl.workers[owner].kill()
            started = await follower.first(t_kill, owner, (EV_STEP_STARTED,), timeout=ttl + 30)
            done = await follower.first(t_kill, owner, (EV_STEP_COMPLETED,), timeout=ttl + 30)
            to_started.append(started.at - t_kill)
            to_completed.append(done.at - t_kill)
            log(f"failover ttl={ttl}s kill {k + 1}/{kills}: {to_completed[-1]:.2f}s")
            cl.workers.pop(owner).log_path.unlink(missing_ok=True)
            new = next_id()
            cl.start_worker(new, concurrency=4)
            await cl.wait_workers([new])
        await handle.cancel("benchmark done")
    finally:
        await follower.stop()
    return {"to_step_started": to_started, "to_step_completed": to_completed}


async def measure(ctx: Ctx) -> dict[str, Any]:
    ttls = ctx.pick([2], [2, 5])
    kills = ctx.pick(2, 20)
    rng = random.Random(6)
    out: dict[str, Any] = {"kills": kills, "step_seconds": 0.02, "ttls": {}}
    for ttl in ttls:
        async with EmbeddedServers() as servers:
            async with Cluster(
                servers.nats_url, servers.redis_url, f"fo{ttl}", lease_ttl=ttl
            ) as cl:
                sup = supervisor_process(cl)
                try:
                    raw = await _kills(cl, ttl, kills, rng)
                finally:
                    sup.kill()
                    sup.log_path.unlink(missing_ok=True)
        out["ttls"][str(ttl)] = {
            "raw": raw,
            "to_step_started": summary(raw["to_step_started"]),
            "to_step_completed": summary(raw["to_step_completed"]),
            "target_p50": ttl + 0.5,
            "target_p99": ttl + 1.5,
        }
    return out
