"""LangGraph's own streaming API through Stalwart (``runner.astream``), across a SIGKILL, with
late attach, conversations (threads) across workers, and equal to a plain ``graph.astream``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("langgraph")

import redis.asyncio as aioredis
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langgraph.checkpoint.memory import InMemorySaver

from stalwart import App, Client, ConversationBusyError, Settings
from stalwart.adapters import StreamReset
from stalwart.adapters.langgraph import DurableGraphRunner
from tests.adapters import langgraph_stream_apps as apps
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import eventually, mark_gated, open_gate, rid

MODES = ["messages", "custom", "updates"]


@pytest.fixture
async def workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.adapters.langgraph_stream_apps:app``."""
    async with worker_pool(
        "tests.adapters.langgraph_stream_apps:app", settings, servers, client
    ) as start:
        yield start


def _runner(client: Client, name: str = "lg-chat", **kw: Any) -> DurableGraphRunner:
    return DurableGraphRunner(name, apps.chat_graph(), app=App("client"), client=client, **kw)


def _question(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def shown_text(items: list[Any]) -> str:
    """What a loop that honours resets shows: each token, minus its step's on a reset."""
    shown: list[tuple[str, str]] = []
    for mode, payload in items:
        if mode == "stalwart.reset":
            shown = [(step, text) for step, text in shown if step != payload.step]
        elif mode == "messages":
            message, meta = payload
            if isinstance(message, AIMessageChunk):
                shown.append((meta["stalwart_step"], str(message.content)))
            elif isinstance(message, AIMessage):
                shown.append((meta.get("stalwart_step", ""), str(message.content)))
    return "".join(text for _, text in shown)


async def seen(counters: aioredis.Redis, key: str) -> list[list[str]]:
    """What the scripted model saw, one list of message texts per request."""
    return [json.loads(v) for v in await counters.lrange(apps.seen_key(key), 0, -1)]


@pytest.mark.slow
async def test_astream_across_a_sigkill_mid_stream_shows_the_answer_once(
    client: Client, workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    runner = _runner(client)
    run_id = rid()
    await mark_gated(counters, run_id, "model")  # the model holds after HOLD_AFTER tokens
    items: list[Any] = []
    killed = False
    async for item in runner.astream(_question("hello"), stream_mode=MODES, run_id=run_id):
        items.append(item)
        tokens = [i for i in items if i[0] == "messages"]
        if not killed and len(tokens) == apps.HOLD_AFTER:
            a.kill()  # SIGKILL in the middle of the streamed model call
            killed = True
            await open_gate(counters, run_id, "model")  # the next attempt streams through
            await workers("b")
    expected = "turn 1: you said hello"
    assert shown_text(items) == expected  # exactly once

    resets = [(i, p) for i, (mode, p) in enumerate(items) if mode == "stalwart.reset"]
    assert len(resets) == 1
    at, reset = resets[0]
    assert isinstance(reset, StreamReset) and reset.reason == "failover"
    assert reset.step.startswith("lg:chat:")
    before = [p for mode, p in items[:at] if mode == "messages"]
    after = [p for mode, p in items[at:] if mode == "messages"]
    assert len(before) == apps.HOLD_AFTER  # the dead attempt's tokens, all from worker a
    assert {meta["stalwart_worker"] for _, meta in before} == {"a"}
    assert {meta["stalwart_step"] for _, meta in before} == {reset.step}
    assert {meta["stalwart_worker"] for _, meta in after} == {"b"}
    assert "".join(str(m.content) for m, _ in after) == expected
    assert all(isinstance(m, AIMessageChunk) for m, _ in before + after)
    # The task's update once (from the stored writes), the custom writes of both attempts.
    updates = [p for mode, p in items if mode == "updates"]
    assert len(updates) == 1 and updates[0]["chat"]["messages"][0].content == expected
    custom = [p for mode, p in items if mode == "custom"]
    assert custom[-2:] == [{"phase": "thinking"}, {"phase": "answered"}]
    assert len(await seen(counters, run_id)) == 2  # the request in flight was sent again
    result = await runner.result(run_id)
    assert [m.content for m in result["messages"]] == ["hello", expected]


@pytest.mark.slow
async def test_late_attach_gets_the_completed_answer_and_the_live_rest(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers("a")
    runner = _runner(client, "lg-chat-always")
    expected = "turn 1: you said hi"

    # Attached after the end: the stored answer, whole, once.
    done = await runner.submit(_question("hi"))
    await runner.result(done)
    items = [i async for i in runner.astream_run(done, stream_mode=["messages", "updates"])]
    assert shown_text(items) == expected
    assert [type(p[0]).__name__ for m, p in items if m == "messages"] == ["AIMessage"]

    # Attached while the model streams: the text once, tokens or whole.
    run_id = rid()
    await mark_gated(counters, run_id, "model")
    handle = await runner.submit(_question("hi"), run_id=run_id)

    async def holding() -> bool:
        return len(await seen(counters, run_id)) == 1

    await eventually(holding, timeout=30)
    items = []
    async for item in runner.astream_run(handle, stream_mode=["messages", "updates"]):
        items.append(item)
        if len(items) == 1:
            await open_gate(counters, run_id, "model")
    assert shown_text(items) == expected
    assert sum(m == "updates" for m, _ in items) == 1


@pytest.mark.slow
async def test_a_conversation_of_three_turns_across_a_sigkill_sees_its_history(
    client: Client, workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await workers("a")
    runner = _runner(client)
    conversation = f"conv-{rid()}"
    said = ["one", "two", "three"]
    history: list[str] = []
    for turn, text in enumerate(said, start=1):
        if turn == 2:
            a.kill()  # between turns: the next turns run on another worker
            await workers("b")
        run_id = rid()
        items = [
            i
            async for i in runner.astream(
                _question(text), stream_mode=MODES, run_id=run_id, conversation=conversation
            )
        ]
        history.append(text)
        # The model saw every earlier turn (user and assistant), then this one.
        requests = await seen(counters, run_id)
        assert requests == [history], (turn, requests)
        reply = shown_text(items)
        assert reply == f"turn {turn}: you said " + " then ".join(said[:turn])
        history.append(reply)
    state = await runner.aget_state({"configurable": {"thread_id": conversation}})
    assert [m.content for m in state.values["messages"]] == history


async def test_astream_yields_what_a_plain_graph_astream_yields(
    client: Client, workers: WorkerFactory, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COUNTER_REDIS_URL", servers.redis_url)  # the plain run's model
    await workers("a")
    question = _question("compare")
    graph = apps.chat_graph(InMemorySaver())
    config = {"configurable": {"thread_id": f"plain-{rid()}"}}
    plain = [i async for i in graph.astream(question, config, stream_mode=MODES)]  # type: ignore[arg-type]
    durable = [i async for i in _runner(client).astream(question, stream_mode=MODES)]

    def shape(item: tuple[str, Any]) -> Any:
        mode, payload = item
        if mode == "messages":
            return mode, type(payload[0]).__name__, payload[0].content, payload[1]["langgraph_node"]
        if mode == "updates":
            return mode, {
                node: {k: [(type(m).__name__, m.content) for m in v] for k, v in update.items()}
                for node, update in payload.items()
            }
        return item

    assert [shape(i) for i in durable] == [shape(i) for i in plain]
    assert len([i for i in plain if i[0] == "messages"]) > 3  # it did stream token by token
    # One mode: its items bare, as LangGraph yields them.
    single = [i async for i in _runner(client).astream(question, stream_mode="messages")]
    assert all(isinstance(m, BaseMessage) and isinstance(meta, dict) for m, meta in single)
    values = [i async for i in _runner(client).astream(question)]  # stream_mode="values"
    assert [len(v["messages"]) for v in values] == [1, 2]


@pytest.mark.slow
async def test_double_texting_a_thread_rejects_or_interrupts_the_running_turn(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await workers("a")
    runner = _runner(client, "lg-chat-always")  # a submitted run streams (and gates) too
    conversation = f"conv-{rid()}"
    first = rid()
    await mark_gated(counters, first, "model")
    running = await runner.submit(_question("one"), run_id=first, conversation=conversation)

    async def holding() -> bool:
        return len(await seen(counters, first)) == 1

    await eventually(holding, timeout=30)
    with pytest.raises(ConversationBusyError):
        await runner.submit(_question("two"), conversation=conversation, on_busy="reject")

    # interrupt: the running turn is asked to cancel (it stops at its next step boundary,
    # after its model call held at the gate ends), then the new turn runs on the thread.
    second = rid()

    async def consume() -> list[Any]:
        stream = runner.astream(
            _question("three"),
            stream_mode=MODES,
            run_id=second,
            conversation=conversation,
            on_busy="interrupt",
        )
        return [item async for item in stream]

    consumer = asyncio.create_task(consume())

    async def cancel_asked() -> bool:
        record = await client.store.get_run(first)
        return record is not None and bool(record.cancel)

    await eventually(cancel_asked, timeout=30)
    await open_gate(counters, first, "model")
    items = await consumer
    # Cancelled at its next step boundary; a single-node graph may have none left by the time
    # the cancel reaches its worker, and then it completes: either way it ended first.
    ended = await running.wait(timeout=30)
    assert ended.status in ("cancelled", "completed")
    requests = await seen(counters, second)
    assert len(requests) == 1 and requests[0][0] == "one" and requests[0][-1] == "three"
    said = [text for text in requests[0] if not text.startswith("turn ")]
    assert shown_text(items) == "turn 2: you said " + " then ".join(said)
