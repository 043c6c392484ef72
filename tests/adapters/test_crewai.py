"""CrewAI adapter: real servers, real ``stalwart worker`` processes, real SIGKILLs.

The crews live in ``tests.adapters.crewai_apps``; their scripted models and their tools count
every real execution in Redis under its step key, outside the workers. CrewAI has its own
environment (it pins ``openai<3``): these tests are skipped where it is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import types
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from stalwart import Client, NonRetryableError, RunCancelled, RunFailed, Settings, StepFailed
from stalwart.approvals import ApprovalRequest, approval_payload
from stalwart.checkpoints import Started, StepDone, StepError
from stalwart.errors import DisallowedTypeError
from stalwart.kit import ApprovalPolicy, allow_map, args_hash
from tests.adapters.tampering import MARKER_ENV, MARKER_MODULE, tamper_step
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    done_keys,
    eventually,
    execs,
    journal,
    journaled,
    open_gate,
    owners,
    rid,
    step_owners,
)

APP = "tests.adapters.crewai_apps:app"
# Before CrewAI is imported, here and in the workers: no telemetry, no tracing.
QUIET = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
}
# Only where CrewAI is installed (its own environment): in the main environment this module
# is skipped, and must not switch OpenTelemetry off for every other test in the process.
if importlib.util.find_spec("crewai") is not None:
    os.environ.update(QUIET)

# CrewAI warns about its own deprecated fields from inside its own code: not ours to fix.
_CREWAI_NOISE = (
    "ignore::DeprecationWarning:crewai",
    "ignore:Cannot set an attribute on 'crewai:ImportWarning",
)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="crewai")
    warnings.filterwarnings("ignore", "Cannot set an attribute on 'crewai", ImportWarning)
    pytest.importorskip("crewai")
    from crewai import Agent, Crew, Task
    from crewai.tools import BaseTool
    from crewai.tools import tool as crewai_tool
    from openai.types.chat import ChatCompletionMessageToolCall

    from stalwart.adapters.crewai import (
        CrewResult,
        ScriptedLLM,
        ToolCallFailed,
        crew_result,
        install,
        text,
        tool_call,
        tool_results,
    )
    from stalwart.adapters.crewai._codec import (
        conversation,
        decode,
        encode,
        model_fp,
        returned_models,
    )
    from stalwart.adapters.crewai._threads import CrewRun, Frame
    from tests.adapters.crewai_apps import block_key, order_key

pytestmark = [pytest.mark.filterwarnings(f) for f in _CREWAI_NOISE]


@pytest.fixture
async def crew_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.adapters.crewai_apps:app``, telemetry off."""
    async with worker_pool(APP, settings, servers, client, **QUIET) as start:
        yield start


async def exec_counts(counters: aioredis.Redis, run_id: str) -> dict[str, int]:
    order = [k.decode() for k in await counters.lrange(order_key(run_id), 0, -1)]
    return {k: order.count(k) for k in order}


RESEARCH_KEYS = [
    "task:0/model:1",
    "task:0/tool:call_1a",
    "task:0/tool:call_1b",
    "task:0/tool:call_1c",
    "task:0/model:2",
    "task:0/tool:call_2a",
    "task:0/tool:call_2b",
    "task:0/model:3",
    "task:1/model:1",
]

DELEGATION_KEYS = [
    "task:0/model:1",
    "task:0/tool:call_m1/model:1",
    "task:0/tool:call_m1/tool:call_1a",
    "task:0/tool:call_m1/tool:call_1b",
    "task:0/tool:call_m1/tool:call_1c",
    "task:0/tool:call_m1/model:2",
    "task:0/tool:call_m1/tool:call_2a",
    "task:0/tool:call_m1/tool:call_2b",
    "task:0/tool:call_m1/model:3",
    "task:0/tool:call_m1",
    "task:0/model:2",
    "task:1/model:1",
    "task:1/tool:call_m1/model:1",
    "task:1/tool:call_m1",
    "task:1/model:2",
]

# Delegation tools run no code of their own that counts: their coworkers' calls do.
COUNTED = [k for k in DELEGATION_KEYS if not k.endswith("/tool:call_m1")]


# -- pure parts, no servers --------------------------------------------------------------------


def test_provider_tool_calls_and_models_round_trip_through_the_journal_codec() -> None:
    call = ChatCompletionMessageToolCall.model_validate(
        {"id": "call_9", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    )
    value = ["text", call, {"k": (1, 2)}, None]
    back = decode(encode(value))
    assert back == ["text", call, {"k": [1, 2]}, None]
    assert type(back[1]) is ChatCompletionMessageToolCall
    with pytest.raises(TypeError, match="cannot be journaled"):
        encode(object())


def test_model_fingerprint_ignores_volatile_call_ids_but_not_content() -> None:
    def messages(call_id: str, result: str) -> list[dict[str, Any]]:
        return [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [tool_call("s", {}, call_id)]},
            {"role": "tool", "tool_call_id": call_id, "name": "s", "content": result},
        ]

    assert conversation(messages("call_140234", "r"))[2]["tool_call_id"] == "#1"
    fp = model_fp("m", messages("call_1", "r"), None, None)
    assert model_fp("m", messages("call_140234", "r"), None, None) == fp
    assert model_fp("m", messages("call_1", "other"), None, None) != fp
    assert model_fp("other", messages("call_1", "r"), None, None) != fp


