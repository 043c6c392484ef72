"""Idle NATS traffic of A agents x W workers (issue #15): messages/s through the server.

``python -m bench.idle_traffic [--agents 20] [--workers 3] [--seconds 35] [--settle 3]
[--pull-expires S]``

Starts its own nats-server and redis-server, W in-process workers serving the same A agents,
nothing submitted; after ``--settle`` seconds it reads the server's ``/varz`` twice,
``--seconds`` apart, and prints in_msgs/s, out_msgs/s and their sum per worker and per
agent x worker. The default window covers a whole pull-request expiry (30 s by default): a
shorter one misses the re-pulls. Only public API, so the same script measures older sources too
(``PYTHONPATH=<old checkout>/src``). Bounded: about settle + seconds + start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

import structlog

from stalwart import App, RunContext, Settings, Worker
from stalwart.testing import EmbeddedServers


def _app(agents: int) -> App:
    app = App("idle")

    async def agent(ctx: RunContext, x: int) -> int:
        return x

    for i in range(agents):
        app.agent(f"a{i:03d}")(agent)
    return app


def _varz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/varz", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
    return data


async def measure(
    agents: int, workers: int, seconds: float, settle: float, pull_expires: float | None = None
) -> dict[str, float]:
    """Messages per second through an idle server with ``agents`` x ``workers``."""
    app = _app(agents)
    async with EmbeddedServers() as emb:
        extra = {} if pull_expires is None else {"pull_expires": pull_expires}
        settings = Settings(
            nats_url=emb.nats_url,
            redis_url=emb.redis_url,
            namespace="idle",
            concurrency=16,
            **extra,  # type: ignore[arg-type]  # absent from sources before the pull feeds
        )
        ws = []
        for i in range(workers):
            w = Worker(app, Settings(**{**_fields(settings), "worker_id": f"idle{i}"}))
            await w.start()
            ws.append(w)
        try:
            await asyncio.sleep(settle)  # start-up traffic (streams, consumers) is over
            port = emb.nats.monitor_port
            v0, t0 = await asyncio.to_thread(_varz, port), time.monotonic()
            await asyncio.sleep(seconds)
            v1, t1 = await asyncio.to_thread(_varz, port), time.monotonic()
        finally:
            for w in ws:
                w.stop()
            await asyncio.gather(*(w._shutdown() for w in ws))
    dt = t1 - t0
    inn = (v1["in_msgs"] - v0["in_msgs"]) / dt
    out = (v1["out_msgs"] - v0["out_msgs"]) / dt
    return {
        "in_msgs_per_s": round(inn, 1),
        "out_msgs_per_s": round(out, 1),
        "msgs_per_s": round(inn + out, 1),
        "per_worker": round((inn + out) / workers, 2),
        "per_agent_worker": round((inn + out) / (workers * agents), 3),
    }


def _fields(settings: Settings) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in settings.__struct_fields__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--seconds", type=float, default=35.0)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--pull-expires", type=float, default=None, help="default: the setting's")
    a = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = asyncio.run(measure(a.agents, a.workers, a.seconds, a.settle, a.pull_expires))
    shown = {"pull_expires": a.pull_expires} if a.pull_expires is not None else {}
    print(json.dumps({"agents": a.agents, "workers": a.workers, **shown, **result}))


if __name__ == "__main__":
    main()
