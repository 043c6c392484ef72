"""PydanticAI's own streaming API through Stalwart: ``run_stream``, resets, conversations.

Real servers, real ``stalwart worker`` processes, real SIGKILLs. The scripted models live in
``tests.adapters.pydantic_apps`` (``story``: a tool call, then seven streamed text chunks held
on a gate; ``turns``: records the prompts it was given).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

import redis.asyncio as aioredis

from stalwart import App, Client, Settings
from stalwart.adapters import StreamReset
from stalwart.adapters.pydantic_ai import DurableAgentRunner, DurableRunEvents
from stalwart.adapters.pydantic_ai._request import _result_adapter
from stalwart.adapters.pydantic_ai._request import result_data as runner_result_data
from stalwart.adapters.pydantic_ai._stream import DurableStreamedRunResult
from stalwart.client import Chunk, Reset, StreamEnd
from stalwart.client import StepDone as PartDone
from stalwart.testing import StalwartProcess
from tests.adapters.pydantic_apps import (
    STORY,
    Resolution,
    Scenario,
    seen_key,
    story_agent,
    support_agent,
    turns_agent,
)
from tests.conftest import Servers, worker_pool
from tests.helpers import eventually, journal, model_log, open_gate, owners, rid

APP = "tests.adapters.pydantic_apps:app"
ANSWER = "".join(STORY)

# PydanticAI's result types take about a second each to build on a loaded machine: built here,
# at import, rather than inside a test's event loop (the loop watchdog would see it blocked).
for _output in (Any, str, Resolution):
    _result_adapter(_output)

WorkerFactory = Callable[..., Awaitable[StalwartProcess]]


@pytest.fixture
async def pyd_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``APP``, started (and registered) within two minutes.

    (The pool's own wait for the heartbeat is 30 s, which a 2-core machine running several
    suites at once has exceeded while the worker had started normally: it logs
    ``worker.started`` once it has registered its agents, opened its feeds and beaten.)
    """
    async with worker_pool(APP, settings, servers, client) as start:

        async def registered(worker_id: str, **env: str) -> StalwartProcess:
            proc = await start(worker_id, wait=False, **env)

            async def serving() -> bool:
                return '"worker.started"' in proc.log_text()

            await eventually(serving, timeout=120, interval=0.2, message=proc.log_text)
            return proc

        yield registered


def shown(deltas: list[Any]) -> str:
    """What a consumer following the protocol shows: a reset drops the text shown so far.

    (The story run streams text from one model step, so a reset empties the whole view.)
    """
    text = ""
    for delta in deltas:
        text = "" if isinstance(delta, StreamReset) else text + delta
    return text


async def raw_chunks(handle: Any, into: list[Any]) -> None:
    """The run's stream parts as the core gives them (to see which worker sent each chunk)."""
    async for part in handle.stream():
        into.append(part)


def texts(parts: list[Any], step: str) -> list[tuple[str, str]]:
    return [
        (p.worker, p.data["text"])
        for p in parts
        if isinstance(p, Chunk) and p.step == step and p.type == "model.delta" and p.data["text"]
    ]


# -- the conversion alone, from parts as the core yields them (no servers) -------------------------


class _Handle:
    run_id = "r-1"


async def _parts(*parts: Any) -> AsyncIterator[Any]:
    for part in parts:
        yield part


def _delta(step: str, worker: str, attempt: int, text: str, *, epoch: int = 1) -> Chunk:
    data = {"type": "text", "index": 0, "text": text, "delta": text}
    return Chunk(
        step=step, epoch=epoch, attempt=attempt, worker=worker, type="model.delta", data=data, seq=0
    )


async def _plain_result_data() -> Any:
    async with story_agent.run_stream("tell a story") as plain:
        await plain.get_output()
        return runner_result_data(plain.result)


