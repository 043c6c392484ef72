"""CrewAI's own streaming (``CrewStreamingOutput``) through Stalwart, and conversations.

Real servers, real worker processes, real SIGKILLs; the crews live in
``tests/adapters/crewai_stream_apps.py``. Runs in CrewAI's own environment (see ``.ci/run``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from stalwart import App, Client, Settings
from stalwart.testing import StalwartProcess
from tests.conftest import Servers, WorkerFactory, _registered, worker_pool
from tests.helpers import eventually, execs, mark_gated, open_gate, rid

APP = "tests.adapters.crewai_stream_apps:app"
QUIET = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
}
# Only where CrewAI is installed (its own environment): elsewhere this module is skipped and
# must not switch OpenTelemetry off for the other tests in the process.
if importlib.util.find_spec("crewai") is not None:
    os.environ.update(QUIET)

with warnings.catch_warnings():  # CrewAI's own import-time noise
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="crewai")
    warnings.filterwarnings("ignore", "Cannot set an attribute on 'crewai", ImportWarning)
    pytest.importorskip("crewai")
    from crewai.types.streaming import StreamChunk, StreamChunkType

    from stalwart.adapters import StreamReset
    from stalwart.adapters.crewai import DurableAgentRunner, DurableCrewRunner, _conversation
    from stalwart.adapters.crewai._stream import DurableCrewStreamingOutput, crew_chunks
    from stalwart.client import Chunk, Reset, StepDone
    from stalwart.errors import ConfigurationError
    from tests.adapters.crewai_stream_apps import (
        FINAL,
        FIRST_TASK,
        chat_agent,
        chat_crew,
        seen_key,
        stream_crew,
    )

pytestmark = [
    pytest.mark.timeout(600),  # CrewAI workers start slowly on a loaded machine
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
    pytest.mark.filterwarnings("ignore:Cannot set an attribute on 'crewai:ImportWarning"),
]

LAST = "task:1/model:2"  # the summary's final answer, after its tool call


@pytest.fixture
async def cw(settings: Settings, servers: Servers, client: Client) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.adapters.crewai_stream_apps:app``."""
    async with worker_pool(APP, settings, servers, client, **QUIET) as start:

        async def started(worker_id: str = "", *, wait: bool = True, **env: str) -> StalwartProcess:
            # Importing CrewAI takes a worker tens of seconds on a loaded machine: wait longer
            # than the pool's 30 s for it to register (a worker that takes over a run already
            # submitted is not waited for: the run waits for it).
            proc = await start(worker_id, wait=False, **env)
            if wait:
                await eventually(
                    lambda: _registered(client, proc.name),
                    timeout=300,
                    message=lambda: f"worker {proc.name} did not start:\n{proc.log_text()[-3000:]}",
                )
            return proc

        yield started  # type: ignore[misc]


def crew_runner(name: str, client: Client, build: Any = None) -> DurableCrewRunner:
    """The caller's side of crew ``name`` (the workers serve the real one)."""
    return DurableCrewRunner(
        name, build or stream_crew, app=App(f"client-{name}-{uuid.uuid4().hex[:4]}"), client=client
    )