def test_frame_keys_repeat_with_suffixes() -> None:
    frame = Frame("task:0/")
    assert [frame.key("tool:x"), frame.key("tool:x"), frame.key("tool:y")] == [
        "task:0/tool:x",
        "task:0/tool:x#2",
        "task:0/tool:y",
    ]


class MemoryContext:
    """What ``CrewRun`` uses of a ``RunContext``, over a journal in memory: in-process tests."""

    def __init__(self, journal: dict[str, tuple[str, Any]]) -> None:
        self.journal = journal
        self.live: list[str] = []
        self.events: list[tuple[str, Any]] = []
        self.answers: list[Any] = []
        """What a human answers, in order (signals)."""
        self.queued: dict[str, list[Any]] = {}
        """What arrives on each signal, in order (for ``receive_signal``)."""
        self._counts: dict[str, int] = {}

    async def call(self, spec: Any, run: Callable[[], Awaitable[Any]]) -> Any:
        if spec.key not in self.journal:
            try:
                value = msgspec.msgpack.decode(msgspec.msgpack.encode(await run()))
            except Exception as exc:  # journaled as the step's error, as the engine does
                value = StepFailed(spec.key, type(exc).__name__, str(exc))
            self.journal[spec.key] = (spec.fp, value)
            self.live.append(spec.key)
        fp, value = self.journal[spec.key]
        assert fp == spec.fp, f"{spec.key} asked with another request"
        if isinstance(value, StepFailed):
            raise value
        return value

    async def emit(self, type: str, data: Any = None, *, step: str = "") -> None:
        self.events.append((type, data))

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        key = f"signal:{name}"
        if key not in self.journal:
            self.journal[key] = ("", self.answers.pop(0))
            self.live.append(key)
        return self.journal[key][1]

    def next_key(self, base: str) -> str:
        self._counts[base] = n = self._counts.get(base, 0) + 1
        return base if n == 1 else f"{base}#{n}"

    async def receive_signal(self, name: str, *, timeout: float | None = None) -> Any:
        key = self.next_key(f"signal:{name}")
        if key not in self.journal:
            self.journal[key] = ("", self.queued[name].pop(0))
            self.live.append(key)
        return types.SimpleNamespace(payload=self.journal[key][1], id=None)


async def kickoff(build: Callable[[], Crew], journal: dict[str, tuple[str, Any]]) -> Any:
    crew, ctx = build(), MemoryContext(journal)
    output = await CrewRun(ctx, asyncio.get_running_loop(), crew.tasks).drive(crew.kickoff)
    return crew_result(output), ctx.live


def _counting_script(calls: list[str]) -> Any:
    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        body = text(messages)
        if "summar" in body.lower() and not tools:
            calls.append("summary")
            return "<summary>earlier steps: additions</summary>"
        calls.append("model")
        done = tool_results(messages)
        if "add" in tools and len(done) < 3:
            return [tool_call("add", {"a": len(done), "b": 1}, f"call_{len(done)}")]
        return f"answered after {len(done)} results"

    return script


def _adding_crew(calls: list[str], *, window: int = 1_000_000, parallel: bool = False) -> Crew:
    @crewai_tool("add")
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        calls.append(f"add {a} {b}")
        return a + b

    agents = [
        Agent(
            role=f"Adder {i}",
            goal="add",
            backstory="b",
            llm=ScriptedLLM(_counting_script(calls), context_window=window),
            tools=[add],
        )
        for i in range(2 if parallel else 1)
    ]
    tasks = [
        Task(
            description=f"Add {'y' * 2000}",
            expected_output="sum",
            agent=a,
            async_execution=parallel,
        )
        for a in agents
    ]
    if parallel:
        tasks.append(
            Task(description="Sum up", expected_output="sum", agent=agents[0], context=tasks)
        )
    return Crew(agents=agents, tasks=tasks)


async def test_async_tasks_run_concurrently_with_keys_of_their_own_and_replay() -> None:
    install()
    journal: dict[str, tuple[str, Any]] = {}
    calls: list[str] = []
    first, live = await kickoff(lambda: _adding_crew(calls, parallel=True), journal)
    assert {k.split("/")[0] for k in live} == {"task:0", "task:1", "task:2"}
    assert [k for k in live if k.startswith("task:1/")] == [
        "task:1/model:1",
        "task:1/tool:call_0",
        "task:1/model:2",
        "task:1/tool:call_1",
        "task:1/model:3",
        "task:1/tool:call_2",
        "task:1/model:4",
    ]
    calls.clear()
    again, live = await kickoff(lambda: _adding_crew(calls, parallel=True), journal)
    assert (again, live, calls) == (first, [], [])


async def test_context_summaries_are_concurrent_acalls_journaled_in_start_order() -> None:
    install()
    journal: dict[str, tuple[str, Any]] = {}
    calls: list[str] = []
    first, live = await kickoff(lambda: _adding_crew(calls, window=400), journal)
    summaries = calls.count("summary")
    assert summaries >= 3  # CrewAI summarized the conversation in concurrent chunks
    assert live[:3] == ["task:0/model:1", "task:0/tool:call_0", "task:0/model:2"]
    # A crash after the second summary: the rest runs live, the result is the same.
    for key in live[live.index("task:0/model:3") + 1 :]:
        del journal[key]
    calls.clear()
    again, live = await kickoff(lambda: _adding_crew(calls, window=400), journal)
    assert again == first
    assert live[0] == "task:0/model:4" and calls.count("summary") == summaries - 2


