"""Strands' own ``stream_async`` through Stalwart, and conversations: real servers, SIGKILLs.

The agents live in ``tests/adapters/strands_stream_apps.py``; their scripted model streams
word by word and can be held in the middle of a call, so a test kills the worker that is
streaming it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("strands")

import redis.asyncio as aioredis

import stalwart.adapters.strands as st
from stalwart import App, Client, Settings
from stalwart.adapters import StreamReset
from stalwart.adapters.strands._stream import StrandsEvents
from stalwart.client import Chunk, Reset, StepDone, StreamEnd
from tests.adapters.strands_stream_apps import FINAL, build_chat, build_streamer, seen_key
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import eventually, execs, mark_gated, open_gate, rid

APP = "tests.adapters.strands_stream_apps:app"
FIRST = "Looking it up first."


@pytest.fixture
async def sw(settings: Settings, servers: Servers, client: Client) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.adapters.strands_stream_apps:app``."""
    telemetry_off = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "none"}
    async with worker_pool(APP, settings, servers, client, **telemetry_off) as start:
        yield start


def runner(name: str, client: Client) -> st.DurableAgentRunner:
    """The caller's side of agent ``name`` (the workers serve the real one)."""
    build = build_chat if name == "st-chat" else build_streamer
    return st.DurableAgentRunner(name, build, app=App(f"client-{name}"), client=client)


