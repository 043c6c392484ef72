"""3. Resume cost vs history: a run with 100 / 1,000 / 10,000 completed steps is resumed.

Stalwart: a real ``history`` run records ``n`` steps and blocks in its ``gate`` step. For
each repetition its owner is SIGKILLed; once the lease expired the harness publishes the
resume request (what the supervisor does) and a standby worker places the run, replays
the journal and starts the gate step live. Measured: from placement (the ``Started``
entry the claim writes) to the gate's ``step.started`` event, and from the publish of the
resume request to the same event. The harness polls the last event and the journal's top
entry only, so it adds no load while the worker resumes.

DBOS: a workflow of ``n`` steps and a gate step; its process is SIGKILLed and a fresh
process's ``DBOS.launch()`` recovers it (timed until the gate step runs again, and from
the start of the recovered workflow body). Temporal: the ``Replayer`` replays the history
of a workflow with ``n`` completed activities.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from nats.js.errors import NotFoundError

from bench import profile
from bench._stalwart import Cluster
from bench._util import log, summary
from bench.peers._protocol import PeerProcess
from stalwart import RunRequest
from stalwart.checkpoints import Started, decode_entry
from stalwart.messages import EV_STEP_STARTED, decode_event
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from bench._context import Ctx
    from stalwart import RunEvent, RunHandle

TARGETS = {1000: 0.05, 10000: 0.3}
"""Issue #6: placement to first live step under 50 ms at 1,000 steps, 300 ms at 10,000."""


async def _last_event(cl: Cluster, run_id: str) -> RunEvent | None:
    names = cl.c.broker.names
    try:
        msg = await cl.c.broker.js.get_msg(names.events_stream, subject=names.run_events(run_id))
    except NotFoundError:
        return None
    return decode_event(msg.data or b"")


async def _wait_gate(cl: Cluster, run_id: str, worker: str, timeout: float) -> RunEvent:
    """The gate step's ``step.started`` event from ``worker`` (polling the last event)."""
    deadline = time.monotonic() + timeout
    while True:
        ev = await _last_event(cl, run_id)
        if ev is not None and ev.type == EV_STEP_STARTED and ev.step == "step:gate":
            if ev.worker == worker:
                return ev
        if time.monotonic() > deadline:
            raise TimeoutError(f"{worker} never started the gate step of {run_id}")
        await asyncio.sleep(0.01)


async def _started_at(cl: Cluster, run_id: str) -> float:
    """``at`` of the journal's newest ``Started`` entry: when the claim placed the run."""
    rows = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]",
        await cl.c.store.redis.xrevrange(cl.c.store.journal_key(run_id), count=5),
    )
    for _, fields in rows:
        entry = decode_entry(fields[b"d"])
        if isinstance(entry, Started):
            return entry.at
    raise RuntimeError(f"run {run_id} has no Started entry")


async def _wait_lease_free(cl: Cluster, run_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await cl.c.broker.leases.state(run_id)).holder is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the lease of {run_id} never expired")
        await asyncio.sleep(0.02)


class _Workers:
    """An owner and a warm standby; names are never reused."""

    def __init__(self, cl: Cluster, prefix: str) -> None:
        self.cl = cl
        self.prefix = prefix
        self.gen = 0

    async def spawn(self) -> str:
        self.gen += 1
        wid = f"{self.prefix}-{self.gen}"
        self.cl.start_worker(wid, concurrency=4)
        await self.cl.wait_workers([wid])
        return wid

    def kill(self, wid: str) -> None:
        proc = self.cl.workers.pop(wid)
        proc.kill()
        proc.log_path.unlink(missing_ok=True)


async def _stalwart_size(
    cl: Cluster, n: int, reps: int, with_profile: bool
) -> tuple[dict[str, list[float]], dict[str, Any] | None]:
    workers = _Workers(cl, f"rs{n}")
    owner = await workers.spawn()
    handle: RunHandle = await cl.submit("history", {"n": n})
    await _wait_gate(cl, handle.run_id, owner, timeout=60 + n / 100)
    standby = await workers.spawn()
    placement: list[float] = []
    publish: list[float] = []
    prof_task: asyncio.Task[dict[str, Any]] | None = None
    for rep in range(reps + (1 if with_profile else 0)):
        if rep == reps:  # one more resume, sampled by py-spy (not in the figures)
            prof_task = asyncio.create_task(
                profile.record(cl.workers[standby].pid, seconds=cl.lease_ttl + 2, rate=1000)
            )
            await asyncio.sleep(0.5)
        record = await handle.status()
        workers.kill(owner)
        await _wait_lease_free(cl, handle.run_id, timeout=cl.lease_ttl + 10)
        t_pub = time.time()
        await cl.c.broker.publish_request(
            RunRequest(run_id=handle.run_id, agent="history", kind="resume", epoch=record.epoch),
            msg_id=f"{handle.run_id}:resume:{record.epoch}",
        )
        gate = await _wait_gate(cl, handle.run_id, standby, timeout=60 + n / 100)
        placed = await _started_at(cl, handle.run_id)
        if rep < reps:
            placement.append(gate.at - placed)
            publish.append(gate.at - t_pub)
            log(f"resume stalwart n={n} rep {rep + 1}/{reps}: {placement[-1] * 1000:.1f} ms")
        owner, standby = standby, await workers.spawn()
    prof = await prof_task if prof_task is not None else None
    await handle.cancel("benchmark done")
    cl.kill_all()  # the run is blocked in its gate: its owner must not take the next run
    return {"placement_to_live": placement, "publish_to_live": publish}, prof


