"""Conversations across runs (docs/conversations.md): history, policies, fencing, crashes.

Real NATS, Redis and worker processes (``tests.conversation_apps``); the "model" is a
scripted step that logs how much history it was shown.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from stalwart import Client
from stalwart.checkpoints import ConversationFenced, StepDone, decode_value
from stalwart.errors import ConversationBusyError, InvalidRequestError
from stalwart.operations import run_detail
from tests import conversation_apps
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import eventually, journal, model_log, open_gate, rid
from tests.test_cli import cli  # noqa: F401  (the fixture)

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


async def holder_is(client: Client, conv: str, run_id: str) -> bool:
    info = await client.store.conversations.info(conv)
    return info is not None and info.holder == run_id


async def status_of(client: Client, run_id: str) -> str:
    record = await client.store.get_run(run_id)
    return record.status if record is not None else ""


async def test_reject_fails_the_run_that_loses_the_race_on_its_worker(
    client: Client, conv_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    conv = "c-" + rid()
    # Both submits find the conversation free (no worker yet): the race is on the workers.
    handles = [
        await client.submit(
            "chat",
            turn(m, hold=True),
            conversation=conv,
            on_busy="reject",
            require_registered=False,
        )
        for m in ("a", "b")
    ]
    await conv_workers()

    async def one_failed() -> bool:
        return "failed" in [await status_of(client, h.run_id) for h in handles]

    await eventually(one_failed, timeout=30)
    for h in handles:
        await open_gate(counters, h.run_id, "hold")
    records = [await h.wait(timeout=30) for h in handles]
    assert sorted(r.status for r in records) == ["completed", "failed"]
    lost = next(r for r in records if r.status == "failed")
    won = next(r for r in records if r.status == "completed")
    assert lost.error_type == "conversation.busy"
    assert won.run_id in lost.error
    events = [e async for e in client.handle(lost.run_id, "chat").events(follow=False)]
    failed = [e for e in events if e.type == "run.failed"]
    assert failed and failed[0].data["error"]["type"] == "conversation.busy"


async def test_interrupt_cancels_the_running_turn_and_drops_its_items(
    client: Client, conv_workers: WorkerFactory
) -> None:
    await conv_workers()
    conv = "c-" + rid()
    first = await client.submit("chat", turn("kept"), conversation=conv)
    await first.result(timeout=30)
    running = await client.submit("chat", turn("dropped", wait_after=True), conversation=conv)

    async def appended() -> bool:
        return await client.store.conversations.count(conv) == 4

    await eventually(appended)  # the running turn appended, then waits
    new = await client.submit("chat", turn("instead"), conversation=conv, on_busy="interrupt")
    result = await new.result(timeout=30)
    record = await running.wait(timeout=30)
    assert record.status == "cancelled" and "interrupted by run" in record.error
    assert result["turn"] == 1 and result["seen"] == 2  # the interrupted turn's items are gone
    said = [m["content"] for m in result["history"] if m["role"] == "user"]
    assert said == ["kept"]
    info = await client.store.conversations.info(conv)
    assert info is not None and (info.turns, info.items, info.holder) == (2, 4, "")


async def test_three_turns_across_two_workers_with_a_sigkill(
    client: Client, conv_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await conv_workers("a")
    conv = "c-" + rid()
    one = await client.submit("chat", turn("one"), conversation=conv)
    assert (await one.result(timeout=30))["seen"] == 0
    # Turn two: the model has answered, the worker dies before the append.
    two = await client.submit("chat", turn("two", hold_model=True), conversation=conv)
    await eventually(lambda: model_calls(counters, two.run_id, 1))
    assert (await two.status()).worker == "a"
    a.kill()
    b = await conv_workers("b")
    await open_gate(counters, two.run_id, "model")
    second = await two.result(timeout=40)
    assert (await two.status()).worker == "b"
    assert second["turn"] == 1 and second["seen"] == 2
    assert await model_log(counters, two.run_id) == ["2"]  # the model ran once, with history
    # Turn three on the other worker, after the first one died: the whole history.
    await conv_workers("c")
    b.kill()
    three = await client.submit("chat", turn("three"), conversation=conv)
    third = await three.result(timeout=40)
    assert third["turn"] == 2 and third["seen"] == 4
    assert [m["content"] for m in third["history"] if m["role"] == "user"] == ["one", "two"]
    # Offline replay reads the same prefix the run read (the count is journaled), although the
    # conversation has more items now (turn two holds at a gate: not replayable offline).
    for handle in (one, three):
        report = await handle.replay(conversation_apps.app)
        assert report.matched, report.render()
    # The journal holds the count history() read, never the items.
    entries = await journal(client, two.run_id)
    (hist,) = [
        je.entry
        for je in entries
        if isinstance(je.entry, StepDone) and je.entry.key == "conversation:history"
    ]
    assert decode_value(hist.result) == 2


async def model_calls(counters: aioredis.Redis, run_id: str, n: int) -> bool:
    return len(await model_log(counters, run_id)) >= n


async def test_a_stale_holder_cannot_append(client: Client) -> None:
    convs = client.store.conversations
    conv = "c-" + rid()
    held = await convs.claim(conv, "r1", on_busy="queue", submitted_at=1.0, epoch=7)
    assert (held.outcome, held.fence) == ("held", 1)
    assert await convs.append(conv, "r1", fence=1, epoch=7, key="k1", items=["x"]) == 1
    # The same key again (a retry after a lost reply): nothing added twice.
    assert await convs.append(conv, "r1", fence=1, epoch=7, key="k1", items=["x"]) == 1
    # An older owner of the same run (a frozen worker): fenced.
    with pytest.raises(ConversationFenced):
        await convs.append(conv, "r1", fence=1, epoch=6, key="k2", items=["y"])
    queued = await convs.claim(conv, "r2", on_busy="queue", submitted_at=2.0, epoch=3)
    assert (queued.outcome, queued.blocker) == ("queued", "r1")
    assert await convs.release(conv, "r1", fence=1, completed=True) == ("handed", "r2")
    # The old holder after the hand-off: fenced, whatever it claims.
    with pytest.raises(ConversationFenced, match="no longer holds"):
        await convs.append(conv, "r1", fence=1, epoch=7, key="k3", items=["z"])
    mine = await convs.claim(conv, "r2", on_busy="queue", submitted_at=2.0, epoch=3)
    assert (mine.outcome, mine.fence, mine.turns, mine.committed) == ("held", 2, 1, 1)
    assert await convs.items(conv, 5) == ["x"]


async def test_a_passivated_waiter_is_woken_by_the_hand_off(
    client: Client, conv_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await conv_workers("a", STALWART_PASSIVATE_AFTER="0.5")
    conv = "c-" + rid()
    first = await client.submit("chat", turn("a", hold=True), conversation=conv)
    await eventually(lambda: holder_is(client, conv, first.run_id))
    waiter = await client.submit("chat", turn("b"), conversation=conv)

    async def passivated() -> bool:
        record = await client.store.get_run(waiter.run_id)
        return record is not None and record.status == "waiting"

    await eventually(passivated, timeout=20)
    assert (await waiter.status()).waiting_for == "stalwart.conversation"
    await open_gate(counters, first.run_id, "hold")
    assert (await waiter.result(timeout=30))["seen"] == 2


async def test_a_lost_hand_off_is_repaired_by_the_waiters_recheck(
    client: Client, conv_workers: WorkerFactory
) -> None:
    await conv_workers("a", STALWART_CONVERSATION_RECHECK="1")
    conv = "c-" + rid()
    # A run that ended without releasing its hold (as if its worker died right after the
    # end was journaled): nobody will ever hand the conversation on.
    ended = await client.submit("solo", None)
    await ended.result(timeout=30)
    convs = client.store.conversations
    assert (
        await convs.claim(conv, ended.run_id, on_busy="queue", submitted_at=0, epoch=1)
    ).outcome == "held"
    waiter = await client.submit("chat", turn("b"), conversation=conv)
    result = await waiter.result(timeout=30)
    assert result["turn"] == 1  # the ended run's turn counted (it completed)
    keys = [
        je.entry.key
        for je in await journal(client, waiter.run_id)
        if isinstance(je.entry, StepDone)
    ]
    assert "conversation:claim#2" in keys  # taken at the re-check, not by a wake


async def test_operators_see_the_conversation(
    client: Client,
    conv_workers: WorkerFactory,
    counters: aioredis.Redis,
    cli: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    await conv_workers()
    conv = "c-" + rid()
    first = await client.submit("chat", turn("a", hold=True), conversation=conv)
    await eventually(lambda: holder_is(client, conv, first.run_id))
    waiting = await client.submit("chat", turn("b"), conversation=conv)
    shown = await cli("conversations", "show", conv, "-o", "json")
    assert shown.code == 0, shown
    info = json.loads(shown.out)
    assert (info["holder"], info["queue"], info["turns"]) == (first.run_id, [waiting.run_id], 0)
    table = await cli("conversations", "show", conv)
    assert first.run_id in table.out and waiting.run_id in table.out
    missing = await cli("conversations", "show", "c-never-used")
    assert missing.code == 4 and "no conversation" in missing.err
    detail = await run_detail(client, waiting.run_id)
    assert detail.run.conversation == conv
    assert detail.conversation is not None and detail.conversation.holder == first.run_id
    status = json.loads((await cli("status", first.run_id, "-o", "json")).out)
    assert status["conversation"] == conv
    await open_gate(counters, first.run_id, "hold")
    await waiting.result(timeout=30)
    done = json.loads((await cli("conversations", "show", conv, "-o", "json")).out)
    assert (done["holder"], done["turns"], done["items"]) == ("", 2, 4)


async def test_a_queued_turn_fails_at_its_deadline_and_leaves_the_queue(
    client: Client, conv_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    await conv_workers("a", STALWART_PASSIVATE_AFTER="0.5")
    conv = "c-" + rid()
    first = await client.submit("chat", turn("a", hold=True), conversation=conv)
    await eventually(lambda: holder_is(client, conv, first.run_id))
    late = await client.submit("chat_deadline", turn("b"), conversation=conv)
    record = await late.wait(timeout=30)  # passivated in the queue, woken by its deadline
    assert (record.status, record.error_type) == ("failed", "RunDeadlineExceeded")
    info = await client.store.conversations.info(conv)
    assert info is not None and info.queue == [] and info.holder == first.run_id
    await open_gate(counters, first.run_id, "hold")
    await first.result(timeout=30)
    after = await client.submit("chat", turn("c"), conversation=conv)
    assert (await after.result(timeout=30))["turn"] == 1