class Consumer:
    """A user's ``stream_async`` loop: shows text, honours resets, keeps every event."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.shown: dict[str, str] = {}  # step -> text on screen

    def take(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if "stalwart_reset" in event:
            self.shown[event["stalwart_reset"].step] = ""  # that call's text is void
        elif "data" in event:
            step = event["stalwart"]["step"]
            self.shown[step] = self.shown.get(step, "") + event["data"]

    def data(self, step: str) -> list[dict[str, Any]]:
        return [e for e in self.events if "data" in e and e["stalwart"]["step"] == step]

    async def follow(self, events: AsyncIterator[dict[str, Any]]) -> Any:
        async for event in events:
            self.take(event)
        return self.events[-1]["result"]


def shape(events: list[dict[str, Any]]) -> list[Any]:
    """What a caller's loop reads from Strands' events, without per-process objects."""
    out: list[Any] = []
    for e in events:
        if "data" in e:
            out.append(("data", e["data"], e["delta"]))
        elif e.get("type") == "tool_use_stream":  # copied: Strands fills it in later
            out.append(("tool_use", json.loads(json.dumps([e["current_tool_use"], e["delta"]]))))
        elif "message" in e:
            content = json.loads(json.dumps(e["message"]["content"]))
            out.append(("message", e["message"]["role"], content))
        elif "result" in e:
            out.append(("result", str(e["result"]).strip(), e["result"].stop_reason))
    return out


# -- the Done-when test -----------------------------------------------------------------------


@pytest.mark.slow
async def test_stream_async_through_a_sigkill_mid_stream_shows_the_answer_once(
    client: Client, sw: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await sw("a")
    run_id = rid()
    await mark_gated(counters, run_id, "model:2/mid")  # the final answer holds after 2 words
    consumer = Consumer()
    follow = asyncio.create_task(
        consumer.follow(runner("st-stream", client).stream_async("Q", run_id=run_id))
    )
    await eventually(lambda: asyncio.sleep(0, len(consumer.data("model:2")) >= 2), timeout=30)
    a.kill()  # SIGKILL while model:2 is streaming
    b = await sw("b")
    await open_gate(counters, run_id, "model:2/mid")  # for b's attempt
    result = await asyncio.wait_for(follow, timeout=60)
    assert b.alive()

    assert str(result).strip() == FINAL
    # Exactly once on screen: the dead attempt's words were reset, the new one's shown.
    assert consumer.shown == {"model:1": FIRST, "model:2": FINAL}
    assert "".join(consumer.shown.values()) == FIRST + FINAL
    resets = [e["stalwart_reset"] for e in consumer.events if "stalwart_reset" in e]
    assert [(r.step, r.reason) for r in resets] == [("model:2", "failover")]
    assert isinstance(resets[0], StreamReset) and resets[0].type == "stalwart.reset"
    at = next(i for i, e in enumerate(consumer.events) if "stalwart_reset" in e)
    before = [e for e in consumer.events[:at] if "data" in e and e["stalwart"]["step"] == "model:2"]
    after = [e for e in consumer.events[at:] if "data" in e]
    assert [e["stalwart"]["worker"] for e in before] == ["a", "a"]
    assert "".join(e["data"] for e in before) == " ".join(FINAL.split()[:2]) + " "
    assert {e["stalwart"]["worker"] for e in after} == {"b"}
    assert "".join(e["data"] for e in after) == FINAL
    assert before[0]["stalwart"]["epoch"] < after[0]["stalwart"]["epoch"]
    # The model really ran model:2 twice (once per worker), model:1 once.
    assert await execs(counters, run_id, "model:1") == 1
    assert await execs(counters, run_id, "model:2") == 2


# -- late attach ----------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_late_attach_gets_completed_calls_whole_then_the_live_one(
    client: Client, sw: WorkerFactory, counters: aioredis.Redis
) -> None:
    await sw("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:l1")  # model:1 completes, the tool holds
    r = runner("st-stream", client)
    await r.submit("Q", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "tool:l1"), timeout=30)

    consumer = Consumer()
    follow = asyncio.create_task(consumer.follow(r.attach_async(run_id)))
    # The journal read (model:1's reply) comes after the subscription: then let it go on.
    await eventually(lambda: asyncio.sleep(0, bool(consumer.data("model:1"))), timeout=30)
    await open_gate(counters, run_id, "tool:l1")
    result = await asyncio.wait_for(follow, timeout=60)

    assert str(result).strip() == FINAL
    whole = consumer.data("model:1")
    assert [e["data"] for e in whole] == [FIRST]  # completed before the attach: whole, once
    assert whole[0]["stalwart"]["worker"] is None
    live = consumer.data("model:2")
    assert len(live) == len(FINAL.split()) and {e["stalwart"]["worker"] for e in live} == {"a"}
    assert consumer.shown == {"model:1": FIRST, "model:2": FINAL}
    assert not any("stalwart_reset" in e for e in consumer.events)


# -- the same loop without Stalwart -----------------------------------------------------------


@pytest.mark.slow
async def test_stream_async_yields_what_the_plain_agent_yields(
    client: Client, sw: WorkerFactory, counters: aioredis.Redis
) -> None:
    # Read as a loop reads them, when yielded (Strands fills in a tool use's parsed input
    # in the same dict later).
    plain = [x async for e in build_streamer().stream_async("Q") for x in shape([e])]
    await sw("a")
    # The first call holds mid-stream until this reader is attached: a call that completed
    # before a reader attached comes whole from the journal, by design (attach_async), and
    # on a loaded machine the worker can finish it before the submit returns here.
    run_id = rid()
    await mark_gated(counters, run_id, "model:1/mid")
    durable: list[Any] = []

    async def read() -> None:
        async for e in runner("st-stream", client).stream_async("Q", run_id=run_id):
            durable.extend(shape([e]))

    reading = asyncio.create_task(read())
    await eventually(lambda: asyncio.sleep(0, bool(durable)), timeout=30)
    await open_gate(counters, run_id, "model:1/mid")
    await asyncio.wait_for(reading, timeout=60)
    assert durable == plain
    assert [x[1] for x in durable if x[0] == "data"] == [*_words(FIRST), *_words(FINAL)]
    assert durable[-1] == ("result", FINAL, "end_turn")

    # stream=False publishes no deltas: each call's text comes whole, from the journal.
    quiet = st.DurableAgentRunner(
        "st-stream-quiet", build_streamer, app=App("client-quiet"), client=client
    )
    events = [e async for e in quiet.stream_async("Q")]
    assert [e["data"] for e in events if "data" in e] == [FIRST, FINAL]


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


# -- conversations ----------------------------------------------------------------------------


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"][0]["text"]) for m in messages]


@pytest.mark.slow
async def test_a_conversation_of_three_turns_across_a_sigkill_keeps_its_history(
    client: Client, sw: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    conv = f"c-{uuid.uuid4().hex[:12]}"
    chat = runner("st-chat", client)
    a = await sw("a")
    turns = [rid(), rid(), rid()]
    one = await chat.run("hello", run_id=turns[0], conversation=conv)
    assert str(one).strip() == "reply to hello after 1 messages"
    a.kill()  # between turns: the history lives in Redis, not in the worker
    await sw("b")
    two = await chat.run("and then", run_id=turns[1], conversation=conv)
    consumer = Consumer()
    three = await consumer.follow(chat.stream_async("finally", run_id=turns[2], conversation=conv))

    replies = [
        "reply to hello after 1 messages",
        "reply to and then after 3 messages",
        "reply to finally after 5 messages",
    ]
    assert [str(r).strip() for r in (one, two, three)] == replies
    assert "".join(consumer.shown.values()) == replies[2]
    # What the model was sent each turn (logged in Redis by the model itself): everything.
    expected: list[tuple[str, str]] = []
    for run_id, prompt, answer in zip(
        turns, ["hello", "and then", "finally"], replies, strict=True
    ):
        expected.append(("user", prompt))
        seen = [json.loads(x) for x in await counters.lrange(seen_key(run_id), 0, -1)]
        assert [_texts(s) for s in seen] == [expected], f"turn {run_id}"
        expected.append(("assistant", answer))
    assert _texts(three.messages) == expected


async def test_a_conversation_and_messages_together_are_refused(
    client: Client, sw: WorkerFactory
) -> None:
    await sw("a")
    chat = runner("st-chat", client)
    with pytest.raises(Exception, match="conversation= or messages="):
        await chat.run("hi", conversation=f"c-{uuid.uuid4().hex[:8]}", messages=[])


# -- the rebuild, part by part --------------------------------------------------------------


def test_parts_become_strands_events_in_order() -> None:
    events = StrandsEvents()
    message = {
        "role": "assistant",
        "content": [
            {"text": "hi "},
            {"toolUse": {"toolUseId": "t", "name": "f", "input": {"x": 1}}},
        ],
    }
    parts: list[Any] = [
        Chunk(
            step="model:1",
            epoch=1,
            attempt=1,
            worker="w",
            type="model.delta",
            data={"text": "hi "},
            seq=1,
        ),
        StepDone(
            step="model:1",
            kind="model",
            name="m",
            streamed=True,
            result={"stop_reason": "tool_use", "message": message, "usage": {}, "metrics": {}},
        ),
        StepDone(
            step="tool:t",
            kind="tool",
            name="f",
            streamed=False,
            result={
                "result": {"toolUseId": "t", "status": "success", "content": [{"text": "1"}]},
                "error": None,
            },
        ),
        Reset(step="model:2", epoch=2, attempt=1, reason="failover", seq=2),
        StepDone(
            step="model:2",
            kind="model",
            name="m",
            streamed=False,
            result={
                "stop_reason": "end_turn",
                "message": {"role": "assistant", "content": [{"text": "done"}]},
            },
        ),
        StepDone(
            step="w/model:1",
            kind="model",
            name="m",
            streamed=False,
            result={
                "stop_reason": "end_turn",
                "message": {"role": "assistant", "content": [{"text": "node"}]},
            },
        ),
        StepDone(
            step="tool:o/model:1",
            kind="model",
            name="m",
            streamed=False,
            result={
                "stop_reason": "end_turn",
                "message": {"role": "assistant", "content": [{"text": "inner"}]},
            },
        ),
        StreamEnd(status="completed", result=None, error=None),
    ]
    out = [e for p in parts for e in events.feed(p)]
    assert [next(iter(e)) for e in out] == [
        "data",
        "type",
        "message",
        "message",
        "stalwart_reset",
        "data",
        "message",
        "type",
        "type",
    ]
    assert out[1]["current_tool_use"] == {"toolUseId": "t", "name": "f", "input": '{"x": 1}'}
    assert out[3]["message"]["content"][0]["toolResult"]["toolUseId"] == "t"
    assert out[4]["stalwart_reset"] == StreamReset(
        step="model:2", epoch=2, attempt=1, reason="failover"
    )
    assert out[5]["data"] == "done" and out[5]["stalwart"]["worker"] is None
    assert out[7] == {"type": "multiagent_node_stream", "node_id": "w", "event": out[7]["event"]}
    assert out[7]["event"]["data"] == "node"
