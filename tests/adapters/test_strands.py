"""AWS Strands Agents adapter: real servers, real worker processes, real SIGKILLs.

The agents, graph and swarm live in ``tests/adapters/strands_apps.py``. Every crash test kills
the worker that owns a run at a known point (a tool held by a Redis gate), lets another
worker process resume it, and checks from Redis (outside both workers) that no model call
and no completed tool call ran twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("strands")

import redis.asyncio as aioredis
from strands import Agent, tool
from strands.agent import AgentResult
from strands.agent.state import AgentState
from strands.middleware import ModelStopReason, ToolResultEvent
from strands.multiagent import MultiAgentResult
from strands.multiagent.graph import GraphBuilder

import stalwart.adapters.strands as st
from stalwart import Client, RunFailed, RunHandle, Settings
from stalwart.adapters.strands._codec import (
    dump_stop,
    dump_tool_result,
    load_stop,
    load_tool_result,
    plain_messages,
)
from stalwart.checkpoints import StepAttempt, StepDone, StepError, WaitStarted
from stalwart.errors import ConfigurationError
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    collect_events,
    done_keys,
    eventually,
    execs,
    has_all,
    journal,
    mark_gated,
    model_log,
    open_gate,
    outcome,
    owners,
    rid,
    step_owners,
)

APP = "tests.adapters.strands_apps:app"


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
async def st_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.adapters.strands_apps:app``."""
    # Strands only exports traces when OpenTelemetry is configured; make sure it is not.
    telemetry_off = {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    async with worker_pool(APP, settings, servers, client, **telemetry_off) as start:
        yield start


async def output(handle: RunHandle, *procs: Any) -> Any:
    """A run's output: a lone agent's ``output`` (its final text or structured output), a
    graph's or swarm's whole result."""
    result = await outcome(handle, *procs)
    if isinstance(result, dict) and "stop_reason" in result:
        return result["output"]
    if isinstance(result, dict):  # a graph's or swarm's: Strands' own form is checked apart
        return {k: v for k, v in result.items() if k != "result"}
    return result


# -- the acceptance run: 4 model calls, 6 tool calls (parallel ones included) -------------

RESEARCH_TOOLS = ["tool:s1", "tool:s2", "tool:s3", "tool:f1", "tool:f2", "tool:sum"]
RESEARCH_MODELS = ["model:1", "model:2", "model:3", "model:4"]
RESEARCH_RESULT = (
    "Analyze Q4 => 14 sources on pricing | 18 sources on competitors | 13 sources on demand"
    " | pricing-report: trending up | competitor-report: trending up | summary of 5 notes"
)


@pytest.mark.slow
async def test_sigkill_between_parallel_tool_calls_resumes_without_repeating_calls(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    baseline = await client.submit("st-research", "Analyze Q4")
    assert await output(baseline, a) == RESEARCH_RESULT

    run_id = rid()
    await mark_gated(
        counters, run_id, "tool:f2"
    )  # one of two parallel calls: f1 completes, f2 hangs
    handle = await client.submit("st-research", "Analyze Q4", run_id=run_id)
    follower = asyncio.create_task(collect_events(handle.events()))
    await eventually(lambda: has_all(client, run_id, "tool:f1"), timeout=30)
    await eventually(lambda: execs(counters, run_id, "tool:f2"), timeout=10)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "tool:f2")

    assert await output(handle, b) == RESEARCH_RESULT
    # Every model call ran once, across both workers (the log lives outside them).
    assert await model_log(counters, run_id) == RESEARCH_MODELS
    for key in RESEARCH_TOOLS:
        expected = 2 if key == "tool:f2" else 1  # f2 was in flight: at-least-once
        assert await execs(counters, run_id, key) == expected, f"{key} ran {expected} time(s)?"
    entries = await journal(client, run_id)
    keys = [je.entry.key for je in entries if isinstance(je.entry, StepDone | StepError)]
    assert sorted(keys) == sorted(RESEARCH_MODELS + RESEARCH_TOOLS)  # journaled once each
    who = step_owners(entries)
    assert {k for k, w in who.items() if w == "a"} == {
        "model:1",
        "model:2",
        "tool:s1",
        "tool:s2",
        "tool:s3",
        "tool:f1",
    }
    assert {k for k, w in who.items() if w == "b"} == {"tool:f2", "model:3", "tool:sum", "model:4"}
    assert owners(entries) == ["a", "b"]
    model_steps = [je.entry for je in entries if isinstance(je.entry, StepDone)]
    assert {e.model for e in model_steps if e.kind == "model"} == {"scripted-research"}
    assert all(e.input_tokens > 0 and e.output_tokens > 0 for e in model_steps if e.kind == "model")

    # A subscriber following the run sees each step once, and text deltas only from the
    # worker that made the call (the replay on b streamed nothing again).
    events = await asyncio.wait_for(follower, timeout=30)
    completed = Counter(ev.step for ev in events if ev.type == "step.completed")
    assert completed == Counter(RESEARCH_MODELS + RESEARCH_TOOLS)
    step_worker = {ev.step: ev.worker for ev in events if ev.type == "step.completed"}
    deltas = [ev for ev in events if ev.type == "model.delta"]
    assert {ev.step for ev in deltas} == {"model:1", "model:4"}  # the turns with text
    assert all(ev.worker == step_worker[ev.step] for ev in deltas)
    assert next(ev for ev in deltas if ev.step == "model:4").data == {"text": RESEARCH_RESULT}
    resumed = [ev for ev in events if ev.type == "run.resumed"]
    assert len(resumed) == 1 and resumed[0].data == {"journaled_steps": 6}


@pytest.mark.slow
async def test_sigkill_during_a_model_call_reruns_only_that_call(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "model:3")
    handle = await client.submit("st-research", "Analyze Q4", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "model:3"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "model:3")

    assert await output(handle, b) == RESEARCH_RESULT
    assert Counter(await model_log(counters, run_id)) == Counter(
        ["model:1", "model:2", "model:3", "model:3", "model:4"]
    )
    for key in RESEARCH_TOOLS:
        assert await execs(counters, run_id, key) == 1, f"{key} ran again"


# -- a graph resumes at the node that was running ----------------------------------------

GRAPH_RESULT = {
    "status": "completed",
    "outputs": {
        "scout_a": "scout_a: 14 sources on pricing",
        "scout_b": "scout_b: 18 sources on competitors",
        "analyst": "analyst: market-report: trending up",
        "writer": "writer: summary of 3 notes",
    },
}


def _graph_view(result: dict[str, Any]) -> dict[str, Any]:
    # Parallel nodes finish in either order: compare the order by batch.
    order = result["order"]
    assert sorted(order[:2]) == ["scout_a", "scout_b"] and order[2:] == ["analyst", "writer"]
    return {k: v for k, v in result.items() if k != "order"}


@pytest.mark.slow
async def test_graph_resumes_from_its_last_completed_node(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    baseline = await client.submit("st-graph", "Q4 market")
    assert _graph_view(await output(baseline, a)) == GRAPH_RESULT

    run_id = rid()
    await mark_gated(counters, run_id, "analyst/tool:analyst-1")
    handle = await client.submit("st-graph", "Q4 market", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "analyst/tool:analyst-1"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "analyst/tool:analyst-1")

    assert _graph_view(await output(handle, b)) == GRAPH_RESULT
    nodes = ("scout_a", "scout_b", "analyst", "writer")
    models = [f"{n}/model:{i}" for n in nodes for i in (1, 2)]
    assert Counter(await model_log(counters, run_id)) == Counter(models)  # none ran twice
    for n in ("scout_a", "scout_b", "writer"):
        assert await execs(counters, run_id, f"{n}/tool:{n}-1") == 1
    assert await execs(counters, run_id, "analyst/tool:analyst-1") == 2  # in flight
    who = step_owners(await journal(client, run_id))
    # The scouts completed on a and were replayed on b, not run again; b went live in the
    # analyst, at the call that had not completed.
    assert {k for k, w in who.items() if w == "a"} == {
        "scout_a/model:1",
        "scout_a/tool:scout_a-1",
        "scout_a/model:2",
        "scout_b/model:1",
        "scout_b/tool:scout_b-1",
        "scout_b/model:2",
        "analyst/model:1",
    }
    assert {k for k, w in who.items() if w == "b"} == {
        "analyst/tool:analyst-1",
        "analyst/model:2",
        "writer/model:1",
        "writer/tool:writer-1",
        "writer/model:2",
    }


# -- a swarm resumes at the agent that was running ---------------------------------------

SWARM_RESULT = {
    "status": "completed",
    "order": ["triage", "researcher", "writer"],
    "outputs": {
        "triage": "triage done",
        "researcher": "research handed over",
        "writer": "final report (summary of 2 notes)",
    },
}


@pytest.mark.slow
async def test_swarm_resumes_at_the_agent_that_was_running(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    baseline = await client.submit("st-swarm", "Q4 market")
    assert await output(baseline, a) == SWARM_RESULT

    run_id = rid()
    await mark_gated(counters, run_id, "writer/tool:w-1")
    handle = await client.submit("st-swarm", "Q4 market", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "writer/tool:w-1"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "writer/tool:w-1")

    assert await output(handle, b) == SWARM_RESULT
    multi = st.DurableAgentRunner("swarm-decode", _agent("d"), app=st_app()).decode_result(
        await outcome(handle, b)
    )
    assert isinstance(multi, MultiAgentResult) and multi.status.value == "completed"
    assert str(multi.results["writer"].result).strip() == SWARM_RESULT["outputs"]["writer"]
    assert multi.accumulated_usage["totalTokens"] > 0
    models = ["triage/model:1", "triage/model:2", "researcher/model:1", "researcher/model:2"]
    models += ["researcher/model:3", "writer/model:1", "writer/model:2"]
    assert Counter(await model_log(counters, run_id)) == Counter(models)
    for key in ("researcher/tool:r-1", "researcher/tool:r-2"):
        assert await execs(counters, run_id, key) == 1
    keys = await done_keys(client, run_id)
    # Handoffs are the swarm's own bookkeeping: run again on replay, never journaled.
    assert not [k for k in keys if k.endswith(("t-1", "r-3"))]
    assert step_owners(await journal(client, run_id))["writer/model:2"] == "b"


# -- structured output and local tools across a crash -------------------------------------


@pytest.mark.slow
async def test_structured_output_survives_a_crash(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "model:2")  # the call that answers with the output tool
    handle = await client.submit("st-brief", "Brief me", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "model:2"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "model:2")

    assert await output(handle, b) == {"topic": "pricing", "sources": 14}
    assert await execs(counters, run_id, "tool:b1") == 1
    # Strands' structured output tool hands the output to the loop: it runs, unjournaled.
    assert sorted(await done_keys(client, run_id)) == ["model:1", "model:2", "tool:b1"]


@pytest.mark.slow
async def test_local_tool_runs_again_on_replay_to_rebuild_agent_state(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:m2")
    handle = await client.submit("st-memory", "Remember and recall", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "tool:m2"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "tool:m2")

    # On b, model:1 and model:2 replay; `remember` runs again and sets agent.state, so the
    # live `recall` finds the fact.
    assert await output(handle, b) == "recalled Q4 is up"
    assert sorted(await done_keys(client, run_id)) == ["model:1", "model:2", "model:3", "tool:m2"]


@pytest.mark.slow
async def test_at_most_once_tool_in_flight_at_a_crash_fails_the_run(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:p1")
    handle = await client.submit("st-pay", "Pay the invoice", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "tool:p1"), timeout=30)
    a.kill()
    b = await st_workers("b")

    with pytest.raises(RunFailed) as info:
        await output(handle, b)
    # Not an error result the model could answer by charging again: the run stops.
    assert info.value.error_type == "ToolOutcomeUnknown"
    assert await execs(counters, run_id, "tool:p1") == 1
    assert await model_log(counters, run_id) == ["model:1"]


@pytest.mark.slow
async def test_at_most_once_tool_with_reconcile_hook_asks_it_after_a_crash(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:p1")
    handle = await client.submit("st-pay-checked", "Pay the invoice", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "tool:p1"), timeout=30)
    a.kill()
    b = await st_workers("b")

    assert await output(handle, b) == "payment: already charged 42"
    assert await execs(counters, run_id, "tool:p1") == 1
    asked = [k.decode() for k in await counters.lrange(f"reconciled:{run_id}", 0, -1)]
    assert asked == [f"{run_id}:tool:p1"]  # the idempotency key of the call


# -- other behaviour on one worker --------------------------------------------------------


@pytest.mark.slow
async def test_tool_error_is_journaled_as_the_result_the_model_saw(
    client: Client, st_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    handle = await client.submit("st-flaky", "look it up")
    assert await output(handle, a) == "gave up: Error: no record for k-1"
    entries = await journal(client, handle.run_id)
    tool = next(
        je.entry for je in entries if isinstance(je.entry, StepDone) and je.entry.kind == "tool"
    )
    assert tool.key == "tool:x1" and tool.name == "flaky_lookup"


@pytest.mark.slow
async def test_agent_object_runs_start_fresh_each_time(
    client: Client, st_workers: WorkerFactory
) -> None:
    a = await st_workers("a")
    first, second = await asyncio.gather(
        client.submit("st-research-shared", "Analyze Q4"),
        client.submit("st-research-shared", "Analyze Q4"),
    )
    assert await output(first, a) == RESEARCH_RESULT
    assert await output(second, a) == RESEARCH_RESULT  # not the first run's conversation
    assert sorted(await done_keys(client, second.run_id)) == sorted(
        RESEARCH_MODELS + RESEARCH_TOOLS
    )


@pytest.mark.slow
async def test_prompt_changed_between_crash_and_resume_is_nondeterminism(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:f2")
    handle = await client.submit("st-research", "Analyze Q4", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "tool:f2"), timeout=30)
    a.kill()
    b = await st_workers("b", RESEARCH_PROMPT="You research markets, briefly.")
    await open_gate(counters, run_id, "tool:f2")

    with pytest.raises(RunFailed) as info:
        await output(handle, b)
    assert info.value.error_type == "NonDeterminismError"
    assert "'model:1'" in info.value.message
    assert await execs(counters, run_id, "tool:s1") == 1


@pytest.mark.slow
async def test_cancel_stops_a_swarm_that_swallows_node_errors(
    client: Client, st_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "researcher/tool:r-1")
    handle = await client.submit("st-swarm", "Q4 market", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "researcher/tool:r-1"), timeout=30)
    assert await handle.cancel("enough") == "requested"
    await open_gate(counters, run_id, "researcher/tool:r-1")
    # The swarm turns a failing node into a failed result; the run is still cancelled.
    await eventually(lambda: _status(handle, "cancelled"), timeout=20)
    assert "writer/model:1" not in await model_log(counters, run_id)


async def owners_are(client: Client, run_id: str, workers: list[str]) -> bool:
    return owners(await journal(client, run_id)) == workers


async def _status(handle: RunHandle, status: str) -> bool:
    return (await handle.status()).status == status


# -- tool errors, interrupts, per-run inputs ----------------------------------------------


@pytest.mark.slow
async def test_a_tool_error_is_retried_only_when_its_policy_asks(
    client: Client, st_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    # Default: no retries, as Strands itself: the error goes to the model after one run.
    flaky = await client.submit("st-flaky", "look it up")
    assert await output(flaky, a) == "gave up: Error: no record for k-1"
    assert await execs(counters, flaky.run_id, "tool:x1") == 1
    # @durable(retry=...) on the tool: Strands turns the exception into an error result
    # inside its chain, yet the step still sees it and retries; the model sees the answer.
    shaky = await client.submit("st-shaky", "look it up")
    assert await output(shaky, a) == "found: record k-2"
    assert await execs(counters, shaky.run_id, "tool:y1") == 3
    entries = await journal(client, shaky.run_id)
    assert [je.entry.attempt for je in entries if isinstance(je.entry, StepAttempt)] == [1, 2]


@pytest.mark.slow
async def test_tool_interrupt_waits_for_its_signal_across_crashes_and_asks_nobody_again(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "model:2")  # the call after the approved refund
    handle = await client.submit("st-refund", "refund order 7", run_id=run_id)
    follower = asyncio.create_task(collect_events(handle.events()))

    async def asked() -> list[Any]:
        events = await collect_events(handle.events(follow=False))
        return [ev for ev in events if ev.type == "agent.interrupted"]

    await eventually(asked, timeout=30)
    (item,) = (await asked())[0].data["interrupts"]
    assert item["name"] == "manager_approval" and item["reason"] == {"amount": 30}
    assert item["signal"] == f"interrupt:{item['id']}"

    async def waiting_on(worker: str) -> bool:
        entries = await journal(client, run_id)
        waits = [je for je in entries if isinstance(je.entry, WaitStarted)]
        return owners(entries)[-1] == worker and bool(waits)

    # Killed while waiting for the answer: b takes the run over and waits in its place.
    await eventually(lambda: waiting_on("a"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await eventually(lambda: owners_are(client, run_id, ["a", "b"]), timeout=30)
    await handle.signal(item["signal"], "yes")
    # Answered; killed while the model call after the approved refund is in flight.
    await eventually(lambda: execs(counters, run_id, "model:2"), timeout=30)
    b.kill()
    c = await st_workers("c")
    await open_gate(counters, run_id, "model:2")

    assert await output(handle, c) == "done: refunded 30"
    # The tool ran once to ask and once with the answer, as without Stalwart; the replays on
    # b and c ran neither again, and nobody was asked again.
    assert await execs(counters, run_id, "tool:i1") == 1
    assert await execs(counters, run_id, "tool:i1#2") == 1
    events = await asyncio.wait_for(follower, timeout=30)
    assert [ev.type for ev in events].count("agent.interrupted") == 1


@pytest.mark.slow
async def test_per_run_structured_output_model_comes_back_as_the_model(
    client: Client, st_workers: WorkerFactory
) -> None:
    from tests.adapters.strands_apps import Brief

    a = await st_workers("a")
    runner = st.DurableAgentRunner("st-brief-per-run", _agent("unused"), app=st_app())
    payload = runner.request("Brief me", structured_output_model=Brief)
    data = await outcome(await client.submit("st-brief-per-run", payload), a)
    result = runner.decode_result(data)
    assert result.structured_output == Brief(topic="pricing", sources=14)


@pytest.mark.slow
async def test_context_overflow_reaches_strands_which_trims_and_calls_again(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    from tests.adapters import strands_apps as sa

    sizes: list[int] = []

    def script(messages: Any) -> Any:
        sizes.append(len(messages))
        return sa.long_script(messages)

    plain = await sa.build_long(st.ScriptedModel(script)).invoke_async("Read the report")
    assert any(n > sa.WINDOW for n in sizes)  # the plain run overflowed once, and recovered

    a = await st_workers("a")
    run_id = rid()
    last = f"model:{len(sizes)}"
    # Killed after the overflow and the trim: the replay must trim the same way.
    await mark_gated(counters, run_id, last)
    handle = await client.submit("st-long", "Read the report", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, last), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, last)
    assert await output(handle, b) == str(plain).strip()
    # The overflowing call was the model's answer, journaled once: not retried as a failure
    # (only the call in flight at the kill ran twice).
    expected = [f"model:{n}" for n in range(1, len(sizes) + 1)] + [last]
    assert Counter(await model_log(counters, run_id)) == Counter(expected)


@pytest.mark.slow
async def test_an_agent_used_as_a_tool_resumes_inside_the_nested_agent(
    client: Client, st_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await st_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "tool:o1/tool:r1")
    handle = await client.submit("st-orchestrator", "Research pricing", run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "tool:o1/tool:r1"), timeout=30)
    a.kill()
    b = await st_workers("b")
    await open_gate(counters, run_id, "tool:o1/tool:r1")

    assert await output(handle, b) == "orchestrated: assistant found 14 sources on pricing"
    # The nested agent's model calls are steps of the run, under the calling tool's key:
    # the one made before the crash was replayed, not made again.
    assert Counter(await model_log(counters, run_id)) == Counter(
        ["model:1", "tool:o1/model:1", "tool:o1/model:2", "model:2"]
    )
    assert await execs(counters, run_id, "tool:o1/tool:r1") == 2  # in flight at the kill
    who = step_owners(await journal(client, run_id))
    assert who["tool:o1/model:1"] == "a" and who["tool:o1/model:2"] == "b"
    assert "tool:o1" not in who  # no step of its own: its result is rebuilt by the replay


def test_per_run_options_that_cannot_reach_a_worker_are_refused() -> None:
    import threading

    runner = st.DurableAgentRunner("opts", _agent("opts"), app=st_app())
    with pytest.raises(TypeError, match=r"handle\.cancel\(\)"):
        runner.request("hi", cancel_signal=threading.Event())
    with pytest.raises(TypeError, match="run_id="):
        runner.request("hi", idempotency_token="t")
    with pytest.raises(TypeError, match="unknown per-run option 'context'"):
        runner.request("hi", context={})
    with pytest.raises(TypeError, match=r"invocation_state.*plain data"):
        runner.request("hi", invocation_state={"db": threading.Lock()})
    wire = runner.request("hi", messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert wire["prompt"] == "hi" and wire["messages"][0]["content"] == [{"text": "x"}]
    assert runner.request("hi", state={"k": 1})["state"] == {"k": 1}
    assert runner.request("hi", state=AgentState({"k": 2}))["state"] == {"k": 2}
    assert runner.request("hi") == "hi"  # no options: the prompt alone, as before


def test_a_result_rebuilds_strands_agent_result() -> None:
    from tests.adapters.strands_apps import Brief

    runner = st.DurableAgentRunner("res", _agent("res"), output_models=[Brief], app=st_app())
    data = {
        "output": {"topic": "t", "sources": 2},
        "stop_reason": "end_turn",
        "message": {"role": "assistant", "content": [{"text": "ok"}]},
        "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        "metrics": {"latencyMs": 5},
        "cycles": 2,
        "invocation_usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        "structured_output": {
            "type": f"{Brief.__module__}:Brief",
            "data": {"topic": "t", "sources": 2},
        },
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "state": {"k": 1},
    }
    result = runner.decode_result(data)
    assert isinstance(result, AgentResult) and isinstance(result, st.DurableAgentResult)
    assert result.structured_output == Brief(topic="t", sources=2)
    assert str(result) == Brief(topic="t", sources=2).model_dump_json()
    assert result.metrics.accumulated_usage["totalTokens"] == 7
    assert result.metrics.cycle_count == 2
    assert result.messages == data["messages"] and result.agent_state == {"k": 1}
    # Anything else stays as it is.
    assert runner.decode_result({"status": "completed"}) == {"status": "completed"}


# -- pure parts, in process ---------------------------------------------------------------


def test_exports() -> None:
    assert st.__all__ == [
        "DurableAgentResult",
        "DurableAgentRunner",
        "ScriptedModel",
        "ToolError",
        "instrument",
        "reply",
        "tool_call",
    ]


def test_fingerprinted_messages_leave_out_tracking_ids_and_metadata() -> None:
    messages: Any = [
        {"role": "user", "content": [{"text": "hi"}], "tracking_id": "3f1c"},
        {
            "role": "assistant",
            "content": [{"text": "hello"}],
            "tracking_id": "9a7e",
            "metadata": {"usage": {"inputTokens": 1}, "metrics": {"latencyMs": 812}},
        },
    ]
    assert plain_messages(messages) == [
        {"role": "user", "content": [{"text": "hi"}]},
        {"role": "assistant", "content": [{"text": "hello"}]},
    ]


def test_results_round_trip_through_their_journal_form() -> None:
    message: Any = {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "a", "name": "search", "input": {"q": 1}}}],
    }
    stop = ModelStopReason(
        "tool_use",
        message,
        {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        {"latencyMs": 5},
    )
    again = load_stop(dump_stop(stop))
    assert again["stop"] == stop["stop"]

    event = ToolResultEvent(
        {"toolUseId": "a", "status": "error", "content": [{"text": "Error: x"}]},
        exception=KeyError("x"),
    )
    loaded = load_tool_result(dump_tool_result(event))
    assert loaded.tool_result == event.tool_result
    assert isinstance(loaded.exception, st.ToolError)
    assert loaded.exception.error_type == "KeyError"
    assert dump_tool_result(loaded) == dump_tool_result(event)


@tool
def _noop(x: int) -> int:
    """Does nothing."""
    return x


def _agent(name: str) -> Agent:
    return Agent(
        name=name, model=st.ScriptedModel(lambda m: "ok"), tools=[_noop], callback_handler=None
    )


def test_an_agent_object_cannot_sit_in_two_places() -> None:
    shared = _agent("shared")
    st.instrument(shared)
    st.instrument(shared)  # the same place again: a no-op
    builder = GraphBuilder()
    builder.add_node(shared, "n1")
    builder.set_max_node_executions(3)
    with pytest.raises(ConfigurationError, match="used both as"):
        st.instrument(builder.build())


def test_an_agent_with_a_session_manager_is_refused(tmp_path: Any) -> None:
    from strands.session import FileSessionManager

    agent = Agent(
        model=st.ScriptedModel(lambda m: "ok"),
        session_manager=FileSessionManager(session_id="s1", storage_dir=str(tmp_path)),
        callback_handler=None,
    )
    with pytest.raises(ConfigurationError, match=r"messages=previous\.messages"):
        st.instrument(agent)


def test_graph_edges_iterate_in_a_fixed_order() -> None:
    builder = GraphBuilder()
    for name in ("z", "m", "a", "out"):
        builder.add_node(_agent(name), name)
    for name in ("z", "m", "a"):
        builder.add_edge(name, "out")
    builder.set_max_node_executions(5)
    graph = builder.build()
    st.instrument(graph)
    assert [e.from_node.node_id for e in graph.edges] == ["a", "m", "z"]


async def test_outside_a_run_the_middleware_is_transparent() -> None:
    agent = _agent("plain")
    st.instrument(agent)
    result = await agent.invoke_async("hello")
    assert str(result).strip() == "ok"


def test_runner_refuses_what_it_cannot_journal() -> None:
    with pytest.raises(ConfigurationError, match="max_iterations"):
        st.DurableAgentRunner("bad-1", _agent("x"), max_iterations=0, app=st_app())
    with pytest.raises(ConfigurationError, match="Agent, Graph or Swarm"):
        st.DurableAgentRunner("bad-2", 42, app=st_app())  # type: ignore[arg-type]


def st_app() -> Any:
    from stalwart import App

    return App("strands-unit")
