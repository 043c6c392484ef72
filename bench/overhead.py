"""1. Step overhead: a run of N trivial steps, time per step minus a plain function call.

Stalwart runs the ``steps`` agent in a worker process against three Redis servers (AOF off,
``everysec``, ``always``) and times the step loop inside the agent, so queueing and
placement are excluded. Beside it, in the same rounds: the physical floor on each Redis
(``CheckpointStore.append`` alone, and a raw ``EVALSHA`` of the same fenced-append script
through redis-py, async and sync), DBOS on PostgreSQL and Temporal (activity and local
activity). Rounds interleave the systems so that noise on the shared machine hits all.

Payload encryption (issue #14): on the ``everysec`` Redis a second worker runs the same
agent with an AES-256-GCM keyring (``stalwart_aesgcm/everysec``), interleaved with the
plain one, and the ratio of their step overheads is reported (``aesgcm/everysec``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import statistics
import time
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio as aioredis

from bench import profile
from bench._stalwart import Cluster
from bench._util import cpu_seconds, log, ratio_summary, summary
from stalwart.actors import fingerprint
from stalwart.checkpoints import (
    AesGcmCodec,
    CheckpointStore,
    StepDone,
    encode_entry,
    encode_value,
    set_payload_codec,
)
from stalwart.checkpoints._entries import seal_entry
from stalwart.testing import NatsServer, RedisServer

if TYPE_CHECKING:
    from bench._context import Ctx
    from bench.peers._protocol import PeerProcess

AOF = {"off": (False, "everysec"), "everysec": (True, "everysec"), "always": (True, "always")}
ENCRYPTED_ON = "everysec"
"""The Redis the encrypted variant runs against, beside the plain run on the same server."""
_BENCH_KEY = bytes(range(32))  # a fixed AES-256 key: the measurement needs no secrecy

# The fenced append, as in stalwart.checkpoints._scripts.APPEND: epoch check, XADD with an
# explicit id, touch the record. ARGV: epoch, entry id, entry, now.
FENCED_APPEND = """
local f = redis.call('HMGET', KEYS[1], 'epoch', 'cancel')
if f[1] ~= ARGV[1] then return {'stale', f[1] or ''} end
local r = redis.pcall('XADD', KEYS[2], ARGV[2], 'd', ARGV[3])
if type(r) == 'table' and r.err then return {'conflict', r.err} end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
return {'ok', f[2] or ''}
"""


def _entry(i: int) -> StepDone:
    return StepDone(
        key=f"step:s#{i + 1}" if i else "step:s",
        kind="step",
        name="s",
        fp=fingerprint("s", (i,), {}),
        result=encode_value(i),
        epoch=1,
        worker="floor",
        at=time.time(),
        duration=1e-6,
    )


class Floor:
    """The round trip every durable step needs at least, against one Redis."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runs = 0

    async def start(self) -> Floor:
        self.store = await CheckpointStore.connect(self.url, "floor")
        self.aio = aioredis.Redis.from_url(self.url)
        self.sync = redis.Redis.from_url(self.url)
        self.sha = await self.aio.script_load(FENCED_APPEND)
        return self

    async def close(self) -> None:
        await self.store.close()
        await self.aio.aclose()
        self.sync.close()

    async def _record(self) -> tuple[str, list[str]]:
        self.runs += 1
        rid = f"floor-{self.runs}"
        keys = [self.store.record_key(rid), self.store.journal_key(rid)]
        await self.aio.hset(keys[0], mapping={"epoch": "1", "status": "running"})
        return rid, keys

    async def store_append(self, n: int) -> tuple[float, float]:
        """(mean, median) seconds per ``CheckpointStore.append`` (the fenced append alone)."""
        rid, _ = await self._record()
        entries = [_entry(i) for i in range(n)]
        times = []
        for i, e in enumerate(entries):
            t0 = time.perf_counter()
            await self.store.append(rid, 1, i + 1, e)
            times.append(time.perf_counter() - t0)
        return statistics.fmean(times), statistics.median(times)

    async def raw_async(self, n: int) -> tuple[float, float]:
        """(mean, median) seconds per raw ``EVALSHA`` of the fenced append, redis.asyncio."""
        _, keys = await self._record()
        data = [encode_entry(_entry(i)) for i in range(n)]
        times = []
        for i, d in enumerate(data):
            t0 = time.perf_counter()
            await self.aio.evalsha(self.sha, 2, *keys, "1", f"{i + 1}-0", d, repr(time.time()))
            times.append(time.perf_counter() - t0)
        return statistics.fmean(times), statistics.median(times)

    async def raw_sync(self, n: int) -> tuple[float, float]:
        """(mean, median) seconds per raw ``EVALSHA`` with blocking redis-py (no loop)."""
        _, keys = await self._record()
        data = [encode_entry(_entry(i)) for i in range(n)]
        times = []
        for i, d in enumerate(data):
            t0 = time.perf_counter()
            self.sync.evalsha(self.sha, 2, *keys, "1", f"{i + 1}-0", d, repr(time.time()))
            times.append(time.perf_counter() - t0)
        return statistics.fmean(times), statistics.median(times)


