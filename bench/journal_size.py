"""5. Journal size: bytes stored for an agent run with 10 / 50 / 100 model calls.

The ``chat`` agent's conversation grows by ~2 KB per model call. Stalwart journals each
call's response (its input is rebuilt by replay); a design that stores every call's input
stores the whole conversation at each call. Both are measured in the same Redis: the
Stalwart journal (sum of entry bytes, and ``MEMORY USAGE``), and a stream holding, per
call, the full input conversation and the response. Temporal, whose activities store their
inputs in the workflow history, is measured too when it runs (protobuf bytes of the
history events).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import msgspec

from bench._stalwart import Cluster
from bench._text import MESSAGE_BYTES, message
from bench._util import log
from stalwart.testing import EmbeddedServers

if TYPE_CHECKING:
    from bench._context import Ctx

PROMPT_BYTES = 512


def _conversation(calls: int) -> list[list[dict[str, str]]]:
    """The input of every model call (the conversation so far), as the agent builds it."""
    conv = [{"role": "user", "content": message(-1, PROMPT_BYTES)}]
    inputs = []
    for turn in range(calls):
        inputs.append(list(conv))
        conv.append({"role": "assistant", "content": message(turn)})
    return inputs


async def _stalwart(cl: Cluster, calls: int) -> dict[str, int]:
    handle = await cl.submit("chat", calls)
    await cl.result(handle, timeout=120)
    store = cl.c.store
    rows = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]",
        await store.redis.xrange(store.journal_key(handle.run_id)),
    )
    entries = sum(len(f[b"d"]) for _, f in rows)
    memory = await store.journal_bytes(handle.run_id)
    # The store-the-inputs design, in the same Redis: one stream entry per model call with
    # the full input conversation and the response.
    key = f"inputs:{{{handle.run_id}}}"
    enc = msgspec.msgpack.Encoder()
    inputs = _conversation(calls)
    stored = 0
    async with store.redis.pipeline(transaction=False) as pipe:
        for turn, conv in enumerate(inputs):
            data = enc.encode(
                {"input": conv, "output": {"role": "assistant", "content": message(turn)}}
            )
            stored += len(data)
            pipe.xadd(key, {"d": data})
        await pipe.execute()
    inputs_memory = int(await store.redis.memory_usage(key, samples=0) or 0)
    return {
        "stalwart_entries": entries,
        "stalwart_memory": memory,
        "inputs_entries": stored,
        "inputs_memory": inputs_memory,
        "content": PROMPT_BYTES + calls * MESSAGE_BYTES,
        "journal_entries": len(rows),
    }


async def measure(ctx: Ctx) -> dict[str, Any]:
    calls_list = ctx.pick([10, 50], [10, 25, 50, 75, 100])
    out: dict[str, Any] = {
        "message_bytes": MESSAGE_BYTES,
        "prompt_bytes": PROMPT_BYTES,
        "calls": {},
    }
    async with EmbeddedServers() as servers:
        async with Cluster(servers.nats_url, servers.redis_url, "journal") as cl:
            await cl.start_workers(["js-1"])
            for calls in calls_list:
                out["calls"][str(calls)] = await _stalwart(cl, calls)
                log(f"journal size: {calls} calls: {out['calls'][str(calls)]}")
    async with ctx.temporal_peer() as peer:
        if peer is not None:
            for calls in calls_list:
                res = await peer.call("chat", calls=calls, prompt=message(-1, PROMPT_BYTES))
                out["calls"][str(calls)]["temporal_history"] = res["bytes"]
                out["calls"][str(calls)]["temporal_events"] = res["events"]
    return out