def test_model_and_tool_classes_defined_after_install_are_wrapped_too() -> None:
    install()

    class LateModel(ScriptedLLM):
        def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
            return "late"

    class LateTool(BaseTool):
        name: str = "late"
        description: str = "A tool defined after install()."

        def _run(self, x: int) -> int:
            return x

    assert getattr(LateModel.call, "__stalwart_crewai__", False)
    assert getattr(LateTool._run, "__stalwart_crewai__", False)
    assert LateModel(lambda m, t: "").call("hi") == "late" and LateTool().run(x=3) == 3


def test_wrappers_are_inert_outside_a_durable_run() -> None:
    install()
    install()  # idempotent
    llm = ScriptedLLM(lambda messages, tools: "plain answer")
    agent = Agent(role="Solo", goal="g", backstory="b", llm=llm)
    crew = Crew(agents=[agent], tasks=[Task(description="d", expected_output="o", agent=agent)])
    assert crew.kickoff().raw == "plain answer"


# -- with servers and worker processes ---------------------------------------------------------


async def test_crew_run_journals_every_call_once_under_its_task(
    client: Client, crew_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await crew_workers("a")
    run_id = rid()
    handle = await client.submit("research", {"topic": "ev"}, run_id=run_id)
    result = msgspec.convert(await handle.result(timeout=60), CrewResult)

    assert result.raw.startswith("REPORT on ev: 5 findings; results for ev pricing")
    assert [t.agent for t in result.tasks] == ["Researcher", "Writer"]
    keys = await done_keys(client, run_id)
    assert sorted(keys) == sorted(RESEARCH_KEYS)
    assert await exec_counts(counters, run_id) == dict.fromkeys(RESEARCH_KEYS, 1)
    # Parallel calls are journaled by call id: their results reached the model in call order.
    assert "results for ev pricing | results for ev competitors" in result.raw
    # Token usage is journaled with each model call and is the run's own (copied LLMs).
    models = [
        je.entry
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone) and je.entry.kind == "model"
    ]
    assert {m.model for m in models} == {"researcher-model", "writer-model"}
    assert all(m.input_tokens > 0 and m.output_tokens > 0 for m in models)
    tokens = sum(m.input_tokens + m.output_tokens for m in models)
    assert result.token_usage["total_tokens"] == tokens
    assert result.token_usage["successful_requests"] == len(models)