class Shown:
    """A user's loop over a ``CrewStreamingOutput``: shows text, honours resets."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.text: dict[str, str] = {}

    async def follow(self, streaming: Any) -> None:
        async for chunk in streaming:
            self.items.append(chunk)
            if isinstance(chunk, StreamReset):
                self.text[chunk.step] = ""  # what was shown of that call is void
            elif chunk.chunk_type == StreamChunkType.TEXT:
                self.text[chunk.step] = self.text.get(chunk.step, "") + chunk.content

    def chunks(self, step: str) -> list[Any]:
        return [c for c in self.items if isinstance(c, StreamChunk) and c.step == step]


def shape(chunks: list[Any]) -> list[Any]:
    """What a caller's loop reads from CrewAI's stream chunks."""
    return [
        (c.content, c.chunk_type, c.agent_role, c.tool_call.model_dump() if c.tool_call else None)
        for c in chunks
    ]


@pytest.mark.slow
async def test_crew_stream_through_a_sigkill_mid_stream_shows_the_answer_once(
    client: Client, cw: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await cw("a")
    run_id = rid()
    await mark_gated(counters, run_id, f"{LAST}/mid")
    streaming = await crew_runner("crew-stream", client).kickoff_streaming(
        inputs={"topic": "pricing"}, run_id=run_id
    )
    shown = Shown()
    follow = asyncio.create_task(shown.follow(streaming))
    await eventually(lambda: asyncio.sleep(0, len(shown.chunks(LAST)) >= 2), timeout=240)
    a.kill()  # SIGKILL while the final answer is streaming
    await cw("b", wait=False)
    await open_gate(counters, run_id, f"{LAST}/mid")
    await asyncio.wait_for(follow, timeout=240)

    assert streaming.result.raw == FINAL
    assert shown.text == {"task:0/model:1": FIRST_TASK, LAST: FINAL}
    assert streaming.get_full_text() == FIRST_TASK + FINAL  # exactly once, resets applied
    resets = [c for c in shown.items if isinstance(c, StreamReset)]
    assert [(r.step, r.reason) for r in resets] == [(LAST, "failover")]
    at = shown.items.index(resets[0])
    before = [c for c in shown.items[:at] if isinstance(c, StreamChunk) and c.step == LAST]
    after = [c for c in shown.items[at:] if isinstance(c, StreamChunk)]
    assert [c.worker for c in before] == ["a", "a"]
    assert "".join(c.content for c in before) == "The outlook "
    assert {c.worker for c in after} == {"b"}
    assert "".join(c.content for c in after) == FINAL
    assert await execs(counters, run_id, "task:0/model:1") == 1
    assert await execs(counters, run_id, LAST) == 2  # the call in flight ran again, once


@pytest.mark.slow
async def test_a_late_attach_gets_completed_calls_whole_then_the_live_one(
    client: Client, cw: WorkerFactory, counters: aioredis.Redis
) -> None:
    await cw("a")
    run_id = rid()
    await mark_gated(counters, run_id, LAST)  # held before the final call starts
    runner = crew_runner("crew-stream", client)
    await runner.submit(inputs={"topic": "pricing"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, LAST), timeout=240)

    streaming = runner.attach_streaming(run_id)
    shown = Shown()
    follow = asyncio.create_task(shown.follow(streaming))
    await eventually(lambda: asyncio.sleep(0, bool(shown.chunks("task:0/model:1"))), timeout=30)
    await open_gate(counters, run_id, LAST)
    await asyncio.wait_for(follow, timeout=60)

    assert streaming.result.raw == FINAL
    whole = shown.chunks("task:0/model:1")
    assert [(c.content, c.worker) for c in whole] == [(FIRST_TASK, None)]
    live = shown.chunks(LAST)
    assert len(live) == len(FINAL.split()) and {c.worker for c in live} == {"a"}
    assert streaming.get_full_text() == FIRST_TASK + FINAL


@pytest.mark.slow
async def test_the_durable_stream_yields_what_the_plain_crew_yields(
    client: Client, cw: WorkerFactory
) -> None:
    plain_stream = stream_crew().kickoff(inputs={"topic": "pricing"})
    plain = await asyncio.to_thread(list, plain_stream)  # CrewAI's sync iteration blocks
    await cw("a")
    streaming = await crew_runner("crew-stream", client).kickoff_streaming(
        inputs={"topic": "pricing"}
    )
    durable = [c async for c in streaming]
    assert shape(durable) == shape(plain)
    assert streaming.result.raw == plain_stream.result.raw == FINAL
    assert streaming.get_full_text() == plain_stream.get_full_text()

    # A runner with stream=False: no live chunks, each text call whole once it completed.
    quiet = await crew_runner("crew-stream-quiet", client).kickoff_streaming(
        inputs={"topic": "pricing"}
    )
    assert [c.content async for c in quiet] == [FIRST_TASK, FINAL]


@pytest.mark.slow
async def test_a_crew_conversation_of_three_turns_across_a_sigkill_keeps_its_history(
    client: Client, cw: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    conv = f"c-{uuid.uuid4().hex[:12]}"
    chat = crew_runner("crew-chat", client, chat_crew)
    a = await cw("a")
    turns = [rid(), rid(), rid()]
    one = await chat.run(inputs={"question": "q1"}, run_id=turns[0], conversation=conv)
    a.kill()  # between turns: the conversation lives in Redis
    await cw("b")
    two = await chat.run(inputs={"question": "q2"}, run_id=turns[1], conversation=conv)
    streaming = await chat.kickoff_streaming(
        inputs={"question": "q3"}, run_id=turns[2], conversation=conv
    )
    three_text = "".join([c.content async for c in streaming])
    answers = [f"answer to q{n} after {n - 1} earlier questions" for n in (1, 2, 3)]
    assert [one.raw, two.raw, streaming.result.raw] == answers
    assert three_text == answers[2]
    # The model was sent the whole history each turn (as CrewAI's crew chat hands it over).
    for n, run_id in enumerate(turns):
        prompts = [json.loads(x) for x in await counters.lrange(seen_key(run_id), 0, -1)]
        assert len(prompts) == 1
        sent = "\n".join(str(m.get("content")) for m in prompts[0])
        history = "".join(f"User: q{k}\nAssistant: {answers[k - 1]}\n" for k in range(1, n + 1))
        assert history.strip() in sent if history else "User: " not in sent


@pytest.mark.slow
async def test_an_agent_conversation_puts_the_history_before_the_prompt(
    client: Client, cw: WorkerFactory
) -> None:
    await cw("a")
    agent = DurableAgentRunner("agent-chat", chat_agent, app=App("client-agent"), client=client)
    conv = f"c-{uuid.uuid4().hex[:12]}"
    one = await agent.run("first?", conversation=conv)
    two = await agent.run("second?", conversation=conv)
    assert one.raw == "agent answer after 0 earlier questions: "
    assert two.raw == "agent answer after 1 earlier questions: first?"


async def test_a_conversation_and_crew_chat_messages_together_are_refused() -> None:
    class Conv:  # a run's conversation, as far as the refusal looks
        async def history(self) -> list[Any]:
            return []

    class Ctx:
        conversation = Conv()

    with pytest.raises(ConfigurationError, match="crew_chat_messages"):
        await _conversation.crew_inputs(Ctx(), {"question": "q", "crew_chat_messages": "[]"})  # type: ignore[arg-type]
    inputs, history = await _conversation.crew_inputs(Ctx(), {"question": "q"})  # type: ignore[arg-type]
    assert (inputs, history) == ({"question": "q"}, [])
    assert _conversation.user_message({"question": "q"}) == {"role": "user", "content": "q"}
    assert _conversation.user_message({"a": 1, "b": 2})["content"] == "a: 1\nb: 2"


def test_parts_become_crewai_stream_chunks() -> None:
    text = Chunk(
        step="task:1/model:2",
        epoch=2,
        attempt=1,
        worker="w",
        type="model.delta",
        data={
            "text": "hi ",
            "agent_role": "Analyst",
            "agent_id": "",
            "task_id": "",
            "task_name": "",
        },
        seq=1,
    )
    got = crew_chunks(text)
    assert isinstance(got, StreamChunk) and got.content == "hi " and got.task_index == 1
    assert (got.step, got.epoch, got.attempt, got.worker) == ("task:1/model:2", 2, 1, "w")
    call = Chunk(
        step="task:0/model:1",
        epoch=1,
        attempt=1,
        worker="w",
        type="stream.item",
        data={
            "mode": "tool_call",
            "chunk": {
                "content": "{}",
                "tool_id": "c",
                "tool_name": "f",
                "arguments": "{}",
                "index": 0,
            },
        },
        seq=2,
    )
    tool = crew_chunks(call)
    assert tool is not None and tool.chunk_type == StreamChunkType.TOOL_CALL
    assert tool.tool_call is not None and tool.tool_call.tool_name == "f"
    reset = crew_chunks(Reset(step="task:1/model:2", epoch=3, attempt=1, reason="failover", seq=3))
    assert reset == StreamReset(step="task:1/model:2", epoch=3, attempt=1, reason="failover")
    done = StepDone(
        step="task:0/model:1", kind="model", name="m", streamed=False, result={"response": "whole"}
    )
    whole = crew_chunks(done)
    assert whole is not None and whole.content == "whole" and whole.worker is None
    calls = StepDone(
        step="task:0/model:2",
        kind="model",
        name="m",
        streamed=False,
        result={"response": [{"id": "c"}]},
    )
    assert crew_chunks(calls) is None
    streamed = StepDone(
        step="task:0/model:3", kind="model", name="m", streamed=True, result={"response": "x"}
    )
    assert crew_chunks(streamed) is None

    async def items() -> AsyncIterator[Any]:
        for item in (
            got,
            reset,
            crew_chunks(
                Chunk(
                    step="task:1/model:2",
                    epoch=3,
                    attempt=1,
                    worker="v",
                    type="model.delta",
                    data={"text": "hello"},
                    seq=4,
                )
            ),
        ):
            yield item

    async def drain() -> str:
        out = DurableCrewStreamingOutput(items())
        _ = [c async for c in out]
        return out.get_full_text()

    assert asyncio.run(drain()) == "hello"
