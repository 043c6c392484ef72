"""Conversations across runs (docs/conversations.md): history, policies, fencing, crashes.

Real NATS, Redis and worker processes (``tests.conversation_apps``); the "model" is a
scripted step that logs how much history it was shown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from stalwart import Client
from stalwart.errors import ConversationBusyError, InvalidRequestError
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import eventually, model_log, open_gate, rid

pytestmark = pytest.mark.slow


@pytest.fixture
async def conv_workers(settings, servers: Servers, client: Client) -> AsyncIterator[WorkerFactory]:
    async with worker_pool("tests.conversation_apps:app", settings, servers, client) as start:
        yield start


def turn(msg: str, **holds: bool) -> dict[str, object]:
    return {"msg": msg, **holds}


async def test_turns_see_the_previous_turns_history(
    client: Client, conv_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await conv_workers()
    conv = "c-" + rid()
    first = await client.submit("chat", turn("hello"), conversation=conv)
    one = await first.result(timeout=30)
    assert one["turn"] == 0 and one["seen"] == 0
    second = await client.submit("chat", turn("again"), conversation=conv)
    two = await second.result(timeout=30)
    assert two["turn"] == 1 and two["seen"] == 2
    assert two["history"][0] == {"role": "user", "content": "hello"}
    assert (await second.status()).conversation == conv
    info = await client.store.conversations.info(conv)
    assert info is not None
    assert (info.holder, info.turns, info.items, info.queue) == ("", 2, 4, [])
    assert await model_log(counters, second.run_id) == ["2"]
    solo = await client.submit("solo", None)
    assert await solo.result(timeout=30) is True


async def test_bad_conversation_arguments_are_refused(client: Client) -> None:
    with pytest.raises(InvalidRequestError, match="invalid conversation id"):
        await client.submit("chat", None, conversation="no spaces", require_registered=False)
    with pytest.raises(InvalidRequestError, match="invalid on_busy"):
        await client.submit(
            "chat", None, conversation="c1", on_busy="later", require_registered=False
        )


async def test_queue_runs_take_their_turns_in_submit_order(
    client: Client, conv_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await conv_workers()
    conv = "c-" + rid()
    a = await client.submit("chat", turn("a", hold=True), conversation=conv)

    async def holding(run_id: str) -> bool:
        info = await client.store.conversations.info(conv)
        return info is not None and info.holder == run_id

    await eventually(lambda: holding(a.run_id))
    b = await client.submit("chat", turn("b"), conversation=conv)
    c = await client.submit("chat", turn("c"), conversation=conv)
    d = await client.submit("chat", turn("d"), conversation=conv)

    async def queued() -> bool:
        info = await client.store.conversations.info(conv)
        return info is not None and info.queue == [b.run_id, c.run_id, d.run_id]

    await eventually(queued)
    await open_gate(counters, a.run_id, "hold")
    results = [await h.result(timeout=30) for h in (a, b, c, d)]
    assert [r["turn"] for r in results] == [0, 1, 2, 3]
    assert [r["seen"] for r in results] == [0, 2, 4, 6]
    said = [m["content"] for m in results[3]["history"] if m["role"] == "user"]
    assert said == ["a", "b", "c"]


async def test_reject_refuses_a_submit_while_busy(
    client: Client, conv_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await conv_workers()
    conv = "c-" + rid()
    a = await client.submit("chat", turn("a", hold=True), conversation=conv)

    async def held() -> bool:
        info = await client.store.conversations.info(conv)
        return info is not None and info.holder == a.run_id

    await eventually(held)
    refused = rid()
    with pytest.raises(ConversationBusyError, match="is busy by run") as err:
        await client.submit("chat", turn("b"), conversation=conv, on_busy="reject", run_id=refused)
    assert err.value.holder == a.run_id
    assert await client.store.get_run(refused) is None  # nothing stored
    await open_gate(counters, a.run_id, "hold")
    await a.result(timeout=30)
    b = await client.submit("chat", turn("b"), conversation=conv, on_busy="reject")
    assert (await b.result(timeout=30))["turn"] == 1