async def test_sigkill_during_a_parallel_tool_batch_resumes_without_repeating_calls(
    client: Client, crew_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await crew_workers("a")
    run_id = rid()
    in_flight = "task:0/tool:call_2a"
    await counters.set(block_key(run_id), in_flight)
    handle = await client.submit("research", {"topic": "solar"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, in_flight), timeout=60)
    # Its sibling in the same parallel batch completes while call_2a is held.
    await eventually(lambda: journaled(client, run_id, "task:0/tool:call_2b"), timeout=30)
    a.kill()
    await open_gate(counters, run_id, "in")
    await crew_workers("b")
    result = await handle.result(timeout=60)

    counts = await exec_counts(counters, run_id)
    assert counts.pop(in_flight) == 2  # at-least-once: it was running when the worker died
    assert counts == {k: 1 for k in RESEARCH_KEYS if k != in_flight}
    assert sorted(await done_keys(client, run_id)) == sorted(RESEARCH_KEYS)
    assert owners(await journal(client, run_id)) == ["a", "b"]

    # The same crew, uninterrupted, ends with the same result (token usage included: the
    # replayed model calls count their journaled usage again).
    uninterrupted = await client.submit("research", {"topic": "solar"})
    assert result == await uninterrupted.result(timeout=60)


async def test_hierarchical_crew_dies_inside_a_delegation_and_resumes_there(
    client: Client, crew_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await crew_workers("a")
    run_id = rid()
    # Task 1's manager has delegated to the Writer; the Writer's model call is held.
    held = "task:1/tool:call_m1/model:1"
    await counters.set(block_key(run_id), held)
    handle = await client.submit("delegation", {"topic": "wind"}, run_id=run_id)
    await eventually(lambda: journaled(client, run_id, "task:1/model:1"), timeout=60)
    before = await exec_counts(counters, run_id)
    assert set(before) == set(COUNTED[: COUNTED.index(held)])
    a.kill()
    await open_gate(counters, run_id, "in")
    await crew_workers("b")
    result = msgspec.convert(await handle.result(timeout=60), CrewResult)

    assert result.raw.startswith("MANAGER: REPORT on wind: 5 findings")
    assert [t.raw.split(":")[0] for t in result.tasks] == ["MANAGER", "MANAGER"]
    # Nothing ran twice: the held call had not started, everything before it replayed.
    assert await exec_counts(counters, run_id) == dict.fromkeys(COUNTED, 1)
    assert sorted(await done_keys(client, run_id)) == sorted(DELEGATION_KEYS)
    entries = await journal(client, run_id)
    assert owners(entries) == ["a", "b"]
    resumed_at = next(
        i
        for i, je in enumerate(entries)
        if isinstance(je.entry, Started) and je.entry.worker == "b"
    )
    assert [je.entry.key for je in entries[resumed_at:] if isinstance(je.entry, StepDone)] == [
        "task:1/tool:call_m1/model:1",
        "task:1/tool:call_m1",
        "task:1/model:2",
    ]


async def test_text_tool_calling_agent_keys_calls_by_tool_and_arguments(
    client: Client, crew_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await crew_workers("a")
    run_id = rid()
    handle = await client.submit("react", "Look up TOPIC=tidal", run_id=run_id)
    result = await handle.result(timeout=60)

    assert result["raw"] == "results for tidal pricing + results for tidal outlook"
    keys = await done_keys(client, run_id)
    assert keys[0] == "model:1" and keys[-1] == "model:3"
    tools = [k for k in keys if k.startswith("tool:")]
    assert len(tools) == 2 and all(k.startswith("tool:search:") for k in tools)
    assert set((await exec_counts(counters, run_id)).values()) == {1}


async def test_a_budget_stops_the_crew_even_though_crewai_retries_failed_tasks(
    client: Client, crew_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await crew_workers("a")
    run_id = rid()
    handle = await client.submit("research_budget", {"topic": "hydro"}, run_id=run_id)
    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.error_type == "BudgetExceeded"
    models = [k for k in await done_keys(client, run_id) if "model" in k]
    assert models == ["task:0/model:1", "task:0/model:2"]


async def test_a_token_budget_sees_the_tokens_crewais_model_calls_used(
    client: Client, crew_workers: WorkerFactory
) -> None:
    await crew_workers("a")
    run_id = rid()
    handle = await client.submit("research_tokens", {"topic": "hydro"}, run_id=run_id)
    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=60)
    assert failed.value.error_type == "BudgetExceeded" and "max_tokens" in failed.value.message
    assert [k for k in await done_keys(client, run_id) if "model" in k] == ["task:0/model:1"]


async def test_sigterm_drains_the_crew_at_its_next_call_and_another_worker_resumes_it(
    client: Client, crew_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    # No supervisor: only the draining worker's own resume request can move the run.
    a = await crew_workers("a")
    run_id = rid()
    held = "task:0/tool:call_2a"
    await counters.set(block_key(run_id), held)
    handle = await client.submit("research", {"topic": "tidal"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, held), timeout=60)
    a.proc.terminate()  # SIGTERM: the held tool finishes, the next model call hands over
    await open_gate(counters, run_id, "in")
    assert await asyncio.to_thread(a.proc.wait, 20) == 0
    await crew_workers("b")
    result = msgspec.convert(await handle.result(timeout=60), CrewResult)

    assert result.raw.startswith("REPORT on tidal: 5 findings")
    assert await exec_counts(counters, run_id) == dict.fromkeys(RESEARCH_KEYS, 1)
    entries = await journal(client, run_id)
    assert owners(entries) == ["a", "b"]
    by_worker = step_owners(entries)
    assert by_worker[held] == "a" and by_worker["task:0/model:3"] == "b"


async def test_cancel_stops_the_crew_at_its_next_call(
    client: Client, crew_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await crew_workers("a")
    run_id = rid()
    held = "task:0/tool:call_2a"
    await counters.set(block_key(run_id), held)
    handle = await client.submit("research", {"topic": "geo"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, held), timeout=60)
    assert await handle.cancel("enough") == "requested"
    await open_gate(counters, run_id, "in")
    with pytest.raises(RunCancelled):
        await handle.result(timeout=30)
    keys = await done_keys(client, run_id)
    assert held in keys and "task:0/model:3" not in keys
    assert (await handle.status()).status == "cancelled"


async def test_a_failed_tool_is_journaled_and_replayed_as_the_same_error(
    client: Client, crew_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await crew_workers("a")
    run_id = rid()
    held = "task:0/model:2"  # the model call that reads the tool's error
    await counters.set(block_key(run_id), held)
    handle = await client.submit("fragile", {"topic": "x"}, run_id=run_id)
    await eventually(lambda: _failed(client, run_id, "task:0/tool:call_x"), timeout=60)
    a.kill()
    await open_gate(counters, run_id, "in")
    await crew_workers("b")
    result = msgspec.convert(await handle.result(timeout=60), CrewResult)

    # What the model read, live on A and replayed on B: the tool's own message.
    assert result.raw == "GOT: Error executing tool: backend down for x"
    assert await exec_counts(counters, run_id) == {
        "task:0/model:1": 1,
        "task:0/tool:call_x": 2,  # two attempts (its retry policy), never a third
        "task:0/model:2": 1,
    }
    errors = [je.entry for je in await journal(client, run_id) if isinstance(je.entry, StepError)]
    assert [(e.key, e.error.type, e.attempt) for e in errors] == [
        ("task:0/tool:call_x", "ConnectionError", 2)
    ]


async def _failed(client: Client, run_id: str, key: str) -> bool:
    return any(
        isinstance(je.entry, StepError) and je.entry.key == key
        for je in await journal(client, run_id)
    )


def test_a_failed_tool_reads_as_its_own_message() -> None:
    exc = ToolCallFailed("task:0/tool:call_x", "ConnectionError", "backend down")
    assert str(exc) == "backend down" and isinstance(exc, StepFailed)


def test_exports() -> None:
    import stalwart.adapters.crewai as adapter

    assert adapter.__all__ == [
        "AgentResult",
        "CrewResult",
        "DurableAgentRunner",
        "DurableCrewRunner",
        "DurableCrewStreamingOutput",
        "DurableStreamChunk",
        "ScriptedLLM",
        "TaskResult",
        "ToolCallFailed",
        "crew_result",
        "install",
        "text",
        "tool_call",
        "tool_results",
    ]


async def test_an_at_most_once_tool_in_flight_at_the_crash_fails_the_run_instead_of_repeating(
    client: Client, crew_workers: WorkerFactory, supervisor, counters: aioredis.Redis
) -> None:
    a = await crew_workers("a")
    run_id = rid()
    held = "task:0/tool:call_pay"
    await counters.set(block_key(run_id), held)
    handle = await client.submit("payment", {"topic": "order-7"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, held), timeout=60)
    a.kill()
    await crew_workers("b")
    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=60)
    # CrewAI would have shown the model an error and let it charge again: the run stops.
    assert failed.value.error_type == "ToolOutcomeUnknown"
    assert await execs(counters, run_id, held) == 1
    assert "task:0/model:2" not in await exec_counts(counters, run_id)


@pytest.mark.slow
async def test_a_bound_tool_hook_approval_survives_a_crash_and_refuses_a_free_text_answer(
    client: Client, crew_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await crew_workers("a")
    handle = await client.submit("bound-refund", {"order": "7"})
    [request] = await eventually(handle.pending_approvals, timeout=60)
    assert request.call_id == "task:0/approval:call_refund"
    assert request.signal == "human:task:0/approval:call_refund"
    assert (request.tool, request.arguments) == ("bound_refund", {"amount": 30})
    assert request.args_hash == args_hash({"amount": 30})

    await handle.signal(request.signal, "approve")  # what the unbound gate took

    async def refused() -> list[str]:
        return [
            ev.data["reason"]
            async for ev in handle.events(follow=False)
            if ev.type == "approval.refused"
        ]

    assert await eventually(refused, timeout=60) == ["malformed"]
    a.kill()  # waiting: b takes over the same bound request
    b = await crew_workers("b")
    await handle.approve(request.call_id, args_hash=request.args_hash)
    data = await handle.result(timeout=60)
    assert data["raw"] == "DONE: refunded 30", data
    assert await execs(counters, handle.run_id, "task:0/tool:call_refund") == 1
    del b


# -- deserialization safety: a journal entry never makes a worker import or build a type ------


class Report(BaseModel):
    """A model a tool returns: rebuilt only once it is on the allow-list."""

    title: str


@pytest.mark.parametrize(
    "path",
    [
        f"{MARKER_MODULE}:Evil",  # importing it would run its top-level code
        "antigravity:X",
        "os:system",
        "subprocess:Popen",
        "builtins:eval",
        "openai.types.chat:os",  # a module a trusted package imported, not a data type
        "openai.types.chat.chat_completion_message_tool_call:TypeAdapter",
        f"{__name__}:Report",  # a genuine model, but nobody allowed it
    ],
)
def test_a_journaled_value_naming_a_type_off_the_allow_list_is_refused(path: str) -> None:
    loaded = set(sys.modules)
    crafted = {"__pydantic__": path, "data": {"args": ["touch /tmp/pwned"], "x": 1}}
    with pytest.raises(DisallowedTypeError) as refused:
        decode(["text", crafted])
    assert refused.value.type_name == path
    assert "allowed_types=[YourModel]" in str(refused.value)
    assert isinstance(refused.value, NonRetryableError)
    assert set(sys.modules) - loaded == set()  # nothing was imported on the data's say-so


def test_allowed_types_and_the_expected_model_are_rebuilt() -> None:
    encoded = encode([Report(title="t")])
    assert decode(encoded, None, allow_map([Report])) == [Report(title="t")]
    assert decode(encoded, Report) == [Report(title="t")]  # the model the call expects


def test_models_that_tools_declare_they_return_are_allowed() -> None:
    @crewai_tool("report")
    def report(title: str) -> Report:
        """Write a report."""
        return Report(title=title)

    class Reports(BaseTool):
        name: str = "reports"
        description: str = "Many reports."

        def _run(self, n: int) -> list[Report] | None:
            return [Report(title=str(i)) for i in range(n)]

    assert returned_models([report]) == [Report]
    assert returned_models([Reports()]) == [Report]
    assert returned_models([]) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "crafted"),
    [
        ("task:0/tool:call_1a", {"__pydantic__": f"{MARKER_MODULE}:Evil", "data": {"x": 1}}),
        (
            "task:0/model:1",
            {"response": [{"__pydantic__": f"{MARKER_MODULE}:Evil", "data": {"x": 1}}]},
        ),
    ],
)
async def test_a_crafted_journal_entry_fails_the_resumed_run_without_importing_anything(
    client: Client, crew_workers: WorkerFactory, tmp_path: Any, step: str, crafted: Any
) -> None:
    marker = tmp_path / "imported"
    await crew_workers("a", **{MARKER_ENV: str(marker)})
    run_id = rid()
    handle = await client.submit("research", {"topic": "ev"}, run_id=run_id)
    await handle.result(timeout=60)
    # Someone who can write Redis replaces the step's journaled result; a worker replays it.
    await tamper_step(client, run_id, step, crafted)
    forked = await client.fork(run_id, at=step)
    with pytest.raises(RunFailed) as failed:
        await forked.result(timeout=60)

    assert failed.value.error_type == "DisallowedTypeError"
    assert f"{MARKER_MODULE}:Evil" in failed.value.message
    assert "allowed_types" in failed.value.message
    assert not marker.exists(), marker.read_text()


# -- per-run inputs, the result type, failed tools and human feedback (issue #13) ------------


class Verdict(BaseModel):
    """A task's output model: the rebuilt ``CrewOutput`` holds it as this class again."""

    ok: bool


def _judging_crew() -> Crew:
    llm = ScriptedLLM(lambda messages, tools: '{"ok": true}')
    agent = Agent(role="Judge", goal="judge", backstory="b", llm=llm)
    task = Task(
        description="Judge {what}",
        expected_output="a verdict",
        agent=agent,
        output_pydantic=Verdict,
    )
    return Crew(agents=[agent], tasks=[task])


def test_kickoff_inputs_travel_as_the_run_input_and_nothing_else_is_taken() -> None:
    from stalwart import App
    from stalwart.adapters.crewai import DurableCrewRunner

    runner = DurableCrewRunner("judge", _judging_crew, app=App("inputs"))
    assert runner.request(inputs={"what": "x"}) == {"what": "x"}
    assert runner.request({"what": "x"}) == {"what": "x"}  # the dict as the input, as before
    assert runner.request() is None
    with pytest.raises(TypeError, match="once"):
        runner.request({"what": "x"}, inputs={"what": "y"})
    with pytest.raises(TypeError, match="a dict"):
        runner.request(inputs=["x"])
    with pytest.raises(TypeError, match="session"):
        runner.request(inputs={"what": "x"}, session="s")


async def test_the_runner_returns_crewais_own_output_rebuilt_from_the_run_result() -> None:
    from stalwart import App
    from stalwart.adapters.crewai import DurableCrewRunner

    install()
    plain = await asyncio.to_thread(_judging_crew().kickoff)
    durable, _ = await kickoff(lambda: _judging_crew(), {})
    runner = DurableCrewRunner("judge", _judging_crew, app=App("results"))
    # What a worker returns (plain data on the wire), back as a CrewOutput.
    data = msgspec.msgpack.decode(msgspec.msgpack.encode(durable))
    output = runner.decode_result(data)
    assert type(output).__name__ == "CrewOutput" and output.pydantic == Verdict(ok=True)
    assert output.tasks_output[0].pydantic == Verdict(ok=True)
    assert output.token_usage == plain.token_usage and output.raw == plain.raw
    assert [(t.raw, t.agent, t.description) for t in output.tasks_output] == [
        (t.raw, t.agent, t.description) for t in plain.tasks_output
    ]
    # The result names the class; only the crew's own output models are built from it.
    forged = msgspec.to_builtins(durable)
    forged["pydantic_type"] = "os:system"
    with pytest.raises(DisallowedTypeError):
        runner.decode_result(forged)


def test_a_failed_tool_reaches_crewai_under_its_own_exception_name() -> None:
    from crewai.tools.tool_failure import failure_from_exception

    from stalwart.adapters.crewai._tools import tool_error

    error = tool_error(StepFailed("task:0/tool:c", "ConnectionError", "backend down"))
    assert isinstance(error, ToolCallFailed) and str(error) == "backend down"
    # What CrewAI records in TaskOutput.tool_failures, as for the tool's own exception.
    failure = failure_from_exception(error)
    assert (failure.message, failure.code) == ("backend down", "ConnectionError")
    silent = failure_from_exception(tool_error(StepFailed("k", "TimeoutError", "")))
    assert silent.message == "TimeoutError"
    assert type(tool_error(StepFailed("k", "not a name", "m"))).__name__ == "ToolCallFailed"


def _reviewed_crew(calls: list[str]) -> Crew:
    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        calls.append("model")
        return f"draft {sum('shorter' in str(m.get('content')) for m in messages) + 1}"

    agent = Agent(role="Drafter", goal="g", backstory="b", llm=ScriptedLLM(script))
    task = Task(description="Draft it", expected_output="a draft", agent=agent, human_input=True)
    return Crew(agents=[agent], tasks=[task])


async def test_human_feedback_is_a_durable_signal_and_a_replay_does_not_ask_again() -> None:
    install()
    calls: list[str] = []
    crew, journal = _reviewed_crew(calls), {}
    ctx = MemoryContext(journal)
    ctx.answers = ["make it shorter", ""]
    output = await CrewRun(ctx, asyncio.get_running_loop(), crew.tasks).drive(crew.kickoff)
    assert output.raw == "draft 2" and calls == ["model", "model"]
    asked = [data for kind, data in ctx.events if kind == "crew.human_input"]
    assert [(a["signal"], a["agent"], a["output"]) for a in asked] == [
        ("human:task:0/1", "Drafter", "draft 1"),
        ("human:task:0/2", "Drafter", "draft 2"),
    ]
    # A resumed run replays the answers from the journal: nobody is asked, nothing runs.
    calls.clear()
    crew, again = _reviewed_crew(calls), MemoryContext(journal)
    output = await CrewRun(again, asyncio.get_running_loop(), crew.tasks).drive(crew.kickoff)
    assert (output.raw, calls, again.live) == ("draft 2", [], [])


def _looking_up_crew(calls: list[str]) -> Crew:
    @crewai_tool("lookup")
    def lookup(key: str) -> str:
        """Look a key up."""
        calls.append(key)
        raise KeyError(f"no such key {key}")

    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        seen = [m for m in messages if m.get("role") != "system" and "no such key" in text([m])]
        if not seen:
            return 'Thought: look it up\nAction: lookup\nAction Input: {"key": "a"}'
        return "Thought: done\nFinal Answer: " + text(seen)[-120:]

    llm = ScriptedLLM(script, function_calling=False)
    agent = Agent(role="Reader", goal="g", backstory="b", llm=llm, tools=[lookup])
    return Crew(agents=[agent], tasks=[Task(description="d", expected_output="o", agent=agent)])


async def test_a_failing_tool_runs_as_often_as_crewai_runs_it_plainly_and_never_again() -> None:
    # CrewAI's text tool calling tries a raising tool again on its own (two calls per
    # attempt, three attempts): the durable run makes the same calls, each a step, with no
    # retries of Stalwart's, and a replay makes none.
    install()
    calls: list[str] = []
    plain = await asyncio.to_thread(_looking_up_crew(calls).kickoff)
    plainly = list(calls)
    calls.clear()
    journal: dict[str, tuple[str, Any]] = {}
    crew = _looking_up_crew(calls)
    durable = await CrewRun(MemoryContext(journal), asyncio.get_running_loop(), crew.tasks).drive(
        crew.kickoff
    )
    assert calls == plainly and len(plainly) > 1
    assert (durable.raw, durable.tasks_output[0].tool_failures[0].failure) == (
        plain.raw,
        plain.tasks_output[0].tool_failures[0].failure,
    )
    calls.clear()
    again, live = await kickoff(lambda: _looking_up_crew(calls), journal)
    assert (again.raw, calls, live) == (plain.raw, [], [])


def _strict_crew() -> Crew:
    @crewai_tool("lookup")
    def lookup(key: str) -> str:
        """Look a key up."""
        raise KeyError(f"no such key {key}")

    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        return "done" if tool_results(messages) else [tool_call("lookup", {"key": "a"}, "c1")]

    agent = Agent(
        role="Strict",
        goal="g",
        backstory="b",
        llm=ScriptedLLM(script),
        tools=[lookup],
        tool_failure_policy="raise",
    )
    return Crew(agents=[agent], tasks=[Task(description="d", expected_output="o", agent=agent)])


async def test_a_crew_that_raises_on_a_tool_failure_raises_the_same_error_live_and_replayed() -> (
    None
):
    from crewai.tools.tool_failure import ToolExecutionFailedError

    install()
    with pytest.raises(ToolExecutionFailedError) as plainly:
        await asyncio.to_thread(_strict_crew().kickoff)
    journal: dict[str, tuple[str, Any]] = {}
    for _ in range(2):  # live, then replayed from the journal
        with pytest.raises(ToolExecutionFailedError) as durably:
            await kickoff(_strict_crew, journal)
        assert str(durably.value) == str(plainly.value)
        assert str(plainly.value).endswith("'no such key a' (code: KeyError)")


def test_an_agent_runner_returns_crewais_lite_agent_output() -> None:
    from crewai.lite_agent_output import LiteAgentOutput

    from stalwart import App
    from stalwart.adapters.crewai import DurableAgentRunner
    from stalwart.adapters.crewai._results import agent_result

    runner = DurableAgentRunner(
        "judge", lambda: _judging_crew().agents[0], response_format=Verdict, app=App("lite")
    )
    usage = {"total_tokens": 3, "prompt_tokens": 2, "completion_tokens": 1}
    output = LiteAgentOutput(
        raw='{"ok": true}', pydantic=Verdict(ok=True), agent_role="Judge", usage_metrics=usage
    )
    data = msgspec.to_builtins(agent_result(output))
    back = runner.decode_result(data)
    assert isinstance(back, LiteAgentOutput)
    assert (back.raw, back.pydantic, back.agent_role, back.usage_metrics) == (
        '{"ok": true}',
        Verdict(ok=True),
        "Judge",
        usage,
    )


def _approving_crew(calls: list[str]) -> Crew:
    @crewai_tool("refund")
    def refund(amount: int) -> str:
        """Refund the customer."""
        calls.append(f"refund {amount}")
        return f"refunded {amount}"

    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        if not tool_results(messages):
            return [
                tool_call("refund", {"amount": 5}, "c1"),
                tool_call("refund", {"amount": 7}, "c2"),
            ]
        return " / ".join(tool_results(messages))

    agent = Agent(role="Clerk", goal="g", backstory="b", llm=ScriptedLLM(script), tools=[refund])
    return Crew(
        agents=[agent], tasks=[Task(description="Refund", expected_output="o", agent=agent)]
    )


async def test_a_tool_hook_asking_a_human_waits_for_a_signal_named_by_the_tool_call() -> None:
    from crewai.hooks import (
        ToolCallHookContext,
        register_before_tool_call_hook,
        unregister_before_tool_call_hook,
    )

    def approval(context: ToolCallHookContext) -> bool | None:
        answer = context.request_human_input(prompt=f"Refund {context.tool_input['amount']}?")
        return None if answer == "approve" else False

    install()
    register_before_tool_call_hook(approval)
    try:
        calls: list[str] = []
        journal: dict[str, tuple[str, Any]] = {}
        crew, ctx = _approving_crew(calls), MemoryContext(journal)
        # Parallel calls ask in any order: each answer goes to the call its signal names.
        answers = {"human:task:0/approval:c1": "approve", "human:task:0/approval:c2": "no"}
        ctx.wait_for_signal = lambda name, timeout=None: _answer(ctx, answers, name)  # type: ignore[method-assign]
        output = await CrewRun(ctx, asyncio.get_running_loop(), crew.tasks).drive(crew.kickoff)
        assert calls == ["refund 5"]
        assert output.raw == "refunded 5 / Tool execution blocked by hook. Tool: refund"
        asked = sorted(
            (d["signal"], d["prompt"]) for kind, d in ctx.events if kind == "crew.human_input"
        )
        assert asked == [
            ("human:task:0/approval:c1", "Refund 5?"),
            ("human:task:0/approval:c2", "Refund 7?"),
        ]
        # Replayed: the answers come from the journal; nobody is asked, nothing runs again.
        calls.clear()
        again, live = await kickoff(lambda: _approving_crew(calls), journal)
        assert (again.raw, calls, live) == (output.raw, [], [])
    finally:
        unregister_before_tool_call_hook(approval)


async def test_bound_tool_hook_approvals_take_only_an_answer_for_their_call() -> None:
    from crewai.hooks import (
        ToolCallHookContext,
        register_before_tool_call_hook,
        unregister_before_tool_call_hook,
    )

    def approval(context: ToolCallHookContext) -> bool | None:
        answer = context.request_human_input(prompt=f"Refund {context.tool_input['amount']}?")
        asked.append(answer)
        return None if answer == "approve" else False

    def request(call: str, amount: int) -> ApprovalRequest:
        return ApprovalRequest(
            call_id=f"task:0/approval:{call}",
            tool="refund",
            args_hash=args_hash({"amount": amount}),
            signal=f"human:task:0/approval:{call}",
            requested_at=0.0,
        )

    install()
    register_before_tool_call_hook(approval)
    try:
        calls: list[str] = []
        asked: list[str] = []
        journal: dict[str, tuple[str, Any]] = {}
        crew, ctx = _approving_crew(calls), MemoryContext(journal)
        c1, c2 = request("c1", 5), request("c2", 7)
        ctx.queued = {
            c1.signal: [True, approval_payload(c2, True), approval_payload(c1, True)],
            c2.signal: [approval_payload(c2, False, "too much")],
        }
        run = CrewRun(ctx, asyncio.get_running_loop(), crew.tasks, approvals=ApprovalPolicy())
        output = await run.drive(crew.kickoff)
        assert calls == ["refund 5"]
        assert sorted(asked) == ["approve", "reject: too much"]
        assert output.raw == "refunded 5 / Tool execution blocked by hook. Tool: refund"
        requested = {d["call_id"]: d for kind, d in ctx.events if kind == "approval.requested"}
        assert requested[c1.call_id]["args_hash"] == c1.args_hash
        assert requested[c2.call_id]["tool"] == "refund"
        refused = [d["reason"] for kind, d in ctx.events if kind == "approval.refused"]
        assert refused == ["unbound", "wrong_call"]
        # Replayed: the journaled answers are checked again, the same way; nothing runs.
        calls.clear()
        again_ctx = MemoryContext(journal)
        again_crew = _approving_crew(calls)
        again = await CrewRun(
            again_ctx, asyncio.get_running_loop(), again_crew.tasks, approvals=ApprovalPolicy()
        ).drive(again_crew.kickoff)
        assert (again.raw, calls, again_ctx.live) == (output.raw, [], [])
    finally:
        unregister_before_tool_call_hook(approval)


async def _answer(ctx: MemoryContext, answers: dict[str, str], name: str) -> Any:
    key = f"signal:{name}"
    if key not in ctx.journal:
        ctx.journal[key] = ("", answers[name])
        ctx.live.append(key)
    return ctx.journal[key][1]


def _declaring_crew() -> Crew:
    from crewai.tools.tool_failure import ToolFailure

    @crewai_tool("post")
    def post(text: str):  # type: ignore[no-untyped-def]  # undeclared, as CrewAI's docs show
        """Post a message."""
        return ToolFailure(message="channel_not_found", code="404")

    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        done = tool_results(messages)
        return f"got {done[0]}" if done else [tool_call("post", {"text": "hi"}, "p1")]

    agent = Agent(role="Poster", goal="g", backstory="b", llm=ScriptedLLM(script), tools=[post])
    return Crew(agents=[agent], tasks=[Task(description="Post", expected_output="o", agent=agent)])


async def test_a_tool_that_returns_crewais_tool_failure_reads_as_it_does_plainly() -> None:
    install()
    plain = await asyncio.to_thread(_declaring_crew().kickoff)
    journal: dict[str, tuple[str, Any]] = {}
    for _ in range(2):  # live, then replayed
        durable, _live = await kickoff(_declaring_crew, journal)
        assert durable.raw == plain.raw
        failures = [t["tool_failures"] for t in msgspec.to_builtins(durable)["tasks"]]
        expected = [t.model_dump(mode="json")["tool_failures"] for t in plain.tasks_output]
        for task in [*failures, *expected]:
            for failure in task:
                failure.pop("task_id")
        assert failures == expected and failures[0]


def _dated_crew() -> Crew:
    import datetime
    from dataclasses import dataclass

    @dataclass
    class Slot:
        day: datetime.date

    @crewai_tool("next_slot")
    def next_slot(after: str) -> Slot:
        """The next free slot."""
        return Slot(datetime.date(2026, 12, 24))

    def script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
        done = tool_results(messages)
        return f"booked {done[0]}" if done else [tool_call("next_slot", {"after": "now"}, "s1")]

    agent = Agent(
        role="Booker", goal="g", backstory="b", llm=ScriptedLLM(script), tools=[next_slot]
    )
    return Crew(agents=[agent], tasks=[Task(description="Book", expected_output="o", agent=agent)])


async def test_a_tool_result_that_is_not_plain_data_reaches_the_model_as_it_does_plainly() -> None:
    install()
    plain = await asyncio.to_thread(_dated_crew().kickoff)
    assert "datetime.date(2026, 12, 24)" in plain.raw
    journal: dict[str, tuple[str, Any]] = {}
    for _ in range(2):  # live, then replayed
        durable, _live = await kickoff(_dated_crew, journal)
        assert durable.raw == plain.raw