async def _stalwart_round(cluster: Cluster, n: int) -> tuple[float, float, float]:
    """(mean, median seconds per step, seconds per plain call) of one ``steps`` run."""
    handle = await cluster.submit("steps", n)
    res = await cluster.result(handle, timeout=120)
    return res["steps"] / n, res["median"], res["plain"] / n


async def _encrypted_round(cluster: Cluster, n: int) -> tuple[float, float, float]:
    """:func:`_stalwart_round` with the bench process's codec set for its submit and result
    (the codec is per process, and the plain clusters' clients must not seal)."""
    set_payload_codec(AesGcmCodec({"bench": _BENCH_KEY}, "bench"))
    try:
        return await _stalwart_round(cluster, n)
    finally:
        set_payload_codec(None)


async def _encryption_pairs(
    series: _Series, plain: Cluster, enc: Cluster, n: int, pairs: int
) -> dict[str, float]:
    """More back-to-back pairs of the plain and the encrypted run (order alternating, so a
    drift of the machine's load favours neither): on a shared machine the rounds above are
    too few for a ratio of two close figures. Returns each worker's CPU seconds per step
    over all pairs, which the machine's load does not inflate the way it does wall time."""
    cpu = {"plain": 0.0, "aesgcm": 0.0}
    for i in range(pairs):
        first, second = ("plain", "aesgcm") if i % 2 == 0 else ("aesgcm", "plain")
        got = {}
        for which in (first, second):
            cl, run = (plain, _stalwart_round) if which == "plain" else (enc, _encrypted_round)
            pid = next(iter(cl.workers.values())).pid
            before = cpu_seconds(pid)
            got[which] = await run(cl, n)
            cpu[which] += cpu_seconds(pid) - before
        series.add(f"pair_plain/{ENCRYPTED_ON}", *got["plain"])
        series.add(f"pair_aesgcm/{ENCRYPTED_ON}", *got["aesgcm"])
    return {which: total / (pairs * n) for which, total in cpu.items()}


async def _dbos_round(peer: PeerProcess, n: int) -> tuple[float, float, float]:
    res = await peer.call("overhead", n=n)
    return res["steps"] / n, res["median"], res["plain"] / n


async def _temporal_round(peer: PeerProcess, n: int, local: bool) -> tuple[float, float]:
    """(mean, median) time between consecutive activities, from their own timestamps."""
    stamps: list[float] = await peer.call("overhead", n=n, local=local)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return statistics.fmean(gaps), statistics.median(gaps)


