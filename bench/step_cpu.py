"""Worker CPU per durable step, alone: one worker, batches of ``load`` runs, CPU from /proc.

``bench/run --only throughput`` reports the same figure among many; this isolates it for
A/B work on the step path (issue #19). One ``stalwart worker`` process with
``--concurrency 64`` serves ``RUNS`` runs of ``STEPS`` trivial steps, submitted while it is
SIGSTOPped and released together (``bench.throughput._Batch``); the figure is the worker's
user+system CPU over the batch divided by the steps journaled. Run it per tree::

    PYTHONPATH=<tree>/src:<tree> python -m bench.step_cpu [REPS] [--profile SECONDS] [--calls]

and interleave trees (base/after/base/after): the machine is shared, so compare within a
round. ``--profile`` adds a ``py-spy`` profile of the worker during a longer batch (py-spy
next to this Python or on PATH). ``--calls`` has the worker count its function calls
(Python and C, main thread) instead: a figure the machine's load does not move, though
the counting slows the worker several-fold (its CPU figures then mean nothing).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from bench import profile
from bench._stalwart import Cluster
from bench._util import bench_env
from bench.throughput import CONCURRENCY, _Batch
from stalwart.testing import EmbeddedServers

WORKER_CONCURRENCY = int(os.environ.get("STEP_CPU_CONCURRENCY", str(CONCURRENCY)))
"""The worker's ``--concurrency`` (64, as ``bench/run --only throughput``, unless
``STEP_CPU_CONCURRENCY`` says otherwise: ``STEP_CPU_CONCURRENCY=4096 STEP_CPU_RUNS=4096
STEP_CPU_STEPS=150`` is the load that lost every lease before leases were renewed in
one pipelined write; see docs/benchmarks.md, "Leases under load")."""
RUNS = int(os.environ.get("STEP_CPU_RUNS", "256"))
STEPS = int(os.environ.get("STEP_CPU_STEPS", "40"))
"""The steps batch of ``bench/run --only throughput`` (256 runs of 40 steps) unless
``STEP_CPU_RUNS`` / ``STEP_CPU_STEPS`` say otherwise (a smaller one for ``--calls``)."""


async def _record(pid: int, seconds: float) -> dict[str, Any]:
    """``py-spy`` collapsed stacks with line numbers (kept in ``STEP_CPU_RAW``), summarised."""
    exe = profile.find_py_spy()
    if exe is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    raw = os.environ.get("STEP_CPU_RAW", "/tmp/step_cpu_raw.txt")
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250",
        "--format", "raw", "--nonblocking", "-o", raw,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()
    return profile.summarise(await asyncio.to_thread(Path(raw).read_text))


PROFILE_RUNS = int(os.environ.get("STEP_CPU_PROFILE_RUNS", str(RUNS)))
PROFILE_STEPS = int(os.environ.get("STEP_CPU_PROFILE_STEPS", "150"))
"""The batch profiled by ``--profile``: ``RUNS`` runs of 150 steps, unless these say otherwise
(``STEP_CPU_PROFILE_RUNS=4096 STEP_CPU_PROFILE_STEPS=1`` profiles what a run costs beside
its steps: placement, claim, lease, start and finish)."""

CALLS_DIR = str(Path(__file__).parent / "_calls")


def _calls(path: str) -> int:
    try:
        return int(Path(path).read_text() or 0)
    except (OSError, ValueError):
        return 0


def _calls_by() -> dict[str, int] | None:
    """The worker's call count per function, when ``STEP_CALLS_BY`` names its file."""
    path = os.environ.get("STEP_CALLS_BY")
    if not path:
        return None
    try:
        return {name: n for name, n in json.loads(Path(path).read_text())}
    except (OSError, ValueError):
        return {}


def _by_delta(before: dict[str, int], after: dict[str, int], steps: int) -> list[Any]:
    """Calls per step of each function over one batch, the most called first."""
    delta = {k: (v - before.get(k, 0)) / steps for k, v in after.items()}
    rows = ([k, round(v, 2)] for k, v in delta.items() if v >= 0.05)
    return sorted(rows, key=lambda kv: -kv[1])


async def _settled_calls(path: str) -> int:
    """The worker's call count once it stopped moving (the count file lags 0.2 s)."""
    last = -1
    while True:
        await asyncio.sleep(0.5)
        now = _calls(path)
        if now == last:
            return now
        last = now


async def main(reps: int, profile_seconds: float, calls: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"batches": []}
    count_file = f"/tmp/step-calls-{os.getpid()}"
    env = {}
    if calls:  # the worker counts its function calls (bench/_calls/sitecustomize.py)
        env = {
            "STEP_CALLS_OUT": count_file,
            "STEP_CALLS_BY": os.environ.get("STEP_CALLS_BY", ""),
            "PYTHONPATH": CALLS_DIR + os.pathsep + bench_env()["PYTHONPATH"],
        }
    async with EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as srv:
        pids = {"redis": srv.redis.pid or 0, "nats": srv.nats.pid or 0}
        async with Cluster(srv.nats_url, srv.redis_url, "stepcpu", lease_ttl=5) as cl:
            [proc] = await cl.start_workers(["stepcpu-0"], concurrency=WORKER_CONCURRENCY, env=env)
            batch = _Batch(cl, pids)
            await batch.run("load", 8, 4)  # warm-up: connections, scripts, consumers
            for _ in range(reps):
                c0 = await _settled_calls(count_file) if calls else 0
                by0 = _calls_by()
                r = await batch.run("load", RUNS, STEPS)
                c1 = await _settled_calls(count_file) if calls else 0
                if by0 is not None:
                    out["calls_by"] = _by_delta(by0, _calls_by() or {}, r["steps"])
                row = {
                    "calls_per_step": (c1 - c0) / r["steps"],
                    "worker_us_per_step": r["cpu"]["workers"] / r["steps"] * 1e6,
                    "redis_us_per_step": r["cpu"]["redis"] / r["steps"] * 1e6,
                    "nats_us_per_step": r["cpu"]["nats"] / r["steps"] * 1e6,
                    "steps_per_s": r["steps_per_s"],
                    "others": r["others_util"],
                }
                out["batches"].append(row)
                print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
            if profile_seconds:

                async def sample() -> dict[str, Any]:
                    await asyncio.sleep(0.3)
                    return await _record(proc.pid, profile_seconds)

                r = await batch.run("load", PROFILE_RUNS, PROFILE_STEPS, during=sample)
                out["profile"] = r["profile"]
    worker = sorted(b["worker_us_per_step"] for b in out["batches"])
    out["worker_us_per_step_median"] = worker[len(worker) // 2]
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    prof = 0.0
    if "--profile" in args:
        i = args.index("--profile")
        prof = float(args[i + 1])
        del args[i : i + 2]
    calls = "--calls" in args
    if calls:
        args.remove("--calls")
    res = asyncio.run(main(int(args[0]) if args else 5, prof, calls))
    print(f"worker CPU per step, median: {res['worker_us_per_step_median']:.1f} us")
    for name, n in res.get("calls_by", [])[:400]:
        print(f"{n:8.2f}  {name}")
    if "profile" in res:
        path = os.environ.get("STEP_CPU_PROFILE", "/tmp/step_cpu_profile.json")
        with open(path, "w") as f:
            json.dump(res["profile"], f, indent=1)
        print(f"profile: {path}")
