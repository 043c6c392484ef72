"""Strands fidelity: upstream-style agents run plainly, then durably with SIGKILLs, compared.

The agents (``tests/adapters/strands_fidelity_apps.py``) use Strands' real ``OpenAIModel``
(streamed Chat Completions) against the loopback fake server, which logs every request.
Each agent runs first plainly in this process, then durably on worker processes killed
(a) while a model call is in flight, (b) while a tool is in flight, (c) between two calls,
(d) after a human answered an interrupt. Every durable run must equal the plain run: the
``AgentResult`` (text, message, stop reason, usage), every request body the model received
(the one killed in-flight request may come twice), no completed call made again, and the
tokens Stalwart counted equal to Strands' own usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("strands")

import redis.asyncio as aioredis
from strands import Agent

from stalwart import Client, RunHandle, Settings
from stalwart.adapters.strands import DurableAgentResult
from stalwart.checkpoints import StepDone
from tests.adapters import strands_fidelity_apps as fa
from tests.adapters.fake_llm import FakeLLM, comparable, fake_llm
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    collect_events,
    eventually,
    has_all,
    journal,
    mark_gated,
    open_gate,
    outcome,
    rid,
)

__all__ = ["fake_llm"]  # the fixture, imported for pytest

APP = "tests.adapters.strands_fidelity_apps:app"
QS = fa.QUICKSTART_MODEL


@pytest.fixture
async def fq_workers(
    settings: Settings, servers: Servers, client: Client, fake_llm: FakeLLM
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving the fidelity apps, their models pointed at ``fake_llm``."""
    fake_llm.route(fa.QUICKSTART_MODEL, fa.quickstart_script)
    fake_llm.route(fa.APPROVAL_MODEL, fa.approval_script)
    env = {"FAKE_LLM_URL": fake_llm.url, "OTEL_SDK_DISABLED": "true"}
    async with worker_pool(APP, settings, servers, client, **env) as start:
        yield start


def plain_view(result: Any) -> dict[str, Any]:
    """The parts of an ``AgentResult`` a durable run must reproduce."""
    return {
        "text": str(result),
        "stop_reason": result.stop_reason,
        "message": {"role": result.message["role"], "content": result.message["content"]},
        "usage": dict(result.metrics.accumulated_usage),
        "structured_output": result.structured_output,
    }


def conversation(agent: Agent) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m["content"]} for m in agent.messages]


def tool_ids(agent: Agent, name: str) -> list[str]:
    """The toolUseIds of ``name``'s calls in a plain run (the fake derives them from the
    request, so the durable run's calls have the same ids)."""
    return [
        str(block["toolUse"]["toolUseId"])
        for m in agent.messages
        for block in m["content"]
        if "toolUse" in block and block["toolUse"]["name"] == name
    ]


async def tool_execs(counters: aioredis.Redis, run_id: str) -> dict[str, int]:
    """How often each tool step's body ran in ``run_id``, by step key."""
    out = {}
    async for key in counters.scan_iter(match=f"exec:{run_id}:tool:*"):
        out[key.decode().split(":", 2)[2]] = int(await counters.get(key) or 0)
    return out


async def stalwart_tokens(client: Client, run_id: str) -> dict[str, int]:
    entries = [je.entry for je in await journal(client, run_id)]
    models = [e for e in entries if isinstance(e, StepDone) and e.kind == "model"]
    return {
        "inputTokens": sum(e.input_tokens for e in models),
        "outputTokens": sum(e.output_tokens for e in models),
    }


async def durable_result(name: str, handle: RunHandle, *procs: Any) -> DurableAgentResult:
    data = await outcome(handle, *procs, timeout=60)
    result = fa.RUNNERS[name].decode_result(data)
    assert isinstance(result, DurableAgentResult)
    return result


def bodies(fake: FakeLLM, model: str) -> list[dict[str, Any]]:
    return comparable(fake.requests(model))


