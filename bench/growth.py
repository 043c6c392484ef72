"""12. Growth: how steps/s and CPU per step change as the load grows (issue #19).

One worker process unless said otherwise, Redis with AOF everysec, the app
``bench.growth_agents``. Three curves, each point a batch measured the same way (runs
submitted while the worker runs; rates over the middle 80 % of the journal's step
timestamps; worker CPU from ``/proc`` over the batch divided by its steps):

- **runs in flight**: *active*, a worker with ``--concurrency`` C = 64, 512, 4,096 and a
  batch of C runs of trivial steps (all stepping at once); *passivated*, P = 64, 512,
  4,096 runs parked in a signal wait (passivated, out of the worker's memory) and a fixed
  active load of 64 runs on top;
- **journal length**: runs with L = 10, 1,000, 10,000 steps in their journal passivate,
  are woken by a signal, and take 200 new steps: the resume (signal to first new step) and
  the time between new steps at that length;
- **agents**: 1, 10, 50 agents served by the same 2 workers (1 in ``--quick``): a batch spread over all of
  them (steps/s, CPU per step), and the idle NATS traffic with nothing running (``/varz``
  message counts over a window of several pull-request expiries, default settings).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
import traceback
import urllib.request
from typing import TYPE_CHECKING, Any

from bench._stalwart import Cluster, supervisor_process
from bench._util import cpu_seconds, log, percentile, summary
from bench.side_by_side import wait_ended
from bench.throughput import _rate
from stalwart.checkpoints import StepDone, decode_entry
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bench._context import Ctx
    from stalwart import RunHandle

APP = "bench.growth_agents:app"
PASSIVATE_AFTER = "0.05"
"""Seconds a signal wait holds its slot before the run passivates (default 60)."""


async def _submit(cl: Cluster, items: list[tuple[str, Any]]) -> list[RunHandle]:
    sem = asyncio.Semaphore(32)

    async def one(agent: str, inp: Any) -> RunHandle:
        async with sem:
            return await cl.submit(agent, inp)

    return list(await asyncio.gather(*(one(a, i) for a, i in items)))


async def _steps(cl: Cluster, run_ids: list[str], name: str | None = None) -> list[StepDone]:
    """Every ``StepDone`` of the runs (of step ``name`` only, when given)."""
    store = cl.c.store
    out: list[StepDone] = []
    for i in range(0, len(run_ids), 100):
        async with store.redis.pipeline(transaction=False) as pipe:
            for rid in run_ids[i : i + 100]:
                pipe.xrange(store.journal_key(rid))
            rows = await pipe.execute()
        for journal in rows:
            for _, fields in journal:
                e = decode_entry(fields[b"d"])
                if isinstance(e, StepDone) and (name is None or e.name == name):
                    out.append(e)
    return out


def _worker_cpu(cl: Cluster) -> float:
    return sum(cpu_seconds(p.pid) for p in cl.workers.values())


def _signal(cl: Cluster, sig: int) -> None:
    for proc in cl.workers.values():
        os.kill(proc.pid, sig)


async def _batch(cl: Cluster, items: list[tuple[str, Any]]) -> dict[str, Any]:
    """Submit ``items`` (agent, input) while the workers are SIGSTOPped (so the runs start
    together and the submit rate is not what is measured), continue them, wait for the
    runs to end; rate and worker CPU per step."""
    _signal(cl, signal.SIGSTOP)
    try:
        handles = await _submit(cl, items)
    finally:
        cpu0 = _worker_cpu(cl)
        t0 = time.time()
        _signal(cl, signal.SIGCONT)
    ids = [h.run_id for h in handles]
    await wait_ended(cl, ids, timeout=300)
    cpu = _worker_cpu(cl) - cpu0
    steps = await _steps(cl, ids)
    return {
        "steps": len(steps),
        "wall": time.time() - t0,
        "steps_per_s": _rate([e.at + e.duration for e in steps]),
        "cpu_us_per_step": cpu / max(len(steps), 1) * 1e6,
    }


async def _wait_status(cl: Cluster, run_ids: list[str], status: bytes, timeout: float) -> None:
    store = cl.c.store
    deadline = time.monotonic() + timeout
    left = list(run_ids)
    while left:
        async with store.redis.pipeline(transaction=False) as pipe:
            for rid in left:
                pipe.hget(store.record_key(rid), "status")
            rows = await pipe.execute()
        left = [r for r, s in zip(left, rows, strict=True) if s != status]
        if left and time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} runs not {status.decode()} after {timeout:.0f}s")
        if left:
            await asyncio.sleep(0.1)


LEASE_TTL = 5
"""Leases outlive a SIGSTOP while a big batch is submitted."""


@contextlib.asynccontextmanager
async def _cluster(srv: EmbeddedServers, ns: str) -> AsyncIterator[Cluster]:
    """A cluster and a supervisor: on a starved machine a lease can run out before the
    worker confirms it, and the supervisor re-places such a run as in production."""
    async with Cluster(srv.nats_url, srv.redis_url, ns, lease_ttl=LEASE_TTL) as cl:
        sup = supervisor_process(cl)
        try:
            yield cl
        finally:
            sup.kill()
            sup.log_path.unlink(missing_ok=True)


def _servers() -> EmbeddedServers:
    return EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec")


async def _inflight(ctx: Ctx) -> dict[str, Any]:
    sizes = ctx.pick([16, 64], [64, 512, 4096])
    steps = ctx.pick(4, 12)
    active_load = ctx.pick((16, 10), (64, 40))
    out: dict[str, Any] = {"sizes": sizes, "active": {}, "passivated": {},
                           "steps_per_run": steps, "active_load": active_load}  # fmt: skip
    env = {"STALWART_PASSIVATE_AFTER": PASSIVATE_AFTER}
    async with _servers() as srv:  # a namespace (streams, keys) per point
        for c in sizes:
            try:  # a point that fails (runs stuck past the timeout) keeps the others
                async with _cluster(srv, f"ga{c}") as cl:
                    await cl.start_workers([f"ga{c}-0"], concurrency=c, env=env, app=APP)
                    await _batch(cl, [("a000", 2)] * 4)  # warm-up
                    out["active"][str(c)] = res = await _batch(cl, [("a000", steps)] * c)
                    log(f"growth: {c} active runs: {res}")
            except Exception as exc:
                out["active"][str(c)] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"growth: {c} active runs FAILED: {exc}")
            try:
                async with _cluster(srv, f"gp{c}") as cl:
                    await cl.start_workers([f"gp{c}-0"], concurrency=64, env=env, app=APP)
                    await _batch(cl, [("a000", 2)] * 4)
                    parked = await _submit(cl, [("waiter", None)] * c)
                    await _wait_status(cl, [h.run_id for h in parked], b"waiting", timeout=300)
                    runs, n = active_load
                    out["passivated"][str(c)] = res = await _batch(cl, [("a000", n)] * runs)
                    log(f"growth: {c} passivated runs + {runs} active: {res}")
            except Exception as exc:
                out["passivated"][str(c)] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"growth: {c} passivated runs FAILED: {exc}")
    return out


async def _journal(ctx: Ctx) -> dict[str, Any]:
    lengths = ctx.pick([10, 100], [10, 1000, 10000])
    runs, after = ctx.pick((2, 20), (4, 200))
    out: dict[str, Any] = {"lengths": lengths, "runs": runs, "after": after, "points": {}}
    env = {"STALWART_PASSIVATE_AFTER": PASSIVATE_AFTER}
    async with _servers() as srv, _cluster(srv, "gj") as cl:
        await cl.start_workers(["gj-0"], concurrency=64, env=env, app=APP)
        await _batch(cl, [("a000", 2)] * 4)
        for n in lengths:
            handles = await _submit(cl, [("resumer", {"before": n, "after": after})] * runs)
            ids = [h.run_id for h in handles]
            await _wait_status(cl, ids, b"waiting", timeout=600)
            cpu0 = _worker_cpu(cl)
            sent = time.time()
            await asyncio.gather(*(h.signal("go") for h in handles))
            await wait_ended(cl, ids, timeout=300)
            cpu = _worker_cpu(cl) - cpu0
            new = await _steps(cl, ids, "after")
            firsts: list[float] = []
            gaps: list[float] = []
            # _steps reads the runs in order, each journal in order: ``after`` steps per run
            per_run = [sorted(e.at for e in new[i * after : (i + 1) * after]) for i in range(runs)]
            for ts in per_run:
                firsts.append(ts[0] - sent)
                gaps += [b - a for a, b in itertools.pairwise(ts)]
            out["points"][str(n)] = res = {
                "resume": summary(firsts),
                "step_gap_us": percentile(gaps, 50) * 1e6,
                "cpu_us_per_step": cpu / max(len(new), 1) * 1e6,
            }
            log(f"growth: journal {n}: resume {res['resume']['median']:.3f}s, "
                f"{res['step_gap_us']:.0f} µs between new steps")  # fmt: skip
    return out


def _varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
    return data


async def _agents(ctx: Ctx) -> dict[str, Any]:
    counts = ctx.pick([1, 10], [1, 10, 50])
    workers = ctx.pick(1, 2)
    # 1,024 runs: a batch of 128 (0.2 s) measured mostly ramp-up, and its rate moved 2x
    # between points (50 agents read 0.49x of one; at 1,024 runs 0.95x-1.2x, 2026-12-04).
    runs, steps = ctx.pick((20, 5), (1024, 20))
    window = ctx.pick(1.0, 15.0)  # pull requests expire after half a lease TTL (2.5 s)
    out: dict[str, Any] = {"counts": counts, "workers": workers, "window": window, "points": {}}
    for a in counts:  # servers of its own per point: /varz counts the whole server
        env = {"BENCH_GROWTH_AGENTS": str(a), "BENCH_GROWTH_WAIT": "0"}
        async with _servers() as srv, _cluster(srv, f"gn{a}") as cl:
            ids = [f"gn{a}-{i}" for i in range(workers)]
            await cl.start_workers(ids, concurrency=64, env=env, app=APP)
            await _batch(cl, [(f"a{k % a:03d}", 2) for k in range(4)])
            res = await _batch(cl, [(f"a{k % a:03d}", steps) for k in range(runs)])
            await asyncio.sleep(ctx.pick(0.3, 3.0))  # the batch's traffic is over
            port = srv.nats.monitor_port
            v0, t0 = await asyncio.to_thread(_varz, port), time.monotonic()
            cpu0 = _worker_cpu(cl)
            await asyncio.sleep(window)
            v1, t1 = await asyncio.to_thread(_varz, port), time.monotonic()
            idle_cpu = (_worker_cpu(cl) - cpu0) / (t1 - t0)
        dt = t1 - t0
        msgs = ((v1["in_msgs"] - v0["in_msgs"]) + (v1["out_msgs"] - v0["out_msgs"])) / dt
        out["points"][str(a)] = res | {"idle_msgs_per_s": msgs, "idle_worker_cpu": idle_cpu}
        log(f"growth: {a} agents x {workers} workers: {out['points'][str(a)]}")
    return out


async def measure(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {"nproc": os.cpu_count()}
    for name, fn in (("inflight", _inflight), ("journal", _journal), ("agents", _agents)):
        try:  # one curve failing keeps the others
            out[name] = await fn(ctx)
        except Exception:
            log(f"growth: {name} FAILED")
            out[name] = {"error": traceback.format_exc()}
    if all("error" in out[k] for k in ("inflight", "journal", "agents")):
        raise RuntimeError(out["inflight"]["error"])
    return out
