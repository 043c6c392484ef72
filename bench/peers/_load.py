"""Batch and paced starts for the peers' throughput and latency measurements.

A peer's workflow returns ``[body start, step time, step time, ...]`` (wall clock, taken in
the workflow and its steps); these helpers start the workflows and hand the lists back to
the harness, which computes rates and latencies the same way as for Stalwart's journal.
The sync versions (threads) serve DBOS, the async ones Temporal.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

STARTERS = 16
"""Threads (or concurrent tasks) starting workflows: one caller would bound the start rate."""


def run_batch(
    start: Callable[[], Any], runs: int, result: Callable[[Any], list[float]]
) -> dict[str, Any]:
    """Start ``runs`` workflows from ``STARTERS`` threads and collect their stamp lists."""
    t0 = time.time()
    with ThreadPoolExecutor(STARTERS) as pool:
        handles = list(pool.map(lambda _: start(), range(runs)))
        submitted = time.time()
        stamps = list(pool.map(result, handles))
    return {"t0": t0, "submitted": submitted, "ended": time.time(), "stamps": stamps}


def run_paced(
    start: Callable[[], Any], rate: float, runs: int, result: Callable[[Any], list[float]]
) -> dict[str, Any]:
    """Start ``runs`` workflows at ``rate`` per second; the submit time of each beside its
    stamps. Starts run in threads so a slow start does not delay the next one."""
    t0 = time.time() + 0.2

    def one(i: int) -> tuple[float, Any]:
        return submit_times[i], start()

    submit_times: list[float] = []
    with ThreadPoolExecutor(STARTERS) as pool:
        futures = []
        for i in range(runs):
            delay = t0 + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            submit_times.append(time.time())
            futures.append(pool.submit(one, i))
        handles = [f.result() for f in futures]
        stamps = list(pool.map(lambda h: result(h[1]), handles))
    return {"submit": submit_times, "stamps": stamps}


async def run_batch_async(
    start: Callable[[], Awaitable[Any]], runs: int, result: Callable[[Any], Awaitable[list[float]]]
) -> dict[str, Any]:
    """:func:`run_batch` on the event loop (``STARTERS`` concurrent starts)."""
    sem = asyncio.Semaphore(STARTERS)

    async def one() -> Any:
        async with sem:
            return await start()

    t0 = time.time()
    handles = await asyncio.gather(*(one() for _ in range(runs)))
    submitted = time.time()
    stamps = await asyncio.gather(*(result(h) for h in handles))
    return {"t0": t0, "submitted": submitted, "ended": time.time(), "stamps": list(stamps)}


async def run_paced_async(
    start: Callable[[], Awaitable[Any]],
    rate: float,
    runs: int,
    result: Callable[[Any], Awaitable[list[float]]],
) -> dict[str, Any]:
    """:func:`run_paced` on the event loop: each start is its own task."""
    t0 = time.time() + 0.2
    submit_times: list[float] = []
    tasks = []
    for i in range(runs):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        submit_times.append(time.time())
        tasks.append(asyncio.ensure_future(start()))
    handles = await asyncio.gather(*tasks)
    stamps = await asyncio.gather(*(result(h) for h in handles))
    return {"submit": submit_times, "stamps": list(stamps)}
