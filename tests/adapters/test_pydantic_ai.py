"""PydanticAI adapter: real servers, real ``stalwart worker`` processes, real SIGKILLs.

The agents live in ``tests.adapters.pydantic_apps``; their scripted models log every real
call and their tools count every execution in Redis, outside the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest

pytest.importorskip("pydantic_ai")

import redis.asyncio as aioredis
from pydantic_ai import Agent, models
from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, ToolCallPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.models.test import TestModel
from pydantic_ai.run import AgentRunResult
from pydantic_ai.usage import UsageLimits

from stalwart import App, Client, Policies, RetryPolicy, RunEvent, RunFailed, Settings
from stalwart.adapters.pydantic_ai import DurableAgentRunner, StalwartDurability
from stalwart.adapters.pydantic_ai._codec import conversation
from stalwart.adapters.pydantic_ai._request import (
    OutputNotSerializable,
    decode_request,
    run_options,
)
from stalwart.adapters.pydantic_ai._request import result_data as runner_result_data
from stalwart.checkpoints import StepAttempt, StepDone
from stalwart.kit import shape_changes
from stalwart.testing import StalwartProcess
from tests.adapters.pydantic_apps import (
    PLAIN_EXECUTIONS,
    Resolution,
    Scenario,
    errors_agent,
    memo_agent,
    support_agent,
)
from tests.conftest import Servers, worker_pool
from tests.helpers import eventually, execs, journal, model_log, open_gate, owners, rid

# Real model requests stay blocked here; only the loopback OpenAI test's worker allows them.
models.ALLOW_MODEL_REQUESTS = False

APP = "tests.adapters.pydantic_apps:app"

WorkerFactory = Callable[..., Awaitable[StalwartProcess]]


@pytest.fixture
async def pyd_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``APP``."""
    async with worker_pool(APP, settings, servers, client) as start:
        yield start


def replace_output(result: AgentRunResult[Any], output: Any) -> AgentRunResult[Any]:
    return dataclasses.replace(result, output=output)


def request(run_id: str, prompt: str = "refund my last order", **scenario: Any) -> dict[str, Any]:
    return {"prompt": prompt, "deps": asdict(Scenario(run_id=run_id, **scenario))}


async def steps(client: Client, run_id: str, kind: str) -> list[StepDone]:
    return [
        je.entry
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone) and je.entry.kind == kind
    ]


async def collect(handle: Any, into: list[RunEvent]) -> None:
    async for ev in handle.events():
        into.append(ev)


# -- pure parts, no servers --------------------------------------------------------------------


def test_conversation_fingerprint_ignores_timestamps_and_ids_but_not_content() -> None:
    def messages(call_id: str, when: str, args: dict[str, Any]) -> list[Any]:
        return [
            ModelRequest.user_text_prompt("hi"),
            ModelResponse(
                parts=[ToolCallPart("lookup", args, tool_call_id=call_id)],
                provider_response_id=f"resp-{call_id}",
                timestamp=datetime.fromisoformat(when),
            ),
        ]

    a = conversation(messages("c1", "2026-01-01T00:00:00+00:00", {"id": 1}))
    b = conversation(messages("c2", "2026-02-02T00:00:00+00:00", {"id": 1}))
    c = conversation(messages("c1", "2026-01-01T00:00:00+00:00", {"id": 2}))
    assert a == b  # volatile fields gone
    assert a != c  # an argument named `id` inside the tool's args is content, kept
    assert "timestamp" not in json.dumps(a) and "c1" not in json.dumps(a)


def test_shape_difference_names_what_changed() -> None:
    base = {
        "model": "m",
        "tools": {"lookup_customer": "1", "get_orders": "2"},
        "output": {"final_result": "3"},
        "output_mode": "tool",
        "output_object": "",
        "text_output": False,
        "instructions": "",
    }
    assert shape_changes(base, dict(base)) == []
    renamed = {**base, "tools": {"find_customer": "1", "get_orders": "2"}}
    diff = "; ".join(shape_changes(base, renamed))
    assert "lookup_customer" in diff and "find_customer" in diff and "renamed" in diff
    changed = shape_changes(base, {**base, "tools": {"lookup_customer": "9", "get_orders": "2"}})
    assert changed == ["the tools: lookup_customer take other parameters now"]
    assert shape_changes(base, {**base, "output": {"final_result": "4"}}) == [
        "the output type: final_result take other parameters now"
    ]