def expect_same_requests(
    durable: list[dict[str, Any]], plain: list[dict[str, Any]], resent: dict[str, Any] | None
) -> None:
    """``durable`` equals ``plain``, but for one more copy of the killed in-flight request."""
    if resent is None:
        assert durable == plain
        return
    assert resent in plain
    at = durable.index(resent)
    assert durable[at + 1] == resent, "the killed request was not sent again right away"
    assert durable[:at] + durable[at + 1 :] == plain


async def check_same(
    client: Client, run_id: str, durable: DurableAgentResult, plain: Any, agent: Agent
) -> None:
    assert plain_view(durable) == plain_view(plain)
    assert durable.messages == conversation(agent)
    usage = plain.metrics.accumulated_usage
    # Stalwart's own count (what max_tokens / max_cost_usd see) is Strands' usage.
    assert await stalwart_tokens(client, run_id) == {
        "inputTokens": usage["inputTokens"],
        "outputTokens": usage["outputTokens"],
    }


# -- the quickstart agent ----------------------------------------------------------------


@pytest.mark.slow
async def test_quickstart_agent_killed_at_every_kind_of_point_equals_the_plain_run(
    client: Client,
    fq_workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    fake_llm: FakeLLM,
) -> None:
    plain_agent = fa.build_quickstart(fake_llm.url)
    plain = await plain_agent.invoke_async(fa.QUICKSTART_PROMPT)
    plain_bodies = bodies(fake_llm, QS)
    assert len(plain_bodies) == 3
    assert "Error: The 'letter' parameter must be a single character" in str(plain)
    calculator = tool_ids(plain_agent, "calculator")[0]
    plain_tools = {
        f"tool:{i}"
        for m in ("calculator", "current_time", "letter_counter")
        for i in tool_ids(plain_agent, m)
    }
    worker = await fq_workers("a")

    # (a) killed while the second model call is in flight.
    fake_llm.clear()
    hold = fake_llm.hold(lambda r: r.model == QS and len(r.tool_results()) == 3)
    run_a = await client.submit("fq-quickstart", fa.QUICKSTART_PROMPT)
    held = await hold.arrived(timeout=30)
    worker.kill()
    worker = await fq_workers("b")
    hold.release()
    result = await durable_result("fq-quickstart", run_a, worker)
    await check_same(client, run_a.run_id, result, plain, plain_agent)
    expect_same_requests(bodies(fake_llm, QS), plain_bodies, comparable([held])[0])
    assert await tool_execs(counters, run_a.run_id) == dict.fromkeys(plain_tools, 1)

    # (b) killed while a tool (calculator) is in flight: only that tool runs again.
    fake_llm.clear()
    run_b = rid()
    await mark_gated(counters, run_b, f"tool:{calculator}")
    handle_b = await client.submit("fq-quickstart", fa.QUICKSTART_PROMPT, run_id=run_b)
    # The calculator is held; its two sibling calls (run concurrently) complete first.
    siblings = [f"tool:{tool_ids(plain_agent, 'current_time')[0]}"]
    siblings.append(f"tool:{tool_ids(plain_agent, 'letter_counter')[0]}")
    await eventually(lambda: has_all(client, run_b, *siblings), timeout=30)
    await eventually(lambda: _execs(counters, run_b, f"tool:{calculator}"), timeout=30)
    worker.kill()
    worker = await fq_workers("c")
    await open_gate(counters, run_b, f"tool:{calculator}")
    result = await durable_result("fq-quickstart", handle_b, worker)
    await check_same(client, run_b, result, plain, plain_agent)
    expect_same_requests(bodies(fake_llm, QS), plain_bodies, None)
    expected = dict.fromkeys(plain_tools, 1) | {f"tool:{calculator}": 2}  # in flight: again
    assert await tool_execs(counters, run_b) == expected

    # (c) killed between two calls: the tools are journaled, the third model call not begun.
    fake_llm.clear()
    token = rid()
    runner_ = fa.RUNNERS["fq-quickstart"]
    payload = runner_.request(
        fa.QUICKSTART_PROMPT, invocation_state={"pause_before": 3, "pause_token": token}
    )
    run_c = await client.submit("fq-quickstart", payload)
    await eventually(lambda: counters.exists(f"paused:{token}"), timeout=30)
    worker.kill()
    worker = await fq_workers("d")
    result = await durable_result("fq-quickstart", run_c, worker)
    await check_same(client, run_c.run_id, result, plain, plain_agent)
    expect_same_requests(bodies(fake_llm, QS), plain_bodies, None)
    assert await tool_execs(counters, run_c.run_id) == dict.fromkeys(plain_tools, 1)

    # The next turn of the conversation, as the plain agent's second call: messages= in.
    fake_llm.clear()
    plain_next = await plain_agent.invoke_async("And how many r's again?")
    plain_next_bodies = bodies(fake_llm, QS)
    fake_llm.clear()
    run_n = await client.submit(
        "fq-quickstart", runner_.request("And how many r's again?", messages=result.messages)
    )
    following = await durable_result("fq-quickstart", run_n, worker)
    assert bodies(fake_llm, QS) == plain_next_bodies
    # The plain agent's metrics add both turns up; the durable next turn is a run of its own,
    # whose accumulated usage is this turn's (the plain agent's latest invocation).
    this_turn = plain_next.metrics.latest_agent_invocation
    assert this_turn is not None
    assert plain_view(following) == {**plain_view(plain_next), "usage": dict(this_turn.usage)}
    assert following.messages == conversation(plain_agent)


