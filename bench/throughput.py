"""4. Throughput: durable steps/s and started runs/s with 1, 2 and 4 worker processes.

For each worker count the workers are SIGSTOPped, a batch of runs is submitted (so the
client's submit rate is not what is measured), and the workers are SIGCONTed together.
Rates come from the journal's own timestamps (``StepDone`` for steps, ``Started`` for
runs) over the middle 80 % of the events, so start-up and the tail do not count. CPU per
step is the workers' user+system CPU over the batch divided by its steps; the CPU of
Redis, NATS and the harness is reported beside it, and their sum against the machine's
cores says whether the machine, not Stalwart, is the bound. A ``py-spy`` profile of one
worker under the same load says where a worker's CPU goes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any, cast

from bench import profile
from bench._stalwart import Cluster, supervisor_process
from bench._util import cpu_seconds, log, machine_cpu, percentile, ratio_summary, summary
from stalwart.checkpoints import Started, StepDone, decode_entry
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from stalwart import RunHandle


def _rate(stamps: list[float]) -> float:
    """Events per second over the middle 80 % of ``stamps``."""
    if len(stamps) < 10:
        return len(stamps) / max(max(stamps) - min(stamps), 1e-9) if len(stamps) > 1 else 0.0
    lo, hi = percentile(stamps, 10), percentile(stamps, 90)
    inside = sum(1 for t in stamps if lo <= t <= hi)
    return inside / max(hi - lo, 1e-9)


async def _submit_all(cl: Cluster, agent: str, inp: Any, runs: int) -> list[RunHandle]:
    sem = asyncio.Semaphore(32)

    async def one() -> RunHandle:
        async with sem:
            return await cl.submit(agent, inp)

    return list(await asyncio.gather(*(one() for _ in range(runs))))


async def _journal_stamps(cl: Cluster, run_ids: list[str]) -> tuple[list[float], list[float]]:
    """(step completion times, placement times) from the runs' journals."""
    steps: list[float] = []
    starts: list[float] = []
    store = cl.c.store
    for i in range(0, len(run_ids), 200):
        async with store.redis.pipeline(transaction=False) as pipe:
            for rid in run_ids[i : i + 200]:
                pipe.xrange(store.journal_key(rid))
            rows = await pipe.execute()
        for journal in rows:
            for _, fields in journal:
                e = decode_entry(fields[b"d"])
                if isinstance(e, StepDone):
                    steps.append(e.at + e.duration)
                elif isinstance(e, Started):
                    starts.append(e.at)
    return steps, starts


class _Batch:
    """One batch: stop the workers, submit, continue them, wait, read CPU and journals."""

    def __init__(self, cl: Cluster, pids: dict[str, int]) -> None:
        self.cl = cl
        self.pids = pids  # workers' and servers' pids by role

    def _signal(self, sig: int) -> None:
        for wid, proc in self.cl.workers.items():
            del wid
            os.kill(proc.pid, sig)

    def _cpu(self) -> dict[str, float]:
        out = {"workers": sum(cpu_seconds(p.pid) for p in self.cl.workers.values())}
        for role, pid in self.pids.items():
            out[role] = cpu_seconds(pid)
        return out

    @staticmethod
    def _others(m0: tuple[float, float], m1: tuple[float, float], ours: float) -> float:
        """Share of the machine's CPU used by processes outside this benchmark."""
        busy, total = m1[0] - m0[0], m1[1] - m0[1]
        return max(busy - ours, 0.0) / total if total > 0 else 0.0

    async def run(
        self, agent: str, runs: int, steps: int, during: Any = None, timeout: float = 180.0
    ) -> dict[str, Any]:
        self._signal(signal.SIGSTOP)
        try:
            handles = await _submit_all(self.cl, agent, steps, runs)
        finally:
            cpu0, m0 = self._cpu(), machine_cpu()
            t0 = time.time()
            self._signal(signal.SIGCONT)
        side = asyncio.create_task(during()) if during is not None else None
        store = self.cl.c.store
        while True:  # every run ended: the active set (each of its shards) is empty
            left = sum([await store.redis.scard(k) for k in store.keys.active_shards])
            if not left:
                break
            if time.time() - t0 > timeout:
                raise TimeoutError(f"{left} runs still active {timeout:.0f}s after the batch")
            await asyncio.sleep(0.05)
        wall = time.time() - t0
        cpu1, m1 = self._cpu(), machine_cpu()
        prof = await side if side is not None else None
        step_t, start_t = await _journal_stamps(self.cl, [h.run_id for h in handles])
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        return {
            "steps": len(step_t),
            "runs": len(start_t),
            "wall": wall,
            "steps_per_s": _rate(step_t),
            "runs_per_s": _rate(start_t),
            "cpu": cpu,
            "cpu_util": sum(cpu.values()) / wall / (os.cpu_count() or 1),
            "others_util": self._others(m0, m1, sum(cpu.values())),
            "profile": prof,
        }


