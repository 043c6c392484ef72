"""The cost of acknowledged-by-replicas writes (``redis_wait_replicas``, Redis ``WAIT``).

One primary and one replica on loopback (a plain ``redis://`` URL to the primary: Sentinel
changes nothing on the write path), one NATS, and two worker processes of the bench app in
two namespaces: one with ``STALWART_REDIS_WAIT_REPLICAS=0`` (off), one with ``=1`` (every
pipe flush, and every write through the pool, ends with ``WAIT 1 <timeout>``). Rounds
alternate the two so machine noise hits both.

Two figures per setting, per round:

- serial step latency: the ``steps`` agent's own timing of ``--steps`` trivial steps of one
  run (mean per step and median step): every step pays one append + WAIT round trip;
- throughput: ``--runs`` runs of ``--steps`` steps submitted at once to one worker: steps
  per second (concurrent appends share a pipe flush, and so one WAIT);
- the append alone: ``CheckpointStore.append`` of one run, ``--steps`` times in a row, in
  this process (no worker, no events): the median append, the least noisy figure.

Run: ``PYTHONPATH=src python -m bench.redis_wait [--rounds 5] [--steps 100] [--runs 32]``.
Prints a table and the JSON of every sample.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from typing import Any

import msgspec

from bench._stalwart import Cluster
from bench._util import log
from stalwart import Settings
from stalwart.checkpoints import CheckpointStore, StepDone, encode_value
from stalwart.testing import NatsServer, RedisServer

SETTINGS = {"off": "0", "wait1": "1"}


async def _appends(store: CheckpointStore, n: int) -> float:
    """Median µs of ``n`` sequential appends of a fresh run."""
    run_id = uuid.uuid4().hex
    claim = await store.claim(run_id, agent="a", input=msgspec.Raw(b"null"), epoch=1, worker="b")
    assert claim.outcome == "ok", claim
    times = []
    for seq in range(2, n + 2):
        entry = StepDone(
            key=f"step:s#{seq}", kind="step", name="s", fp="fp", result=encode_value(seq),
            epoch=1, worker="b", at=time.time(), duration=1e-6,
        )  # fmt: skip
        t0 = time.perf_counter()
        await store.append(run_id, 1, seq, entry)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


async def _serial(cl: Cluster, steps: int) -> dict[str, float]:
    handle = await cl.submit("steps", steps)
    res = await cl.result(handle, timeout=300)
    return {"mean_ms": res["steps"] / res["n"] * 1e3, "median_ms": res["median"] * 1e3}


async def _throughput(cl: Cluster, runs: int, steps: int) -> float:
    t0 = time.perf_counter()
    handles = [await cl.submit("steps", steps) for _ in range(runs)]
    for h in handles:
        await cl.result(h, timeout=600)
    return runs * steps / (time.perf_counter() - t0)


async def main(rounds: int, steps: int, runs: int, wait_timeout: int) -> dict[str, Any]:
    primary = RedisServer()
    await primary._start_async()
    replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(primary.port)])
    await replica._start_async()
    nats = NatsServer()
    await nats._start_async()
    samples: dict[str, dict[str, list[float]]] = {
        k: {"mean_ms": [], "median_ms": [], "steps_per_s": [], "append_us": []} for k in SETTINGS
    }
    try:
        clusters: dict[str, Cluster] = {}
        for name, n in SETTINGS.items():
            cl = Cluster(nats.url, primary.url, f"bw{name}{uuid.uuid4().hex[:6]}")
            await cl.__aenter__()
            clusters[name] = cl
            wid = f"{name}-w"
            cl.start_worker(
                wid,
                concurrency=runs,
                env={
                    "STALWART_REDIS_WAIT_REPLICAS": n,
                    "STALWART_REDIS_WAIT_TIMEOUT": str(wait_timeout),
                },
            )
            await cl.wait_workers([wid])
        for cl in clusters.values():  # warm-up: scripts loaded, connections made
            await _serial(cl, 10)
        for r in range(rounds):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                cl = clusters[name]
                s = await _serial(cl, steps)
                samples[name]["mean_ms"].append(s["mean_ms"])
                samples[name]["median_ms"].append(s["median_ms"])
                samples[name]["steps_per_s"].append(await _throughput(cl, runs, steps))
            log(f"round {r + 1}/{rounds} done")
        for cl in clusters.values():
            await cl.__aexit__(None, None, None)
        stores = {
            name: await CheckpointStore.connect(
                primary.url,
                f"ba{name}",
                settings=Settings(redis_wait_replicas=int(n), redis_wait_timeout=wait_timeout),
            )
            for name, n in SETTINGS.items()
        }
        for r in range(rounds):
            order = list(SETTINGS) if r % 2 == 0 else list(reversed(SETTINGS))
            for name in order:
                samples[name]["append_us"].append(await _appends(stores[name], steps))
        for store in stores.values():
            await store.close()
    finally:
        for server in (nats, replica, primary):
            await asyncio.to_thread(server.stop)
    return samples


def _table(samples: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        f"WAIT cost: primary + 1 replica (loopback), {args.rounds} rounds; serial: 1 run of "
        f"{args.steps} steps; throughput: {args.runs} runs x {args.steps} steps, 1 worker",
        "| setting | mean per step (ms) | median step (ms) | steps/s | append alone (µs) |",
        "|---|---|---|---|---|",
    ]
    for name, s in samples.items():
        label = "WAIT off" if name == "off" else f"WAIT 1 ({args.wait_timeout} ms timeout)"

        def med(k: str, s: dict[str, list[float]] = s) -> str:
            v = s[k]
            return f"{statistics.median(v):.3f} [{min(v):.3f}-{max(v):.3f}]"

        steps_s = s["steps_per_s"]
        ap = s["append_us"]
        lines.append(
            f"| {label} | {med('mean_ms')} | {med('median_ms')} | "
            f"{statistics.median(steps_s):.0f} [{min(steps_s):.0f}-{max(steps_s):.0f}] | "
            f"{statistics.median(ap):.0f} [{min(ap):.0f}-{max(ap):.0f}] |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--runs", type=int, default=32)
    p.add_argument("--wait-timeout", type=int, default=100, help="ms")
    args = p.parse_args()
    result = asyncio.run(main(args.rounds, args.steps, args.runs, args.wait_timeout))
    print(_table(result, args))
    print(json.dumps(result))