async def test_parts_become_pydantic_ais_stream_with_resets_and_journal_fill_in() -> None:
    runner = DurableAgentRunner("story", story_agent, app=App("client-side"))
    data = await _plain_result_data()
    response = {"parts": [{"part_kind": "text", "content": ANSWER}]}
    parts = [
        PartDone(step="model:1", kind="model", name="m", streamed=False, result={}),
        *[_delta("model:2", "a", 1, c) for c in STORY[:3]],
        Reset(step="model:2", epoch=2, attempt=1, reason="failover", seq=0),
        *[_delta("model:2", "b", 1, c, epoch=2) for c in STORY[:5]],
        # The last two chunks were lost: the journaled response fills them in.
        PartDone(
            step="model:2", kind="model", name="m", streamed=True, result={"response": response}
        ),
        StreamEnd(status="completed", result=data, error=None),
    ]
    streamed = DurableStreamedRunResult(runner, _Handle(), _parts(*parts))  # type: ignore[arg-type]
    deltas = [d async for d in streamed.stream_text(delta=True)]
    assert deltas[:3] == STORY[:3] and isinstance(deltas[3], StreamReset)
    assert deltas[4:] == [*STORY[:5], "".join(STORY[5:])]
    assert shown(deltas) == ANSWER == await streamed.get_output()
    assert streamed.is_complete and streamed.usage.requests == 2
    assert [r.reason for r in streamed.resets] == ["failover"]
    # The text-so-far view restarts on the reset; its last value is the output.
    again = DurableStreamedRunResult(runner, _Handle(), _parts(*parts))  # type: ignore[arg-type]
    views = [t async for t in again.stream_text()]
    assert views[:4] == ["Once ", "Once upon ", "Once upon a ", ""] and views[-1] == ANSWER
    # A late subscriber: only the journal.
    late = DurableStreamedRunResult(runner, _Handle(), _parts(parts[0], *parts[-2:]))  # type: ignore[arg-type]
    assert [t async for t in late.stream_text(delta=True)] == [ANSWER]
    # Text of a delegated agent's model steps is not the answer.
    nested = _delta("tool:x/specialist/model:1", "a", 1, "inner")
    other = DurableStreamedRunResult(runner, _Handle(), _parts(nested, *parts[-2:]))  # type: ignore[arg-type]
    assert [t async for t in other.stream_text(delta=True)] == [ANSWER]


async def test_parts_become_pydantic_ais_events_with_a_reset_among_them() -> None:
    runner = DurableAgentRunner("story", story_agent, app=App("client-side"))
    data = await _plain_result_data()

    def delta(worker: str, text: str, epoch: int) -> Chunk:
        event = {"index": 0, "delta": {"content_delta": text, "part_delta_kind": "text"}}
        chunk = _delta("model:2", worker, 1, text, epoch=epoch)
        chunk.data["event"] = {**event, "event_kind": "part_delta"}
        return chunk

    parts = [
        delta("a", "Once ", 1),
        Reset(step="model:2", epoch=2, attempt=1, reason="failover", seq=0),
        delta("b", "Once ", 2),
        StreamEnd(status="completed", result=data),
    ]
    events = DurableRunEvents(runner, _Handle(), _parts(*parts))  # type: ignore[arg-type]
    got = [e async for e in events]
    assert [type(e).__name__ for e in got] == [
        "PartDeltaEvent",
        "StreamReset",
        "PartDeltaEvent",
        "AgentRunResultEvent",
    ]
    assert got[0].delta.content_delta == "Once " and got[1].reason == "failover"
    assert events.result is not None and events.result.output == ANSWER
    assert events.resets == [got[1]] and len(events.all_messages()) == 4