async def test_outside_a_run_the_capability_is_transparent() -> None:
    # No Stalwart run around it: plain pydantic-ai behaviour, not streamed, nothing journaled.
    def answer(messages: list[Any], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart("plain")])

    agent = Agent(FunctionModel(answer), name="plain", capabilities=[StalwartDurability()])
    assert (await agent.run("hi")).output == "plain"
    tested = Agent(TestModel(), name="tested", capabilities=[StalwartDurability()])
    assert (await tested.run("hi")).output == "success (no tool calls)"


# -- crash tests with worker processes -----------------------------------------------------------


@pytest.mark.slow
async def test_sigkill_after_third_tool_resumes_without_repeating_calls(
    client: Client, pyd_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await pyd_workers("a")

    # The runner API, uninterrupted: the reference result, converted to the output type.
    runner = DurableAgentRunner("support", support_agent, app=App("client-side"), client=client)
    ref_id = rid()
    reference = await runner.run(
        "refund my last order", run_id=ref_id, deps=Scenario(run_id=ref_id), timeout=30
    )
    expected = reference.output
    assert isinstance(expected, Resolution)
    assert expected.orders == ["c-42-o1", "c-42-o2"] and expected.open_tickets == 2

    run_id = rid()
    handle = await client.submit("support", request(run_id, pause_before_model=3), run_id=run_id)
    events: list[RunEvent] = []
    follower = asyncio.create_task(collect(handle, events))  # follows live across the crash

    async def three_tools() -> bool:
        # Journaled, and their live events out too: the run is then held before model call
        # 3 (the journal entry alone can be seen before the tool's `tool.result` is sent).
        results = sum(1 for ev in events if ev.type == "tool.result")
        return results >= 3 and len(await steps(client, run_id, "tool")) >= 3

    await eventually(three_tools, timeout=30)
    a.kill()  # held before model call 3: nothing is in flight
    await open_gate(counters, run_id, "pause_before_model")
    await pyd_workers("b")

    result = await handle.result(timeout=60)
    assert runner.output(result) == expected
    await asyncio.wait_for(follower, timeout=10)

    # Nothing completed ran twice: the scripted model's log and every tool's counter.
    assert await model_log(counters, run_id) == ["support:1", "support:2", "support:3"]
    entries = await journal(client, run_id)
    done = [je.entry for je in entries if isinstance(je.entry, StepDone)]
    model_keys = [e.key for e in done if e.kind == "model"]
    tool_steps = [e for e in done if e.kind == "tool"]
    assert model_keys == ["model:1", "model:2", "model:3"]
    assert [e.name for e in tool_steps][:1] == ["lookup_customer"]
    assert sorted(e.name for e in tool_steps) == sorted(
        ["lookup_customer", "get_orders", "get_tickets", "refund", "notify"]
    )
    for e in tool_steps:
        assert e.key.startswith("tool:")
        assert await execs(counters, run_id, e.key) == 1, f"{e.name} ran again"
    assert owners(entries) == ["a", "b"]
    assert [e.worker for e in done] == ["a"] * 5 + ["b"] * 3
    assert all(e.model == "scripted" for e in done if e.kind == "model")

    # The follower saw every model and tool event once, and the resume.
    resumed = [ev for ev in events if ev.type == "run.resumed"]
    assert len(resumed) == 1 and resumed[0].worker == "b"
    for key in model_keys:
        of_step = [ev.type for ev in events if ev.step == key]
        assert of_step.count("model.response") == 1, (key, of_step)
        assert of_step.count("step.completed") == 1
        assert "model.part_start" in of_step and "model.delta" in of_step
    for e in tool_steps:
        of_step = [ev.type for ev in events if ev.step == e.key]
        assert of_step.count("tool.call") == 1 and of_step.count("tool.result") == 1, of_step
        assert of_step.count("step.completed") == 1
    assert events[-1].type == "run.completed"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pause", "journaled", "delegations"),
    [
        # Between the specialist's steps, inside the tool that delegated to it: the tool
        # was in flight, so it runs again (at-least-once) and the specialist replays in it.
        ("pause_specialist", "search_kb", 2),
        # After the delegating tool was journaled: nothing of the delegation runs again.
        ("pause_before_model", "ask_specialist", 1),
    ],
    ids=["inside-delegation", "after-delegation"],
)
async def test_delegation_survives_a_crash(
    client: Client,
    pyd_workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    pause: str,
    journaled: str,
    delegations: int,
) -> None:
    a = await pyd_workers("a")
    ref_id = rid()
    reference = await client.submit("triage", request(ref_id, "refund?"), run_id=ref_id)
    reference_data = await reference.result(timeout=30)  # AgentRunResult's serialized shape
    expected = reference_data["output"]
    assert expected == {"category": "billing", "answer": "policy says: refunds within 30 days"}
    # The specialist runs with usage=ctx.usage: its requests count in the outer run's usage.
    assert reference_data["usage"]["requests"] == 4

    run_id = rid()
    handle = await client.submit("triage", request(run_id, "refund?", **{pause: 2}), run_id=run_id)

    async def reached() -> bool:
        return any(e.name == journaled for e in await steps(client, run_id, "tool"))

    await eventually(reached, timeout=30)
    a.kill()
    await open_gate(counters, run_id, pause)
    await pyd_workers("b")

    data = await handle.result(timeout=60)
    assert data["output"] == expected
    assert data["usage"] == reference_data["usage"]  # replayed delegation: its usage too
    assert await model_log(counters, run_id) == [
        "triage:1",
        "specialist:1",
        "specialist:2",
        "triage:2",
    ]
    entries = await journal(client, run_id)
    assert owners(entries) == ["a", "b"]
    done = [je.entry for je in entries if isinstance(je.entry, StepDone)]
    outer = next(e for e in done if e.name == "ask_specialist")
    assert [e.key for e in done if e.key.startswith(outer.key + "/")] == [
        f"{outer.key}/specialist/model:1",
        next(e.key for e in done if e.name == "search_kb"),
        f"{outer.key}/specialist/model:2",
    ]
    search = next(e for e in done if e.name == "search_kb")
    assert await execs(counters, run_id, search.key) == 1  # journaled before the crash
    assert await execs(counters, run_id, outer.key) == delegations


