"""6. Memory: RSS of a worker hosting 1,000 active runs.

Each run of the ``blocked`` agent is in flight in one step (an ``asyncio.sleep``), so the
worker hosts its actor, task, lease and step context. The worker is warmed up with a few
runs first; the figure is the RSS once every run is in its step, minus the warm idle RSS,
divided by the runs. The worker's CPU while it only keeps those runs' leases alive is
reported beside it. Passivation (runs waiting on a signal, unloaded from memory) is not
built yet, so the 10,000-passivated figure is not measured.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import TYPE_CHECKING, Any

from bench._stalwart import Cluster
from bench._util import cpu_seconds, log, rss_bytes, summary
from bench.resume import _last_event
from stalwart.messages import EV_STEP_STARTED
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from bench._context import Ctx
    from stalwart import RunHandle


async def _all_in_step(cl: Cluster, handles: list[RunHandle], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(handles)
    while pending:
        last = await asyncio.gather(*(_last_event(cl, h.run_id) for h in pending[:200]))
        done = {
            h.run_id
            for h, ev in zip(pending, last, strict=False)
            if ev and ev.type == EV_STEP_STARTED
        }
        pending = [h for h in pending if h.run_id not in done]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} runs never reached their step")
        if pending and not done:
            await asyncio.sleep(0.2)


async def _median_rss(pid: int, samples: int = 5) -> int:
    vals = []
    for _ in range(samples):
        vals.append(rss_bytes(pid))
        await asyncio.sleep(0.3)
    return int(statistics.median(vals))


async def _one(cl: Cluster, rep: int, runs: int, cpu_window: float) -> dict[str, float]:
    wid = f"mem-{rep}"
    [proc] = await cl.start_workers([wid], concurrency=runs + 50)
    warm = [await cl.submit("blocked", 0.2) for _ in range(20)]
    for h in warm:
        await cl.wait_record(h, timeout=60)
    await asyncio.sleep(1.0)
    idle = await _median_rss(proc.pid)
    handles = []
    for i in range(0, runs, 50):  # in chunks: placements stay well inside the Redis pool
        handles += [await cl.submit("blocked", 3600.0) for _ in range(min(50, runs - i))]
        await asyncio.sleep(0.1)
    await _all_in_step(cl, handles, timeout=120)
    await asyncio.sleep(1.0)
    busy = await _median_rss(proc.pid)
    c0, t0 = cpu_seconds(proc.pid), time.monotonic()
    await asyncio.sleep(cpu_window)
    cpu = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    cl.workers.pop(wid).kill()
    proc.log_path.unlink(missing_ok=True)
    return {"idle": idle, "active": busy, "per_run": (busy - idle) / runs, "cpu_idle_hosting": cpu}


async def measure(ctx: Ctx) -> dict[str, Any]:
    runs = ctx.pick(50, 1000)
    reps = ctx.pick(1, 3)
    raw: list[dict[str, float]] = []
    for rep in range(reps):
        async with EmbeddedServers() as servers:
            async with Cluster(servers.nats_url, servers.redis_url, f"mem{rep}", lease_ttl=5) as cl:
                raw.append(await _one(cl, rep, runs, cpu_window=ctx.pick(1.0, 5.0)))
        log(f"memory rep {rep + 1}/{reps}: {raw[-1]}")
    return {
        "runs": runs,
        "raw": raw,
        "idle_rss": summary([r["idle"] for r in raw]),
        "active_rss": summary([r["active"] for r in raw]),
        "per_run": summary([r["per_run"] for r in raw]),
        "cpu_idle_hosting": summary([r["cpu_idle_hosting"] for r in raw]),
        "passivated": "not built yet: passivation (unloading runs that wait on a signal) does not exist",
    }