async def _stalwart(ctx: Ctx, sizes: list[int], reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as servers:
        async with Cluster(servers.nats_url, servers.redis_url, "resume", lease_ttl=1) as cl:
            for n in sizes:
                with_profile = not ctx.quick and n == max(sizes)
                raw, prof = await _stalwart_size(cl, n, reps, with_profile)
                out[str(n)] = {k: summary(v) for k, v in raw.items()}
                if prof is not None:
                    out[str(n)]["profile"] = prof
    return out


async def _dbos(ctx: Ctx, sizes: list[int], reps: int) -> dict[str, Any]:
    assert ctx.pg is not None
    out: dict[str, Any] = {}
    for n in sizes:
        wf_id = f"history-{n}-{time.time_ns()}"
        async with ctx.dbos() as builder:
            assert builder is not None
            await builder.call("build", n=n, wf_id=wf_id, timeout=3600)
            await builder.kill()
        raw: dict[str, list[float]] = {"launch_to_live": [], "replay": [], "launch_to_body": []}
        for rep in range(reps):
            peer = await PeerProcess("bench.peers.dbos_peer").start()
            try:
                await peer.call("init", url=ctx.pg.url, launch=False, timeout=120)
                launched = await peer.call("launch", timeout=120)
                marks = await peer.call("wait_gate", timeout=600)
                raw["launch_to_live"].append(marks["gate"] - launched["launch_started"])
                raw["replay"].append(marks["gate"] - marks["body"])
                raw["launch_to_body"].append(marks["body"] - launched["launch_started"])
                log(f"resume dbos n={n} rep {rep + 1}/{reps}: {raw['launch_to_live'][-1]:.2f} s")
                if rep == reps - 1:
                    await peer.call("cancel", wf_id=wf_id)
            finally:
                await peer.kill()
                await peer.close()
        out[str(n)] = {k: summary(v) for k, v in raw.items()}
    return out


async def _temporal(ctx: Ctx, sizes: list[int], reps: int) -> dict[str, Any]:
    """Real sequential histories up to 1,000 activities; synthetic ones (the real 100's
    blocks repeated) for every size, so the real 1,000 validates the synthetic one."""
    out: dict[str, Any] = {}
    async with ctx.temporal_peer() as peer:
        assert peer is not None
        real_sizes = [n for n in sizes if n <= 1000]
        base: str | None = None
        for n in real_sizes:
            built = await peer.call("build", n=n, timeout=3600)
            log(f"resume temporal: history of {n} activities built in {built['build']:.0f}s")
            base = base or built["key"]
            times = await peer.call("replay", key=built["key"], reps=reps, timeout=3600)
            out[str(n)] = {"replay": summary(times), "events": built["events"],
                           "fetch": built["fetch"], "history": "real"}  # fmt: skip
            await peer.call("terminate", key=built["key"])
        if base is None:
            return out
        for n in sizes:
            if n <= 100:
                continue
            synth = await peer.call("synth", source=base, n=n)
            times = await peer.call(
                "replay", key=synth["key"], reps=reps if n <= 1000 else 1, timeout=3600
            )
            log(f"resume temporal: synthetic {n} replayed in {min(times):.1f}s")
            key = str(n) if str(n) not in out else f"{n}-synthetic"
            out[key] = {"replay": summary(times), "events": synth["events"], "history": "synthetic"}
    return out


async def measure(ctx: Ctx) -> dict[str, Any]:
    sizes = ctx.pick([100, 1000], [100, 1000, 10000])
    out: dict[str, Any] = {"sizes": sizes, "targets": {str(k): v for k, v in TARGETS.items()}}
    out["stalwart"] = await _stalwart(ctx, sizes, reps=ctx.pick(2, 7))
    if ctx.pg is not None:
        try:
            out["dbos"] = await _dbos(ctx, sizes, reps=3)
        except Exception as exc:
            log(f"resume: DBOS failed: {exc!r}")
            out["dbos_error"] = repr(exc)
    if ctx.temporal is not None:
        try:
            out["temporal"] = await _temporal(ctx, sizes, reps=3)
        except Exception as exc:
            log(f"resume: Temporal failed: {exc!r}")
            out["temporal_error"] = repr(exc)
    return out