CONCURRENCY = 64
"""Runs per worker in the scaling configurations (``_pool_probe`` goes to 512)."""


async def _config(ctx: Any, workers: int, reps: int, with_profile: bool) -> dict[str, Any]:
    runs_a, steps_a = ctx.pick((20, 10), (256, 40))
    runs_b = ctx.pick(40, 1000)
    raw: dict[str, list[Any]] = {"steps": [], "runs": [], "floor": []}
    async with EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as srv:
        pids = {"redis": srv.redis.pid or 0, "nats": srv.nats.pid or 0, "harness": os.getpid()}
        async with Cluster(srv.nats_url, srv.redis_url, f"tp{workers}", lease_ttl=5) as cl:
            await cl.start_workers(
                [f"tp{workers}-{i}" for i in range(workers)], concurrency=CONCURRENCY
            )
            batch = _Batch(cl, pids)
            await batch.run("load", 4, 2)  # warm-up: connections, scripts, consumers
            for rep in range(reps):
                a = await batch.run("load", runs_a, steps_a)
                b = await batch.run("load", runs_b, 1)
                raw["steps"].append(a)
                raw["runs"].append(b)
                raw["floor"].append(await _floor(srv.redis_url, workers, runs_a * steps_a))
                log(
                    f"throughput workers={workers} rep {rep + 1}/{reps}: "
                    f"{a['steps_per_s']:.0f} steps/s, {b['runs_per_s']:.0f} runs/s, "
                    f"CPU {a['cpu_util'] * 100:.0f}% of the machine; floor "
                    f"{raw['floor'][-1]:.0f} appends/s"
                )
            prof = await _profiles(cl, batch) if with_profile else None
    a_s, b_s = raw["steps"], raw["runs"]
    steps_total = [a["steps"] for a in a_s]
    return {
        "workers": workers,
        "batch_steps": {"runs": runs_a, "steps_per_run": steps_a},
        "batch_runs": {"runs": runs_b, "steps_per_run": 1},
        "steps_per_s": summary([a["steps_per_s"] for a in a_s]),
        "floor_per_s": summary(raw["floor"]),
        "over_floor": ratio_summary([a["steps_per_s"] for a in a_s], raw["floor"]),
        "runs_per_s": summary([b["runs_per_s"] for b in b_s]),
        "cpu_us_per_step": {
            role: summary([a["cpu"][role] / n * 1e6 for a, n in zip(a_s, steps_total, strict=True)])
            for role in a_s[0]["cpu"]
        },
        "cpu_ms_per_run": {
            role: summary([b["cpu"][role] / b["runs"] * 1e3 for b in b_s]) for role in b_s[0]["cpu"]
        },
        "cpu_util_steps": summary([a["cpu_util"] for a in a_s]),
        "cpu_util_runs": summary([b["cpu_util"] for b in b_s]),
        "others_util": summary([x["others_util"] for x in a_s + b_s]),
        "profile": prof,
    }


