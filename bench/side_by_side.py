"""4b. Throughput side by side (issue #19): Stalwart, its floor, DBOS and Temporal, same run.

One Stalwart worker (``--concurrency 64``) against the floor and the peers at the same
concurrency, interleaved round by round so each ratio compares figures taken minutes apart
on the same machine:

- Stalwart: the steps batch of section 4 (runs of trivial steps, submitted while the worker
  is SIGSTOPped) and a batch of single-step runs;
- floor: the same number of fenced journal appends from 64 concurrent callers on the same
  Redis through ``CheckpointStore.append`` (``bench.floor_load``): what a step costs at least;
- DBOS: workflows of trivial steps through a queue with ``worker_concurrency`` 64, started
  from 16 threads of the same process (PostgreSQL with its default, durable settings);
- Temporal: workflows of trivial local activities, and of regular activities, started from
  16 concurrent tasks of the worker's own process (the worker's default slots).

Rates are over the middle 80 % of the step (workflow start) timestamps, as in section 4.
CPU per step sums the runtime's processes: Stalwart's worker, Redis and NATS; the floor's
process and Redis; the DBOS process (client and executor) and PostgreSQL's processes; the
Temporal process (client and worker) and the dev server. Then submit -> first step started
latency under load: runs of 3 steps started at a fixed rate while the workers run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from bench._stalwart import Cluster
from bench._util import cpu_seconds, log, percentile, ratio_summary, summary, tree_cpu_seconds
from bench.floor_load import floor
from bench.throughput import CONCURRENCY, _Batch, _rate
from stalwart.checkpoints import StepDone, decode_entry
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from bench._context import Ctx
    from bench.peers._protocol import PeerProcess
    from stalwart import RunHandle

PEERS = ("dbos", "temporal_local", "temporal")
LABELS = {
    "stalwart": "Stalwart (1 worker)",
    "floor": "floor: fenced appends",
    "dbos": "DBOS (queue)",
    "temporal_local": "Temporal (local activities)",
    "temporal": "Temporal (activities)",
}


def _peer_rates(res: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(step times, workflow start times) from a peer's stamp lists."""
    steps = [t for s in res["stamps"] for t in s[1:]]
    starts = [s[0] for s in res["stamps"]]
    return steps, starts


class _Peer:
    """A peer process and its server's pid, measured the same way for every call."""

    def __init__(self, name: str, proc: PeerProcess, server_pid: int, **kw: Any) -> None:
        self.name, self.proc, self.server_pid, self.kw = name, proc, server_pid, kw

    def _cpu(self) -> tuple[float, float]:
        return tree_cpu_seconds(self.proc.pid), tree_cpu_seconds(self.server_pid)

    async def batch(self, runs: int, steps: int) -> dict[str, Any]:
        c0 = self._cpu()
        res = await self.proc.call("throughput", runs=runs, steps=steps, timeout=600, **self.kw)
        c1 = self._cpu()
        step_t, start_t = _peer_rates(res)
        return {
            "steps": len(step_t),
            "runs": len(start_t),
            "wall": res["ended"] - res["t0"],
            "steps_per_s": _rate(step_t),
            "runs_per_s": _rate(start_t),
            "cpu": {"process": c1[0] - c0[0], "server": c1[1] - c0[1]},
        }

    async def latency(self, rate: float, runs: int, steps: int) -> list[float]:
        res = await self.proc.call(
            "latency", rate=rate, runs=runs, steps=steps, timeout=600, **self.kw
        )
        return [s[1] - t for t, s in zip(res["submit"], res["stamps"], strict=True)]


async def _stalwart_latency(cl: Cluster, rate: float, runs: int, steps: int) -> list[float]:
    """Submit ``runs`` runs at ``rate``/s; submit -> first step started, per run."""
    t0 = time.time() + 0.2
    submitted: list[float] = []
    tasks: list[asyncio.Task[RunHandle]] = []
    for i in range(runs):
        delay = t0 + i / rate - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        submitted.append(time.time())
        tasks.append(asyncio.create_task(cl.submit("load", steps)))
    handles = await asyncio.gather(*tasks)
    await wait_ended(cl, [h.run_id for h in handles])
    firsts = await first_steps(cl, [h.run_id for h in handles])
    return [f - s for s, f in zip(submitted, firsts, strict=True)]