class _Series:
    """Per system and round: mean and median time per step, and the overhead (mean minus a
    plain call). The mean (the run's time divided by its steps) is the headline: Stalwart
    sends run events in batches, so a few steps of a run carry the cost of a batch and the
    median step alone would flatter it. The median is kept beside it."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, list[float]]] = {}

    def add(self, name: str, mean: float, median: float, plain: float = 0.0) -> None:
        d = self.data.setdefault(name, {"mean": [], "per_step": [], "overhead": []})
        d["mean"].append(mean)
        d["per_step"].append(median)
        d["overhead"].append(mean - plain)


def micro_costs(reps: int = 20000) -> dict[str, float]:
    """Seconds per call of the pure-Python pieces every ``ctx.step`` runs, in this process.

    ``_result_type`` is private: when it moves, the figure is left out.
    """
    from bench.agents import noop

    out: dict[str, float] = {}
    t0 = time.perf_counter()
    for i in range(reps):
        fingerprint("s", (i,), {})
    out["fingerprint"] = (time.perf_counter() - t0) / reps
    # What AES-GCM adds to a step's journal write: sealing its result before encoding.
    entry = _entry(7)
    t0 = time.perf_counter()
    for _ in range(reps):
        encode_entry(seal_entry(entry))
    plain = time.perf_counter() - t0
    set_payload_codec(AesGcmCodec({"bench": _BENCH_KEY}, "bench"))
    try:
        t0 = time.perf_counter()
        for _ in range(reps):
            encode_entry(seal_entry(entry))
        out["seal_step_entry"] = (time.perf_counter() - t0 - plain) / reps
    finally:
        set_payload_codec(None)
    try:
        from stalwart.actors._context import _result_type
    except ImportError:
        return out
    t0 = time.perf_counter()
    for _ in range(reps):
        _result_type(noop)
    out["result_type"] = (time.perf_counter() - t0) / reps
    return out


async def _serial_profile(cl: Cluster) -> dict[str, Any]:
    """py-spy profile of the worker while one run executes trivial steps back to back."""
    handle = await cl.submit("steps", 30000)
    await asyncio.sleep(0.5)
    pid = next(iter(cl.workers.values())).pid
    prof = await profile.record(pid, seconds=4)
    await cl.result(handle, timeout=300)
    return prof


async def measure(ctx: Ctx) -> dict[str, Any]:
    n = 100
    reps = ctx.pick(2, 9)
    series = _Series()
    notes: list[str] = []
    async with AsyncExitStack() as stack:
        nats = NatsServer()
        nats.start()
        stack.callback(nats.stop)
        clusters: dict[str, Cluster] = {}
        floors: dict[str, Floor] = {}
        for name, (aof, fsync) in AOF.items():
            rs = RedisServer(appendonly=aof, appendfsync=fsync)
            rs.start()
            stack.callback(rs.stop)
            cl = await stack.enter_async_context(Cluster(nats.url, rs.url, f"ovh{name}"))
            cl.start_worker(f"ovh-{name}", concurrency=1)
            clusters[name] = cl
            floors[name] = await Floor(rs.url).start()
            stack.push_async_callback(floors[name].close)
            if name == ENCRYPTED_ON:
                enc = await stack.enter_async_context(Cluster(nats.url, rs.url, "ovhaesgcm"))
                key = "bench:" + base64.b64encode(_BENCH_KEY).decode()
                enc.start_worker("ovh-aesgcm", concurrency=1, env={"STALWART_ENCRYPTION_KEY": key})
        for name, cl in clusters.items():
            await cl.wait_workers([f"ovh-{name}"])
        await enc.wait_workers(["ovh-aesgcm"])
        dbos = await stack.enter_async_context(ctx.dbos())
        temporal = await stack.enter_async_context(ctx.temporal_peer())
        for r in range(reps + 1):  # round 0 warms up every system and is not recorded
            log(f"overhead: round {r}/{reps}")
            rec = _Series() if r == 0 else series
            for name, cl in clusters.items():
                rec.add(f"stalwart/{name}", *await _stalwart_round(cl, n))
                if name == ENCRYPTED_ON:
                    rec.add(f"stalwart_aesgcm/{name}", *await _encrypted_round(enc, n))
                fl = floors[name]
                rec.add(f"floor_store/{name}", *await fl.store_append(n))
                rec.add(f"floor_async/{name}", *await fl.raw_async(n))
                rec.add(f"floor_sync/{name}", *await fl.raw_sync(n))
            if dbos is not None:
                rec.add("dbos", *await _dbos_round(dbos, n))
            if temporal is not None:
                rec.add("temporal_activity", *await _temporal_round(temporal, n, local=False))
                rec.add("temporal_local", *await _temporal_round(temporal, n, local=True))
        enc_cpu = await _encryption_pairs(series, clusters[ENCRYPTED_ON], enc, n, ctx.pick(2, 40))
        prof = None if ctx.quick else await _serial_profile(clusters["everysec"])
    out: dict[str, Any] = {"n": n, "reps": reps, "notes": notes, "systems": {}, "ratios": {}}
    out["micro"] = micro_costs()
    out["encryption_worker_cpu_per_step"] = enc_cpu
    out["profile"] = prof
    return _summarise(series, out)


def _summarise(series: _Series, out: dict[str, Any]) -> dict[str, Any]:
    """``out`` with every system's summaries and the ratios between systems."""
    for name, d in series.data.items():
        out["systems"][name] = {
            "per_step": summary(d["per_step"]),
            "mean": summary(d["mean"]),
            "overhead": summary(d["overhead"]),
        }
    ov = {name: d["overhead"] for name, d in series.data.items()}
    # > 1: how much more a durable step costs with AES-GCM sealing than without, same run
    # (the rounds' pairs and the extra pairs together).
    enc_ov = ov[f"stalwart_aesgcm/{ENCRYPTED_ON}"] + ov[f"pair_aesgcm/{ENCRYPTED_ON}"]
    plain_ov = ov[f"stalwart/{ENCRYPTED_ON}"] + ov[f"pair_plain/{ENCRYPTED_ON}"]
    out["ratios"][f"aesgcm/{ENCRYPTED_ON}"] = ratio_summary(enc_ov, plain_ov)
    for name in AOF:
        st = ov[f"stalwart/{name}"]
        out["ratios"][f"{name}/floor_async"] = ratio_summary(st, ov[f"floor_async/{name}"])
        out["ratios"][f"{name}/floor_sync"] = ratio_summary(st, ov[f"floor_sync/{name}"])
        out["ratios"][f"{name}/floor_store"] = ratio_summary(st, ov[f"floor_store/{name}"])
        for peer in ("dbos", "temporal_activity", "temporal_local"):
            if peer in ov:
                out["ratios"][f"{peer}/{name}"] = ratio_summary(ov[peer], st)
    return out
