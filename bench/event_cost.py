"""What a step's run event costs the NATS server, and what would make it cheaper (issue #19).

Two measurements, in one run on the same embedded ``nats-server``:

1. **Per step, in Stalwart.** One worker (``--concurrency 64``) serves batches of 256 runs
   of 1 and of ``STEPS`` trivial steps (``bench.throughput._Batch``); the server's ``/varz``
   counters and CPU give, by difference, the messages, bytes and server CPU one more step
   adds (the run's own traffic cancels out).
2. **Per stored message, alone.** A plain client sends ``MESSAGES`` messages of the size a
   step's event has, the way the worker does (its ``hpub_command`` and
   ``hand_to_connection``, 28 to a write, one ack asked per 1,400, 256 subjects that each
   take 40 messages and then give way to a new one), into a stream configured like the events stream, then again with its options
   changed one at a time: no ``Nats-Msg-Id`` header (no duplicate tracking), memory storage.
   Then paced as a worker sends them (a write of 20 every 2 ms: 10k steps/s) and in writes
   five times larger and rarer: the server's CPU per message depends on how they arrive.

::

    PYTHONPATH=src:. python -m bench.event_cost [REPS]

Prints one JSON line per measurement. A ratio within a run is the figure to compare: the
server's CPU per message moves with the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import nats
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from bench._stalwart import Cluster
from bench._util import cpu_seconds
from bench.throughput import _Batch
from stalwart.broker._wire import hand_to_connection, hpub_command
from stalwart.messages import EV_STEP_COMPLETED, RunEvent
from stalwart.testing import EmbeddedServers, NatsServer

STEPS = int(os.environ.get("EVENT_COST_STEPS", "40"))
MESSAGES = int(os.environ.get("EVENT_COST_MESSAGES", "100000"))
_RUNS = 256
_RUN_LEN = 40  # messages per subject before a new run's subject takes its place
_PACED = ((20, 0.002), (100, 0.01))
"""(messages per write, seconds between writes): a worker's 2 ms event batches at 10k steps/s,
and what 10 ms batches would send."""
_ACK_EVERY = 1400  # one sampled ack per 0.1 s at ~14k steps/s
_BURST = 28  # messages per write when not paced


def _varz(server: NatsServer) -> dict[str, Any]:
    data = server.monitor("/varz")
    if data is None:
        raise RuntimeError("nats-server's /varz did not answer")
    return data


async def per_step(srv: EmbeddedServers) -> dict[str, Any]:
    """Messages, bytes and server CPU one more step adds, from batches of 1 and STEPS steps."""
    pids = {"redis": srv.redis.pid or 0, "nats": srv.nats.pid or 0}
    rows: dict[int, dict[str, float]] = {}
    async with Cluster(srv.nats_url, srv.redis_url, "eventcost", lease_ttl=5) as cl:
        await cl.start_workers(["eventcost-0"], concurrency=64)
        batch = _Batch(cl, pids)
        await batch.run("load", 8, 4)  # warm-up: connections, scripts, consumers
        for steps in (1, STEPS):
            v0 = _varz(srv.nats)
            r = await batch.run("load", _RUNS, steps)
            v1 = _varz(srv.nats)
            rows[steps] = {
                "msgs": (v1["in_msgs"] - v0["in_msgs"]) / _RUNS,
                "bytes": (v1["in_bytes"] - v0["in_bytes"]) / _RUNS,
                "nats_us": r["cpu"]["nats"] / _RUNS * 1e6,
            }
    one, many = rows[1], rows[STEPS]
    extra = STEPS - 1
    return {
        "measure": f"per step, in Stalwart (batches of 256 runs of 1 and of {STEPS} steps)",
        "msgs_per_step": round((many["msgs"] - one["msgs"]) / extra, 2),
        "bytes_per_step": round((many["bytes"] - one["bytes"]) / extra),
        "nats_us_per_step": round((many["nats_us"] - one["nats_us"]) / extra, 1),
        "nats_us_per_run_of_1_step": round(one["nats_us"], 1),
    }


async def per_message(
    srv: EmbeddedServers,
    name: str,
    storage: StorageType,
    msg_id: bool,
    size: int,
    per_write: int = _BURST,
    pace: float = 0.0,
) -> dict[str, Any]:
    """Server CPU per message stored in a stream like the events stream (see the docstring)."""
    nc = await nats.connect(srv.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=name,
                subjects=[f"{name}.>"],
                storage=storage,
                discard=DiscardPolicy.OLD,
                duplicate_window=120.0,
                allow_direct=True,
            )
        )
        inbox = nc.new_inbox()
        await nc.subscribe(inbox + ".>", cb=_ignore)
        payload = b"x" * max(size - 80, 1)  # the headers make up the rest
        pid = srv.nats.pid or 0
        total = MESSAGES // 4 if pace else MESSAGES  # paced: 2.5 s at 10k messages/s
        await nc.flush()
        c0 = cpu_seconds(pid)
        for first in range(0, total, per_write):
            wire = []
            for i in range(first, min(first + per_write, total)):
                slot, generation = i % _RUNS, i // (_RUNS * _RUN_LEN)
                run_id = f"run{generation * _RUNS + slot:08d}"
                jseq = (i // _RUNS) % _RUN_LEN + 1
                # The worker's own command: a journaled event carries a Nats-Msg-Id; without
                # one (jseq 0) the headers are the same but for it.
                event = RunEvent(
                    type=EV_STEP_COMPLETED, run_id=run_id, at=0.0, jseq=jseq if msg_id else 0
                )
                reply = f"{inbox}.{i}" if i % _ACK_EVERY == 0 else ""
                wire.append(hpub_command(f"{name}.{run_id}.sys", reply, jseq, event, payload))
            await hand_to_connection(nc, wire)
            if pace:
                await asyncio.sleep(pace)
            elif first % (per_write * 32) == 0:
                await nc.flush()  # keep the client's buffer bounded
        await nc.flush()
        deadline = time.monotonic() + 60
        while (await js.stream_info(name)).state.messages < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: not every message was stored within 60 s")
            await asyncio.sleep(0.02)
        used = cpu_seconds(pid) - c0
        await js.delete_stream(name)
    finally:
        await nc.close()
    return {
        "measure": "per stored message, alone",
        "storage": storage.value,
        "msg_id": msg_id,
        "bytes": size,
        "per_write": per_write,
        "pace_s": pace,
        "nats_us_per_msg": round(used / total * 1e6, 2),
    }


async def _ignore(_msg: Any) -> None:
    return None


async def main(reps: int) -> None:
    async with EmbeddedServers(redis_appendonly=True, redis_appendfsync="everysec") as srv:
        step = await per_step(srv)
        print(json.dumps(step), flush=True)
        size = int(step["bytes_per_step"]) or 326
        variants = [
            (StorageType.FILE, True),  # the events stream as Stalwart configures it
            (StorageType.FILE, False),
            (StorageType.MEMORY, True),
            (StorageType.MEMORY, False),
        ]
        for rep in range(reps):
            for k, (storage, msg_id) in enumerate(variants):
                row = await per_message(srv, f"EVCOST{rep}{k}", storage, msg_id, size)
                print(json.dumps(row), flush=True)
            for k, (per_write, pace) in enumerate(_PACED):
                row = await per_message(
                    srv, f"EVPACE{rep}{k}", StorageType.FILE, True, size, per_write, pace
                )
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
