"""6. Memory: RSS of a worker hosting 1,000 active runs, and after 10,000 passivated ones.

Active: each run of the ``blocked`` agent is in flight in one step (an ``asyncio.sleep``),
so the worker hosts its actor, task, lease and step context. The worker is warmed up with
a few runs first; the figure is the RSS once every run is in its step, minus the warm idle
RSS, divided by the runs. The worker's CPU while it only keeps those runs' leases alive is
reported beside it.

Passivated: runs of the ``waiter`` agent take one step and wait for a signal that never
comes; with ``STALWART_PASSIVATE_AFTER`` short, each gives its slot and lease up and is
left as a ``waiting`` record in Redis. Measured: the worker's RSS after 10,000 passed
through it (what it still holds for them), and Redis memory per passivated run.
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


async def _all_waiting(cl: Cluster, run_ids: list[str], timeout: float) -> None:
    store = cl.c.store
    deadline = time.monotonic() + timeout
    pending = list(run_ids)
    while pending:
        left = []
        for i in range(0, len(pending), 1000):
            chunk = pending[i : i + 1000]
            async with store.redis.pipeline(transaction=False) as pipe:
                for rid in chunk:
                    pipe.hget(store.record_key(rid), "status")
                statuses = await pipe.execute()
            left += [r for r, st in zip(chunk, statuses, strict=True) if st != b"waiting"]
        pending = left
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} runs never passivated")
        if pending:
            await asyncio.sleep(0.5)


async def _used_memory(cl: Cluster) -> int:
    info = await cl.c.store.redis.info("memory")
    return int(info["used_memory"])


async def _passivated(cl: Cluster, runs: int) -> dict[str, float]:
    """RSS of a worker that passivated ``runs`` runs, and Redis bytes per passivated run."""
    env = {"STALWART_PASSIVATE_AFTER": "0.05"}
    [proc] = await cl.start_workers(["pas-0"], concurrency=64, env=env)
    warm = [await cl.submit("waiter", None) for _ in range(20)]
    await _all_waiting(cl, [h.run_id for h in warm], timeout=60)
    await asyncio.sleep(1.0)
    idle, redis0 = await _median_rss(proc.pid), await _used_memory(cl)
    sem = asyncio.Semaphore(16)
    t0 = time.monotonic()

    async def one() -> str:
        async with sem:
            return (await cl.submit("waiter", None)).run_id

    ids = list(await asyncio.gather(*(one() for _ in range(runs))))
    await _all_waiting(cl, ids, timeout=60 + runs / 20)
    elapsed = time.monotonic() - t0
    await asyncio.sleep(1.0)
    after, redis1 = await _median_rss(proc.pid), await _used_memory(cl)
    cl.workers.pop("pas-0").kill()
    proc.log_path.unlink(missing_ok=True)
    return {
        "idle": idle,
        "after": after,
        "per_run": (after - idle) / runs,
        "redis_per_run": (redis1 - redis0) / runs,
        "passivated_per_s": runs / elapsed,
    }


async def measure(ctx: Ctx) -> dict[str, Any]:
    runs = ctx.pick(50, 1000)
    reps = ctx.pick(1, 3)
    raw: list[dict[str, float]] = []
    for rep in range(reps):
        async with EmbeddedServers() as servers:
            async with Cluster(servers.nats_url, servers.redis_url, f"mem{rep}", lease_ttl=5) as cl:
                raw.append(await _one(cl, rep, runs, cpu_window=ctx.pick(1.0, 5.0)))
        log(f"memory rep {rep + 1}/{reps}: {raw[-1]}")
    passivated: dict[str, Any]
    n_pas = ctx.pick(50, 10000)
    try:
        async with EmbeddedServers() as servers:
            async with Cluster(servers.nats_url, servers.redis_url, "mempas", lease_ttl=5) as cl:
                pas = await _passivated(cl, n_pas)
        log(f"memory: {n_pas} passivated: {pas}")
        passivated = {"runs": n_pas, **pas}
    except Exception as exc:  # passivation is new: report, do not fail the suite
        log(f"memory: passivation failed: {exc!r}")
        passivated = {"runs": n_pas, "error": repr(exc)}
    return {
        "runs": runs,
        "raw": raw,
        "idle_rss": summary([r["idle"] for r in raw]),
        "active_rss": summary([r["active"] for r in raw]),
        "per_run": summary([r["per_run"] for r in raw]),
        "cpu_idle_hosting": summary([r["cpu_idle_hosting"] for r in raw]),
        "passivated": passivated,
    }