async def _execs(counters: aioredis.Redis, run_id: str, key: str) -> int:
    return int(await counters.get(f"exec:{run_id}:{key}") or 0)


# -- the approval agent: an interrupt answered, then a crash -----------------------------


@pytest.mark.slow
async def test_approval_agent_killed_after_the_answer_does_not_ask_again(
    client: Client,
    fq_workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    fake_llm: FakeLLM,
) -> None:
    plain_agent = fa.build_approval(fake_llm.url)
    plain = await plain_agent.invoke_async("delete object with key 'X'")
    asked = list(plain.interrupts or [])
    assert plain.stop_reason == "interrupt" and [i.name for i in asked] == ["for_delete_tool"]
    responses: Any = [{"interruptResponse": {"interruptId": i.id, "response": "A"}} for i in asked]
    plain = await plain_agent.invoke_async(responses)
    plain_bodies = bodies(fake_llm, fa.APPROVAL_MODEL)
    delete = f"tool:{tool_ids(plain_agent, 'delete_tool')[0]}"

    fake_llm.clear()
    worker = await fq_workers("a")
    handle = await client.submit("fq-approval", "delete object with key 'X'")
    follower = asyncio.create_task(collect_events(handle.events()))

    async def announced() -> list[Any]:
        return [
            ev
            for ev in await collect_events(handle.events(follow=False))
            if ev.type == "agent.interrupted"
        ]

    await eventually(announced, timeout=30)
    (event,) = await announced()
    (item,) = event.data["interrupts"]
    assert item == {
        "id": asked[0].id,
        "name": "for_delete_tool",
        "reason": "APPROVAL",
        "signal": f"interrupt:{asked[0].id}",
    }
    # (d) answered; the tool runs; killed while the model call after it is in flight.
    hold = fake_llm.hold(lambda r: r.model == fa.APPROVAL_MODEL and bool(r.tool_results()))
    await handle.signal(item["signal"], "A")
    held = await hold.arrived(timeout=30)
    worker.kill()
    worker = await fq_workers("b")
    hold.release()

    result = await durable_result("fq-approval", handle, worker)
    await check_same(client, handle.run_id, result, plain, plain_agent)
    expect_same_requests(bodies(fake_llm, fa.APPROVAL_MODEL), plain_bodies, comparable([held])[0])
    assert await tool_execs(counters, handle.run_id) == {delete: 1}
    events = await asyncio.wait_for(follower, timeout=30)
    assert [ev.type for ev in events].count("agent.interrupted") == 1  # nobody asked again
