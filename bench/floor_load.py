"""The throughput floor: fenced journal appends from N concurrent callers, no runtime.

``python -m bench.floor_load URL CALLERS APPENDS START_AT`` (one process stands for one
worker): ``CALLERS`` tasks each append ``APPENDS`` step entries to a run of their own
through ``CheckpointStore.append`` (the auto-pipelined connection and fenced script every
Stalwart step goes through), starting at wall-clock ``START_AT`` so that several processes
start together. Prints one JSON line: each append's completion time and the process's CPU
seconds over the appends. :func:`floor` runs one process per worker from the harness.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from bench._util import bench_env, die_with_parent
from stalwart.checkpoints import CheckpointStore

NAMESPACE = "floor"


async def _appends(url: str, callers: int, appends: int, start_at: float) -> dict[str, Any]:
    from bench.overhead import _entry  # the same entry as the serial floor of section 1

    store = await CheckpointStore.connect(url, NAMESPACE, max_connections=8)
    tag = f"{os.getpid()}-{time.time_ns()}"
    rids = [f"floor-{tag}-{i}" for i in range(callers)]
    for rid in rids:
        await store.redis.hset(store.record_key(rid), mapping={"epoch": "1", "status": "running"})
    entries = [_entry(i) for i in range(appends)]
    stamps: list[float] = []
    await store.append(rids[0], 1, 1, entries[0])  # warm-up: the script is loaded
    await store.redis.delete(store.journal_key(rids[0]))

    async def caller(rid: str) -> None:
        for i, e in enumerate(entries):
            await store.append(rid, 1, i + 1, e)
            stamps.append(time.time())

    await asyncio.sleep(max(start_at - time.time(), 0.0))
    cpu0 = time.process_time()
    await asyncio.gather(*(caller(r) for r in rids))
    cpu = time.process_time() - cpu0
    await store.redis.delete(*[store.journal_key(r) for r in rids],
                             *[store.record_key(r) for r in rids])  # fmt: skip
    await store.close()
    return {"stamps": stamps, "cpu": cpu}


async def floor(url: str, processes: int, callers: int, appends: int) -> dict[str, Any]:
    """``processes`` floor processes of ``callers`` callers each, started together;
    (every append's completion time, total CPU seconds of the processes)."""
    start_at = time.time() + 1.5  # time to import and connect
    cmd = [sys.executable, "-m", "bench.floor_load", url, str(callers), str(appends)]
    env = {**os.environ, **bench_env()}
    procs = [
        await asyncio.create_subprocess_exec(
            *cmd,
            repr(start_at),
            stdout=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=die_with_parent(),
            limit=64 * 1024 * 1024,
        )
        for _ in range(processes)
    ]
    stamps: list[float] = []
    cpu = 0.0
    for p in procs:
        out, _ = await p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"bench.floor_load exited with {p.returncode}")
        res = json.loads(out)
        stamps += res["stamps"]
        cpu += res["cpu"]
    return {"stamps": stamps, "cpu": cpu}


def main() -> None:
    url, callers, appends, start_at = sys.argv[1:5]
    res = asyncio.run(_appends(url, int(callers), int(appends), float(start_at)))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