async def wait_ended(cl: Cluster, run_ids: list[str], timeout: float = 300.0) -> None:
    """Poll the runs' records (pipelined) until every one is terminal."""
    store = cl.c.store
    deadline = time.monotonic() + timeout
    left = list(run_ids)
    while left:
        async with store.redis.pipeline(transaction=False) as pipe:
            for rid in left:
                pipe.hget(store.record_key(rid), "status")
            rows = await pipe.execute()
        left = [r for r, s in zip(left, rows, strict=True)
                if s not in (b"completed", b"failed", b"cancelled")]  # fmt: skip
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} runs did not end within {timeout:.0f}s")
        if left:
            await asyncio.sleep(0.05)


async def first_steps(cl: Cluster, run_ids: list[str]) -> list[float]:
    """When each run's first step started (its first ``StepDone``'s ``at``)."""
    store = cl.c.store
    out: list[float] = []
    for i in range(0, len(run_ids), 200):
        async with store.redis.pipeline(transaction=False) as pipe:
            for rid in run_ids[i : i + 200]:
                pipe.xrange(store.journal_key(rid), count=4)
            rows = await pipe.execute()
        for journal in rows:
            entries = [decode_entry(f[b"d"]) for _, f in journal]
            out.append(next(e.at for e in entries if isinstance(e, StepDone)))
    return out


