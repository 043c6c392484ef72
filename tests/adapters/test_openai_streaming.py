"""OpenAI Agents SDK: ``run_streamed`` and conversations through Stalwart (issue #17).

Real servers, real worker processes, real SIGKILLs. The agents (``oa-chat``,
``oa-lookup-chat``) are in ``tests/adapters/openai_apps.py``: their model streams each text
in word-sized deltas, records the user texts it was given (``inputs_key``), and can be held
after its second delta (gate ``<step>:mid``) so a test kills the worker mid-stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("agents")

import redis.asyncio as aioredis
from agents import Runner
from agents.stream_events import RawResponsesStreamEvent
from openai.types.responses import ResponseTextDeltaEvent

from stalwart import Client, Settings
from stalwart.adapters import StreamReset
from stalwart.adapters.openai_agents import DurableAgentRunner, StepRawResponsesStreamEvent
from stalwart.testing import StalwartProcess
from tests.adapters import openai_apps as apps
from tests.conftest import Servers, _registered, worker_pool
from tests.helpers import (
    COUNTER_ENV,
    eventually,
    has_all,
    mark_gated,
    model_log,
    open_gate,
    rid,
)

pytestmark = pytest.mark.timeout(300)  # worker processes start slowly on a loaded 2-core machine

APP = "tests.adapters.openai_apps:app"
Workers = Callable[[str], Awaitable["StalwartProcess"]]


@pytest.fixture
async def oa_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[Callable[[str], Awaitable[StalwartProcess]]]:
    """Worker processes serving ``APP``, given more time to start than the pool's default:
    these tests run beside other suites on a loaded machine."""
    async with worker_pool(
        APP, settings, servers, client, OPENAI_AGENTS_DISABLE_TRACING="1"
    ) as start:

        async def started(worker_id: str) -> StalwartProcess:
            proc = await start(worker_id, wait=False)
            await eventually(
                lambda: _registered(client, worker_id),
                timeout=180,
                message=lambda: f"worker {worker_id} did not start:\n{proc.log_text()[-3000:]}",
            )
            return proc

        yield started


@pytest.fixture
def runners(client: Client) -> AsyncIterator[None] | Any:
    """The app's runners, submitting through the test's client."""
    mine = (apps.chat, apps.lookup_chat)
    for r in mine:
        r._client = client
    yield
    for r in mine:
        r._client = None


def is_text(event: Any) -> bool:
    return isinstance(event, RawResponsesStreamEvent) and isinstance(
        event.data, ResponseTextDeltaEvent
    )


def render(events: list[Any]) -> str:
    """What a loop that honours resets shows: text per model call, a reset empties its call."""
    shown: dict[str, str] = {}
    for event in events:
        if event.type == "stalwart.reset":
            shown[event.step] = ""
        elif is_text(event):
            shown[event.step] = shown.get(event.step, "") + event.data.delta
    return "".join(shown.values())


def naive(events: list[Any]) -> str:
    """What a loop written for the plain SDK shows if it ignores resets."""
    return "".join(e.data.delta for e in events if is_text(e))


async def consume(result: Any, into: list[Any]) -> None:
    async for event in result.stream_events():
        into.append(event)


async def seen_inputs(counters: aioredis.Redis, run_id: str) -> list[list[str]]:
    return [json.loads(x) for x in await counters.lrange(apps.inputs_key(run_id), 0, -1)]


def shape(events: list[Any]) -> list[tuple[str, str]]:
    """Event types with their kind (raw event type, run item name, agent name)."""
    out = []
    for e in events:
        if isinstance(e, RawResponsesStreamEvent):
            out.append((e.type, e.data.type))
        elif e.type == "run_item_stream_event":
            out.append((e.type, e.name))
        elif e.type == "agent_updated_stream_event":
            out.append((e.type, e.new_agent.name))
        else:
            out.append((e.type, ""))
    return out


# -- (a) the Done-when test: SIGKILL in the middle of a streamed model call ---------------


@pytest.mark.slow
async def test_run_streamed_through_a_sigkill_mid_stream_shows_the_answer_once(
    oa_workers: Workers, supervisor: Any, counters: aioredis.Redis, runners: None
) -> None:
    a = await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "model:1:mid")  # hold model:1 after two deltas
    result = apps.chat.run_streamed("hello there my friend", run_id=run_id)
    events: list[Any] = []
    consumer = asyncio.create_task(consume(result, events))

    async def two_deltas() -> bool:
        return sum(map(is_text, events)) >= 2

    await eventually(two_deltas, timeout=60)
    await oa_workers("b")  # started while a holds the call mid-stream (a loaded machine
    a.kill()  # starts a worker slowly), then a, the owner, is killed
    await open_gate(counters, run_id, "model:1:mid")
    await asyncio.wait_for(consumer, timeout=120)

    expected = "turn 1 heard hello there my friend"
    assert result.is_complete and result.final_output == expected
    assert render(events) == expected  # exactly once, with the reset honoured
    assert naive(events) == "turn 1 " + expected  # ...which the dead attempt's text needed
    resets = [e for e in events if isinstance(e, StreamReset)]
    assert [(r.step, r.reason, r.type) for r in resets] == [
        ("model:1", "failover", "stalwart.reset")
    ]
    cut = events.index(resets[0])
    dead = [e for e in events[:cut] if is_text(e)]
    assert [e.data.delta for e in dead] == ["turn ", "1 "]
    assert {(e.worker, e.step) for e in dead} == {("a", "model:1")}
    live = [e for e in events[cut:] if is_text(e)]
    assert {e.worker for e in live} == {"b"} and live[0].attempt >= 1
    assert "".join(e.data.delta for e in live) == expected
    assert await model_log(counters, run_id) == ["model:1", "model:1"]  # a, then b
    assert result.new_items[-1].raw_item.content[0].text == expected  # the SDK's RunResult


# -- (b) a conversation of three turns across two workers, a SIGKILL between turns -------


@pytest.mark.slow
@pytest.mark.timeout(600)  # three worker processes started one after another
async def test_a_conversation_continues_across_workers_and_a_sigkill(
    client: Client,
    oa_workers: Workers,
    supervisor: Any,
    counters: aioredis.Redis,
    runners: None,
) -> None:
    conv = f"chat-{rid()}"
    workers = {"a": await oa_workers("a")}
    outputs, inputs, ran_on = [], [], []
    for n, text in enumerate(["one", "two", "three"]):
        if n:  # between turns: a new worker, then kill the one the previous turn ran on
            workers["abc"[n]] = await oa_workers("abc"[n])
            workers.pop(ran_on[-1]).kill()
        run_id = rid()
        if n == 1:  # one turn through the plain run(), the others streamed
            result = await apps.chat.run(text, conversation=conv, run_id=run_id, timeout=120)
        else:
            streamed = apps.chat.run_streamed(text, conversation=conv, run_id=run_id)
            events: list[Any] = []
            await asyncio.wait_for(consume(streamed, events), timeout=120)
            assert render(events) == streamed.final_output
            result = streamed
        outputs.append(result.final_output)
        inputs.append(await seen_inputs(counters, run_id))
        record = await client.handle(run_id).status()
        assert record.conversation == conv and record.worker in workers
        ran_on.append(record.worker)

    assert len(set(ran_on)) == 3  # each turn on another worker, after a SIGKILL
    assert outputs == [
        "turn 1 heard one",
        "turn 2 heard one then two",
        "turn 3 heard one then two then three",
    ]
    # The model saw the whole history each turn (one model call per turn).
    assert inputs == [[["one"]], [["one", "two"]], [["one", "two", "three"]]]


# -- (c) late attach: completed calls from the journal, then the live ones -----------------


@pytest.mark.slow
async def test_attach_late_gets_completed_calls_whole_then_live_deltas(
    client: Client, oa_workers: Workers, counters: aioredis.Redis, runners: None
) -> None:
    await oa_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:L1")  # hold the run after model:1
    await apps.lookup_chat.submit("hi", run_id=run_id, stream=True)

    await eventually(lambda: has_all(client, run_id, "model:1"), timeout=60)
    attached = apps.lookup_chat.attach_streamed(run_id)
    events: list[Any] = []
    consumer = asyncio.create_task(consume(attached, events))
    await open_gate(counters, run_id, "tool:L1")
    try:
        await asyncio.wait_for(consumer, timeout=120)
    except TimeoutError:
        status = await client.handle(run_id).status()
        raise AssertionError(f"consumer stuck; run {status.status}; {shape(events)}") from None

    expected = "the answer is hi (a greeting) for you"
    assert attached.final_output == expected and render(events) == expected
    kinds = shape(events)
    assert ("run_item_stream_event", "tool_called") in kinds  # model:1, from the journal
    assert kinds.index(("run_item_stream_event", "tool_called")) < kinds.index(
        ("run_item_stream_event", "tool_output")
    )
    model2 = [e for e in events if is_text(e) and e.step == "model:2"]
    assert len(model2) == len(apps.pieces(expected)) and {e.worker for e in model2} == {"a"}

    # Attaching after the end: every call from the journal, each message's text whole.
    after = apps.lookup_chat.attach_streamed(run_id)
    late: list[Any] = []
    await asyncio.wait_for(consume(after, late), timeout=30)
    assert after.final_output == expected
    assert [e.data.delta for e in late if is_text(e)] == [expected]
    assert not any(isinstance(e, StreamReset) for e in late)


# -- (d) the same loop without Stalwart yields the same events ----------------------------


@pytest.mark.slow
async def test_the_same_loop_without_stalwart_yields_the_same_events(
    oa_workers: Workers,
    counters: aioredis.Redis,
    servers: Servers,
    runners: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(COUNTER_ENV, servers.redis_url)  # the scripted model logs its calls
    await oa_workers("a")

    plain = Runner.run_streamed(apps.lookup_chat_agent(), "hi", run_config=apps.CONFIG)
    plain_events = [e async for e in plain.stream_events()]
    durable = apps.lookup_chat.run_streamed("hi")
    durable_events: list[Any] = []
    await asyncio.wait_for(consume(durable, durable_events), timeout=120)

    assert shape(durable_events) == shape(plain_events)
    assert naive(durable_events) == naive(plain_events) == plain.final_output
    assert durable.final_output == plain.final_output
    assert all(
        isinstance(e, StepRawResponsesStreamEvent)
        for e in durable_events
        if isinstance(e, RawResponsesStreamEvent)
    )
    outputs = [e.item.output for e in durable_events if getattr(e, "name", "") == "tool_output"]
    assert outputs == [
        e.item.output for e in plain_events if getattr(e, "name", "") == "tool_output"
    ]


def test_run_streamed_refuses_what_it_cannot_send_at_once() -> None:
    runner = DurableAgentRunner("oa-check", apps.chat_agent, app=apps.App("check"))
    with pytest.raises(TypeError, match="session= keeps a history"):
        runner.run_streamed("hi", session=object())
    with pytest.raises(TypeError, match="no per-run option"):
        runner.run_streamed("hi", colour="red")


# -- pure parts: the session over a conversation, the event rebuild ------------------------


class _Conversation:
    """An in-memory conversation with the shape of ``ctx.conversation``."""

    def __init__(self, earlier: list[Any]) -> None:
        self.id = "c-1"
        self.items = list(earlier)
        self.appends: list[list[Any]] = []

    async def history(self) -> list[Any]:
        return list(self.items)

    async def append(self, items: list[Any]) -> None:
        self.appends.append(items)
        self.items.extend(items)


async def test_the_session_reads_earlier_turns_and_appends_this_turn_once() -> None:
    from stalwart.adapters.openai_agents import SessionHistoryError, StalwartSession

    conv = _Conversation([{"role": "user", "content": "one"}])
    session = StalwartSession(conv)  # type: ignore[arg-type]
    assert session.session_id == "c-1"
    await session.add_items([{"role": "user", "content": "two"}])
    await session.add_items([{"role": "assistant", "content": "x"}])
    assert [i["content"] for i in await session.get_items()] == ["one", "two", "x"]
    assert [i["content"] for i in await session.get_items(limit=1)] == ["x"]
    assert (await session.pop_item()) == {"role": "assistant", "content": "x"}  # this turn's
    await session.pop_item()
    with pytest.raises(SessionHistoryError, match="earlier turns cannot be popped"):
        await session.pop_item()
    with pytest.raises(SessionHistoryError, match="cannot be cleared"):
        await session.clear_session()
    await session.add_items([{"role": "user", "content": "three"}])
    await session.commit()
    await session.commit()
    assert conv.appends == [[{"role": "user", "content": "three"}]]


def test_stream_parts_become_the_sdks_events() -> None:
    from agents.stream_events import AgentUpdatedStreamEvent

    from stalwart.adapters.openai_agents._codec import dump_response
    from stalwart.adapters.openai_agents._events import EventRebuilder
    from stalwart.client import Chunk, Reset, StepDone
    from stalwart.kit import model_record

    agent = apps.chat_agent()
    rebuild = EventRebuilder(agent)
    delta = {
        "type": "response.output_text.delta",
        "delta": "hi ",
        "item_id": "m",
        "output_index": 0,
        "content_index": 0,
        "logprobs": [],
        "sequence_number": 4,
    }
    first = rebuild.apply(Chunk("model:1", 5, 1, "a", "model.delta", {"text": "hi ", **delta}, 1))
    assert isinstance(first[0], AgentUpdatedStreamEvent) and first[0].new_agent is agent
    assert is_text(first[1]) and first[1].data.delta == "hi " and first[1].worker == "a"
    reset = rebuild.apply(Reset("model:1", 6, 1, "failover", 2))
    assert [(r.type, r.step, r.reason) for r in reset] == [
        ("stalwart.reset", "model:1", "failover")
    ]
    assert rebuild.apply(Chunk("tool:x/model:1", 6, 1, "b", "model.delta", {"text": "n"}, 3)) == []

    from agents.items import ModelResponse
    from agents.usage import Usage

    response = ModelResponse(
        output=[apps.assistant_message("hi there")], usage=Usage(), response_id="r1"
    )
    record = model_record(dump_response(response), {"model": "m"})
    done = rebuild.apply(StepDone("model:1", "model", "m", False, record))
    kinds = shape(done)
    assert kinds == [
        ("raw_response_event", "response.output_text.delta"),
        ("raw_response_event", "response.output_item.done"),
        ("raw_response_event", "response.completed"),
        ("run_item_stream_event", "message_output_created"),
    ]
    assert done[0].data.delta == "hi there"