async def _event_kinds(events: Any) -> list[str]:
    return [type(e).__name__ async for e in events]


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
async def test_run_stream_events_yields_pydantic_ais_own_events(
    client: Client, pyd_workers: WorkerFactory
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("story", story_agent, app=App("client-side"), client=client)
    async with story_agent.run_stream_events("tell a story") as plain:
        plain_events = [e async for e in plain]
    async with runner.run_stream_events("tell a story") as durable:
        durable_events = [e async for e in durable]
        assert durable.result is not None and durable.usage.requests == 2
    # The same loop sees the same events: kinds, text chunks, tool calls and results.
    assert [type(e) for e in durable_events] == [type(e) for e in plain_events]
    for ours, theirs in zip(durable_events, plain_events, strict=True):
        if hasattr(theirs, "delta"):
            assert ours.delta.content_delta == theirs.delta.content_delta
        if hasattr(theirs, "part") and hasattr(theirs.part, "content"):
            assert ours.part.content == theirs.part.content
        if hasattr(theirs, "part") and hasattr(theirs.part, "args"):
            assert ours.part.args_as_dict() == theirs.part.args_as_dict()
    assert durable_events[-1].result.output == plain_events[-1].result.output == ANSWER

    # Attached after the end: the journal's steps as PydanticAI replays completed responses.
    async with runner.attach_events(durable.handle) as late:
        kinds = await _event_kinds(late)
    assert kinds == [
        "PartStartEvent",
        "PartEndEvent",
        "FunctionToolCallEvent",
        "FunctionToolResultEvent",
        "PartStartEvent",
        "PartEndEvent",
        "AgentRunResultEvent",
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
@pytest.mark.parametrize("hold", ["mid", "end"])
async def test_run_stream_shows_the_answer_once_across_a_sigkill(
    client: Client,
    pyd_workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    hold: str,
) -> None:
    """SIGKILL in the middle of the streamed answer, or after its last chunk (the audit's case:
    seven deltas from each worker) but before the model step was journaled."""
    a = await pyd_workers("a")
    runner = DurableAgentRunner("story", story_agent, app=App("client-side"), client=client)
    run_id = rid()
    before = 3 if hold == "mid" else len(STORY)
    deltas: list[Any] = []
    raw: list[Any] = []
    async with runner.run_stream(f"tell a story hold:{hold}", run_id=run_id) as result:
        follower = asyncio.create_task(raw_chunks(result.handle, raw))

        async def consume() -> None:
            async for delta in result.stream_text(delta=True):
                deltas.append(delta)

        consumer = asyncio.create_task(consume())
        await eventually(lambda: _ready(deltas, before), timeout=90)
        a.kill()
        await open_gate(counters, run_id, hold)
        await pyd_workers("b")
        await asyncio.wait_for(consumer, timeout=120)
        output = await result.get_output()
        await asyncio.wait_for(follower, timeout=90)

    # The final text once, equal to the model's output.
    assert output == ANSWER
    assert shown(deltas) == ANSWER
    # A reset marked the dead attempt of the answer's step, before the new attempt's text.
    resets = [d for d in deltas if isinstance(d, StreamReset)]
    assert len(resets) == 1 and resets[0].step == "model:2", deltas
    assert resets[0].reason == "failover"
    cut = deltas.index(resets[0])
    assert deltas[:cut] == STORY[:before] and deltas[cut + 1 :] == STORY
    assert result.resets == resets
    # The chunks before the kill came from the dead worker, the rest from the new one.
    sent = texts(raw, "model:2")
    assert sent[:before] == [("a", c) for c in STORY[:before]]
    reset_at = next(i for i, p in enumerate(raw) if isinstance(p, Reset))
    after = texts(raw[reset_at:], "model:2")
    assert after == [("b", c) for c in STORY]
    # The answer's model call ran on both workers, the tool-call request once.
    assert await model_log(counters, run_id) == ["story:1", "story:2", "story:2"]
    assert owners(await journal(client, run_id)) == ["a", "b"]
    assert [type(m).__name__ for m in result.all_messages()] == [
        "ModelRequest",
        "ModelResponse",
        "ModelRequest",
        "ModelResponse",
    ]
    assert result.usage.requests == 2


async def _ready(deltas: list[Any], n: int) -> bool:
    return len([d for d in deltas if isinstance(d, str)]) >= n


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
async def test_late_attach_gets_completed_calls_from_the_journal(
    client: Client, pyd_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("story", story_agent, app=App("client-side"), client=client)
    run_id = rid()
    handle = await runner.submit("tell a story hold:mid", run_id=run_id)
    raw: list[Any] = []
    follower = asyncio.create_task(raw_chunks(handle, raw))
    await eventually(lambda: _ready_raw(raw, 3), timeout=90)  # three chunks out, held

    # Attached now: the tool-call request is journaled, the answer in flight (half missed).
    views: list[str] = []
    async with runner.attach_stream(run_id) as result:

        async def consume() -> None:
            async for text in result.stream_text():
                views.append(text)

        consumer = asyncio.create_task(consume())
        await open_gate(counters, run_id, "mid")
        await asyncio.wait_for(consumer, timeout=90)
        assert await result.get_output() == ANSWER
    assert views[-1] == ANSWER
    await asyncio.wait_for(follower, timeout=90)

    # Attached after the end: every model call from the journal, the answer whole.
    async with runner.attach_stream(handle) as done:
        deltas = [d async for d in done.stream_text(delta=True)]
        assert shown(deltas) == ANSWER and await done.get_output() == ANSWER
        assert done.all_messages()[-1].parts[0].content == ANSWER  # type: ignore[union-attr]


async def _ready_raw(raw: list[Any], n: int) -> bool:
    return len(texts(raw, "model:2")) >= n


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
async def test_the_same_loop_without_stalwart_yields_the_same(
    client: Client, pyd_workers: WorkerFactory
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("story", story_agent, app=App("client-side"), client=client)

    async def loop(run_stream: Callable[[str], Any]) -> tuple[Any, ...]:
        """The user's loop, written for PydanticAI's ``run_stream``."""
        async with run_stream("tell a story") as result:
            deltas = [d async for d in result.stream_text(delta=True, debounce_by=None)]
            output = await result.get_output()
            kinds = [[p.part_kind for p in m.parts] for m in result.all_messages()]
        async with run_stream("tell a story") as result:
            views = [t async for t in result.stream_text(debounce_by=None)]
        return deltas, views[-1], output, kinds

    plain = await loop(story_agent.run_stream)
    durable = await loop(runner.run_stream)
    assert plain[0] == durable[0] == STORY  # one delta per chunk, the same chunks
    assert all(type(d) is str for d in durable[0])
    assert plain[1:] == durable[1:] == (ANSWER, ANSWER, plain[3])


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
async def test_structured_output_streams_partial_outputs(
    client: Client, pyd_workers: WorkerFactory
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("support", support_agent, app=App("client-side"), client=client)
    run_id = rid()
    async with runner.run_stream(
        "refund my last order", run_id=run_id, deps=Scenario(run_id=run_id)
    ) as result:
        outputs = [o async for o in result.stream_output()]
    assert all(isinstance(o, Resolution) for o in outputs)
    assert outputs[-1].orders == ["c-42-o1", "c-42-o2"] and outputs[-1].open_tickets == 2
    with pytest.raises(Exception, match="only be used with text"):
        async with runner.attach_stream(run_id) as again:
            [t async for t in again.stream_text()]


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
async def test_a_conversation_of_three_turns_across_two_workers(
    client: Client, pyd_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    # A worker killed right after its turn completed can die before it handed the conversation
    # on; the waiting turn repairs that at its re-check (300 s by default), short here.
    recheck = {"STALWART_CONVERSATION_RECHECK": "2"}
    a = await pyd_workers("a", **recheck)
    runner = DurableAgentRunner("turns", turns_agent, app=App("client-side"), client=client)
    conversation = f"c-{rid()[:12]}"
    ids = [rid() for _ in range(3)]

    first = await runner.run("hello", run_id=ids[0], conversation=conversation, timeout=90)
    assert first.output == "turn 1: you said hello"
    a.kill()  # between turns: the next turns run on another worker
    await pyd_workers("b", **recheck)
    second = await runner.run("and again", run_id=ids[1], conversation=conversation, timeout=120)
    assert second.output == "turn 2: you said and again"
    async with runner.run_stream("bye", run_id=ids[2], conversation=conversation) as third:
        views = [t async for t in third.stream_text()]
        assert await third.get_output() == "turn 3: you said bye" == views[-1]

    # The model saw the whole history each turn: every earlier prompt, in order.
    seen = [[json.loads(s) for s in await counters.lrange(seen_key(i), 0, -1)] for i in ids]
    assert seen == [[["hello"]], [["hello", "and again"]], [["hello", "and again", "bye"]]]
    # PydanticAI's result continues the conversation: earlier turns' messages, then this one's.
    assert len(third.all_messages()) == 6 and len(third.new_messages()) == 2
    assert third.conversation_id == conversation
    # (A turn can take more than one epoch on its worker: the conversation's claim.)
    assert set(owners(await journal(client, ids[0]))) == {"a"}
    assert set(owners(await journal(client, ids[1]))) == {"b"}


@pytest.mark.slow
@pytest.mark.timeout(300)  # worker processes on a loaded 2-core machine
async def test_a_conversation_and_message_history_together_are_refused(
    client: Client, pyd_workers: WorkerFactory
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("turns", turns_agent, app=App("client-side"), client=client)
    first = await runner.run("hello", timeout=90)
    from stalwart import RunFailed

    with pytest.raises(RunFailed) as failed:
        await runner.run(
            "again",
            conversation=f"c-{rid()[:12]}",
            message_history=first.all_messages(),
            timeout=90,
        )
    assert failed.value.error_type == "HistoryConflict"
    assert "pass one of them" in failed.value.message