def _lat(values: list[float]) -> dict[str, Any]:
    return {"p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else 0.0, "n": len(values)}  # fmt: skip


@contextlib.asynccontextmanager
async def _peers(ctx: Ctx) -> Any:
    """The peers that are available, as ``_Peer``s by name."""
    out: dict[str, _Peer] = {}
    async with ctx.dbos() as dbos, ctx.temporal_peer() as tp:
        if dbos is not None and ctx.pg is not None and ctx.pg.proc is not None:
            out["dbos"] = _Peer("dbos", dbos, ctx.pg.proc.pid, concurrency=CONCURRENCY)
        if tp is not None and ctx.temporal is not None and ctx.temporal.proc is not None:
            pid = ctx.temporal.proc.pid
            out["temporal_local"] = _Peer("temporal_local", tp, pid, local=True)
            out["temporal"] = _Peer("temporal", tp, pid, local=False)
        yield out


def _stalwart_cpu(b: dict[str, Any]) -> float:
    return float(b["cpu"]["workers"] + b["cpu"]["redis"] + b["cpu"]["nats"])


async def measure(ctx: Ctx) -> dict[str, Any]:
    runs, steps = ctx.pick((20, 10), (256, 40))
    # Temporal's dev server does tens of workflows per second here: smaller batches (rates
    # are per second, and 64 runs still fill the 64 slots of the comparison).
    peer_batch = {"dbos": ctx.pick((8, 4), (128, 20)), "temporal_local": ctx.pick((8, 4), (64, 10)),
                  "temporal": ctx.pick((8, 4), (64, 10))}  # fmt: skip
    single = ctx.pick(40, 500)
    peer_single = {
        "dbos": single,
        "temporal_local": ctx.pick(20, 100),
        "temporal": ctx.pick(20, 60),
    }
    reps = ctx.pick(1, 2)
    lat_rates = ctx.pick([10.0], [10.0, 40.0])
    lat_seconds, lat_steps = ctx.pick(1.5, 8.0), 3
    raw: dict[str, dict[str, list[Any]]] = {}

    def add(name: str, kind: str, value: Any) -> None:
        raw.setdefault(name, {}).setdefault(kind, []).append(value)

    async with EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as srv:
        pids = {"redis": srv.redis.pid or 0, "nats": srv.nats.pid or 0}
        async with (
            Cluster(srv.nats_url, srv.redis_url, "sbs", lease_ttl=5) as cl,
            _peers(ctx) as peers,
        ):
            await cl.start_workers(["sbs-0"], concurrency=CONCURRENCY)
            batch = _Batch(cl, pids)
            await batch.run("load", 4, 2)  # warm-up: connections, scripts, consumers
            for p in peers.values():
                await p.batch(4, 2)
            for rep in range(reps):
                s = await batch.run("load", runs, steps)
                add("stalwart", "steps", s)
                add("stalwart", "runs", await batch.run("load", single, 1))
                r0 = cpu_seconds(pids["redis"])
                f = await floor(srv.redis_url, 1, CONCURRENCY, max(runs * steps // CONCURRENCY, 1))
                add("floor", "steps", {"steps_per_s": _rate(f["stamps"]), "steps": len(f["stamps"]),
                                       "cpu": {"process": f["cpu"],
                                               "server": cpu_seconds(pids["redis"]) - r0}})  # fmt: skip
                for name, p in peers.items():
                    add(name, "steps", await p.batch(*peer_batch[name]))
                    add(name, "runs", await p.batch(peer_single[name], 1))
                line = ", ".join(f"{n} {v['steps'][-1]['steps_per_s']:.0f}" for n, v in raw.items())
                log(f"side by side rep {rep + 1}/{reps}: steps/s {line}")
            latency: dict[str, Any] = {}
            for rate in lat_rates:
                n = int(rate * lat_seconds)
                row = latency[str(int(rate))] = {
                    "stalwart": _lat(await _stalwart_latency(cl, rate, n, lat_steps))
                }
                for name, p in peers.items():
                    capacity = min(b["runs_per_s"] for b in raw[name]["runs"])
                    if capacity < 2 * rate:  # a backlog would grow: latency = queue length
                        row[name] = {"skipped": f"{capacity:.0f} runs/s measured, < 2x the rate"}
                        continue
                    row[name] = _lat(await p.latency(rate, n, lat_steps))
                log(f"side by side latency at {rate:.0f}/s: {row}")
    return _summarise(raw, latency, {
        "concurrency": CONCURRENCY, "stalwart_batch": [runs, steps], "peer_batch": peer_batch,
        "single_runs": single, "peer_single": peer_single, "reps": reps,
        "latency": {"rates": lat_rates, "seconds": lat_seconds, "steps": lat_steps},
        "nproc": os.cpu_count(),
    })  # fmt: skip


def _summarise(
    raw: dict[str, dict[str, list[Any]]], latency: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name, kinds in raw.items():
        st = kinds["steps"]
        cpu = [(_stalwart_cpu(b) if name == "stalwart" else sum(b["cpu"].values())) / b["steps"]
               for b in st]  # fmt: skip
        systems[name] = {
            "steps_per_s": summary([b["steps_per_s"] for b in st]),
            "cpu_us_per_step": summary([c * 1e6 for c in cpu]),
            "raw_steps_per_s": [b["steps_per_s"] for b in st],
        }
        if "runs" in kinds:
            systems[name]["runs_per_s"] = summary([b["runs_per_s"] for b in kinds["runs"]])
            systems[name]["raw_runs_per_s"] = [b["runs_per_s"] for b in kinds["runs"]]
    ratios: dict[str, Any] = {}
    fl = systems.get("floor", {}).get("raw_steps_per_s", [])
    st = systems.get("stalwart", {})
    for name, s in systems.items():
        if name != "floor":
            ratios[f"{name}/floor"] = ratio_summary(s["raw_steps_per_s"], fl)
        if name not in ("floor", "stalwart") and st:
            ratios[f"stalwart/{name}"] = ratio_summary(st["raw_steps_per_s"], s["raw_steps_per_s"])
            ratios[f"stalwart/{name} runs"] = ratio_summary(
                st["raw_runs_per_s"], s["raw_runs_per_s"]
            )
    return {"systems": systems, "ratios": ratios, "latency": latency, "params": params}