async def _floor(url: str, workers: int, appends: int) -> float:
    """Appends/s of the floor with the batch's callers (one process of ``CONCURRENCY``
    callers per worker) and as many appends as the batch has steps, on the same Redis."""
    from bench.floor_load import floor

    res = await floor(url, workers, CONCURRENCY, max(appends // (CONCURRENCY * workers), 1))
    return _rate(res["stamps"])


async def _profiles(cl: Cluster, batch: _Batch) -> dict[str, Any]:
    """py-spy profiles of one worker: during a steps batch, and during a runs batch."""
    pid = next(iter(cl.workers.values())).pid
    out: dict[str, Any] = {}
    for name, runs, steps in (("steps", 256, 150), ("runs", 4000, 1)):

        async def sample() -> dict[str, Any]:
            await asyncio.sleep(0.3)
            return await profile.record(pid, seconds=4)

        res = await batch.run("load", runs, steps, during=sample)
        out[name] = {"steps_per_s": res["steps_per_s"], "runs_per_s": res["runs_per_s"],
                     "wall": res["wall"], **(res["profile"] or {})}  # fmt: skip
    return out


async def _pool_probe(ctx: Any) -> dict[str, Any]:
    """One worker with ``--concurrency 512`` (and a supervisor, to re-place abandoned runs):
    a burst far past the Redis connection pool's size must queue, not fail."""
    runs, steps = ctx.pick((256, 10), (512, 40))
    async with EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as srv:
        pids = {"redis": srv.redis.pid or 0, "nats": srv.nats.pid or 0}
        async with Cluster(srv.nats_url, srv.redis_url, "tppool", lease_ttl=5) as cl:
            sup = supervisor_process(cl)
            try:
                [proc] = await cl.start_workers(["tppool-0"], concurrency=512)
                batch = _Batch(cl, pids)
                t0 = time.time()
                walls: list[float] = []
                for _ in range(3):  # a failure is timing-dependent: up to 3 batches
                    walls.append((await batch.run("load", runs, steps, timeout=240))["wall"])
                    if '"place.crashed"' in proc.log_text():
                        break
                log_text = proc.log_text()
                starts = await _journal_stamps(cl, await _run_ids(cl))
            finally:
                sup.kill()
                sup.log_path.unlink(missing_ok=True)
    delays = sorted(t - t0 for t in starts[1])
    return {
        "concurrency": 512,
        "runs": runs,
        "steps_per_run": steps,
        "batches": len(walls),
        "wall": max(walls),
        "place_crashed": log_text.count('"place.crashed"'),
        "max_connections_errors": log_text.count("MaxConnectionsError"),
        "abandoned": log_text.count('"run.abandoned"'),
        "runs_started_after_5s": sum(1 for d in delays if d > 5),
        "last_start": delays[-1] if delays else 0.0,
    }


async def _run_ids(cl: Cluster) -> list[str]:
    store = cl.c.store
    ids: list[bytes] = []
    for key in store.keys.runs_shards:
        ids += cast("list[bytes]", await store.redis.zrange(key, 0, -1))
    return [i.decode() for i in ids]


async def measure(ctx: Any) -> dict[str, Any]:
    counts = ctx.pick([1], [1, 2, 4])
    reps = ctx.pick(1, 3)
    out: dict[str, Any] = {"configs": {}, "nproc": os.cpu_count(), "concurrency": CONCURRENCY}
    for w in counts:
        out["configs"][str(w)] = await _config(
            ctx, w, reps, with_profile=(w == 1 and not ctx.quick)
        )
    from bench import side_by_side

    try:  # the peers can fail on their own: keep Stalwart's figures
        out["side_by_side"] = await side_by_side.measure(ctx)
    except Exception:
        log("throughput: side by side FAILED")
        out["side_by_side"] = {"error": traceback.format_exc()}
        print(out["side_by_side"]["error"], file=sys.stderr)
    if not ctx.quick:  # it waits out JetStream's 30 s ack_wait
        try:  # a failure here must not lose the figures above
            out["pool_probe"] = await _pool_probe(ctx)
        except Exception:
            out["pool_probe"] = {"error": traceback.format_exc()}
        log(f"throughput: pool probe {out['pool_probe']}")
    return out