@pytest.mark.slow
async def test_tool_renamed_between_crash_and_resume_is_nondeterminism(
    client: Client, pyd_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await pyd_workers("a")
    run_id = rid()
    handle = await client.submit("support", request(run_id, pause_before_model=2), run_id=run_id)

    async def first_tool() -> bool:
        return len(await steps(client, run_id, "tool")) >= 1

    await eventually(first_tool, timeout=30)
    a.kill()
    await open_gate(counters, run_id, "pause_before_model")
    await pyd_workers("b", PYD_TOOL_RENAMED="1")  # the agent changed: lookup_customer renamed

    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.error_type == "NonDeterminismError"
    message = failed.value.message
    assert "'model:1'" in message
    assert "lookup_customer" in message and "find_customer" in message
    assert await model_log(counters, run_id) == ["support:1"]  # nothing ran live after


@pytest.mark.slow
async def test_runner_sends_history_and_deps_that_the_worker_rebuilds(
    client: Client, pyd_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("memo", memo_agent, app=App("client-side"), client=client)
    run_id = rid()
    history = [ModelRequest.user_text_prompt("earlier"), ModelResponse(parts=[TextPart("hi")])]
    result = await runner.run(
        "who are you?",
        run_id=run_id,
        deps=Scenario(run_id=run_id, customer="c-7"),
        message_history=history,
        timeout=30,
    )
    # 2 earlier messages + prompt, tool call, tool return; deps rebuilt by the worker's factory.
    assert result.output == "5 messages, I am C-7"
    assert await model_log(counters, run_id) == ["memo:2", "memo:3"]


@pytest.mark.slow
async def test_a_tools_error_does_what_pydantic_ai_does_plainly(
    client: Client, pyd_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await pyd_workers("a")
    runner = DurableAgentRunner("errors", errors_agent, app=App("client-side"), client=client)

    async def executions(run_id: str) -> dict[str, int]:
        keys = await counters.keys(f"exec:{run_id}:*")
        return {k.decode().rsplit(":", 1)[1]: int(await counters.get(k)) for k in keys}

    # A plain exception fails the run once (no retries); ModelRetry is PydanticAI's: sent back
    # to the model up to the tool's max_retries, then UnexpectedModelBehavior; an argument
    # validator's exception fails the run once too.
    for tool, ran in [
        ("explode", "explode"),
        ("always_retry", "always_retry"),
        ("validated", "reject"),
    ]:
        PLAIN_EXECUTIONS.clear()
        with pytest.raises(Exception) as plain:
            await errors_agent.run(f"call {tool}")
        run_id = rid()
        with pytest.raises(RunFailed) as durable:
            await runner.run(f"call {tool}", run_id=run_id, timeout=30)
        assert durable.value.error_type == type(plain.value).__name__, tool
        assert durable.value.message == str(plain.value), tool
        assert await executions(run_id) == PLAIN_EXECUTIONS == {ran: 3 if "retry" in tool else 1}

    # A result that cannot be journaled (nor sent to a model) says which tool, what type and
    # what to return instead; it is not retried.
    run_id = rid()
    with pytest.raises(RunFailed) as failed:
        await runner.run("call open_socket", run_id=run_id, timeout=30)
    assert failed.value.error_type == "ToolResultNotSerializable"
    for said in ("tool 'open_socket'", "socket.socket", "return plain data"):
        assert said in failed.value.message
    assert await executions(run_id) == {"open_socket": 1}


def test_per_run_inputs_that_cannot_travel_say_what_to_pass() -> None:
    class Connection:
        pass

    runner = DurableAgentRunner("memo", memo_agent, app=App("client-side"))
    with pytest.raises(TypeError, match=r"deps\.customer is a .*Connection.*with a factory"):
        runner.request("hi", deps=Scenario(run_id="r", customer=Connection()))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"toolsets: add them to the agent"):
        runner.request("hi", toolsets=[])
    assert runner.request("hi") == "hi"  # a prompt alone travels as it is


async def test_an_output_that_cannot_travel_back_says_so() -> None:
    def opened(x: int) -> object:
        return socket.socket()

    result = await Agent(TestModel(), output_type=opened).run("x")
    with pytest.raises(OutputNotSerializable, match=r"socket\.socket.*output_type of plain"):
        runner_result_data(result)
    result.output.close()


def test_per_run_options_arrive_in_the_worker_as_agent_run_takes_them() -> None:
    limits = UsageLimits(request_limit=3, total_tokens_limit=100, cost_limit=Decimal("0.5"))
    history = [ModelRequest.user_text_prompt("earlier"), ModelResponse(parts=[TextPart("hi")])]
    sent = DurableAgentRunner("memo", memo_agent, app=App("client-side")).request(
        "hi",
        usage_limits=limits,
        model_settings={"temperature": 0.2},
        metadata={"tenant": "t1"},
        message_history=history,
    )
    wire = msgspec.msgpack.decode(msgspec.msgpack.encode(sent))
    request = decode_request(wire)
    options = run_options(request, UsageLimits())
    assert request.prompt == "hi"
    assert options["usage_limits"] == limits
    assert options["model_settings"] == {"temperature": 0.2}
    assert options["metadata"] == {"tenant": "t1"}
    assert options["message_history"] == history
    assert run_options(decode_request("hi"), limits)["usage_limits"] is limits


def test_operations_pydantic_ai_does_not_retry_take_the_tool_policy_unless_set() -> None:
    app = App("client-side")
    DurableAgentRunner("memo", memo_agent, app=app)
    retry = app.get("memo").policies.retry
    assert retry["validate"] == retry["discovery"] == retry["capability"] == retry["tool"]
    assert retry["tool"].max_attempts == 1 and retry["model"].max_attempts > 1
    four, two = RetryPolicy(max_attempts=4), RetryPolicy(max_attempts=2)
    DurableAgentRunner(
        "memo2", memo_agent, app=app, policies=Policies(retry={"tool": four, "discovery": two})
    )
    retry = app.get("memo2").policies.retry
    assert (retry["validate"], retry["discovery"]) == (four, two)


async def test_the_result_is_pydantic_ais_own_and_continues_a_conversation() -> None:
    def answer(messages: list[Any], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=[TextPart(f"{len(messages)} messages")])

    agent = Agent(FunctionModel(answer), name="counter", output_type=str)
    runner = DurableAgentRunner("counter", agent, app=App("client-side"))
    first = await agent.run("one")
    # What a worker returns, and what the client rebuilds from it after the msgpack trip.
    data = msgspec.msgpack.decode(msgspec.msgpack.encode(runner_result_data(first)))
    rebuilt = runner.decode_result(data)
    assert rebuilt.output == first.output and rebuilt.usage == first.usage
    assert rebuilt.all_messages() == first.all_messages()
    assert rebuilt.new_messages() == first.new_messages()
    assert rebuilt.all_messages_json() == first.all_messages_json()
    second = await agent.run("two", message_history=rebuilt.all_messages())
    assert second.output == "3 messages"
    # Structured outputs come back as the agent's output type.
    triage = DurableAgentRunner("t", support_agent, app=App("client-side"))
    made = Resolution(customer="c", orders=["o"], open_tickets=1, summary="s")
    typed = triage.decode_result(runner_result_data(replace_output(first, made)))
    assert typed.output == made and isinstance(typed.output, Resolution)
    assert triage.output(runner_result_data(replace_output(first, made))) == made


# -- the real OpenAI client against a loopback server ------------------------------------------


class FakeOpenAI:
    """An OpenAI-compatible chat endpoint: 429, then 500, then a (streamed) completion."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = json.loads(await reader.readexactly(length)) if length else {}
            self.requests.append(body)
            n = len(self.requests)
            if n == 1:
                writer.write(_http(429, {"error": {"message": "slow down"}}))
            elif n == 2:
                writer.write(_http(500, {"error": {"message": "boom"}}))
            elif body.get("stream"):
                writer.write(_sse(body.get("model", "gpt-4o-mini")))
            else:
                writer.write(_http(200, _completion(body.get("model", "gpt-4o-mini"))))
            await writer.drain()
        finally:
            writer.close()


def _http(status: int, payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}[status]
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nretry-after-ms: 10\r\nConnection: close\r\n\r\n"
    ).encode() + body


def _completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the fake"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
    }


def _sse(model: str) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(data)}\n\n"

    usage = {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    body = (
        chunk({"role": "assistant", "content": "Hello "})
        + chunk({"content": "from the fake"})
        + chunk({}, "stop")
        + "data: "
        + json.dumps(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [],
                "usage": usage,
            }
        )
        + "\n\ndata: [DONE]\n\n"
    )
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    return head.encode() + body.encode()


@pytest.mark.slow
async def test_openai_model_retries_inside_one_journaled_step(
    client: Client, pyd_workers: WorkerFactory
) -> None:
    async with FakeOpenAI() as server:
        await pyd_workers("a", FAKE_OPENAI_URL=server.url, PYD_ALLOW_MODEL_REQUESTS="1")
        run_id = rid()
        handle = await client.submit("chat", "say hello", run_id=run_id)
        assert (await handle.result(timeout=60))["output"] == "Hello from the fake"
        events = [ev async for ev in handle.events(follow=False)]

    assert len(server.requests) == 3  # 429 and 500 retried by the OpenAI client itself
    assert server.requests[-1]["stream"] is True
    entries = await journal(client, run_id)
    models_done = [
        je.entry for je in entries if isinstance(je.entry, StepDone) and je.entry.kind == "model"
    ]
    assert len(models_done) == 1
    assert not any(isinstance(je.entry, StepAttempt) for je in entries)
    step = models_done[0]
    assert (step.key, step.model, step.input_tokens, step.output_tokens) == (
        "model:1",
        "gpt-4o-mini",
        12,
        4,
    )
    deltas = [
        ev.data["delta"] for ev in events if ev.type == "model.delta" and ev.step == "model:1"
    ]
    assert "".join(deltas) == "Hello from the fake", [ev.type for ev in events]
