"""Fidelity: upstream-style OpenAI Agents SDK agents, plain and durable, must behave the same.

The agents (``tests/adapters/openai_fidelity_apps.py``) are the SDK's customer-service example
(handoffs, ``on_handoff`` setting the context, a tool changing it, dynamic instructions
reading it, a relevance guardrail running an agent of its own) on ``OpenAIResponsesModel``,
and the human-in-the-loop weather example (a tool needing approval) on
``OpenAIChatCompletionsModel``, both against the loopback fake server, which logs every
request. Each is run plainly in this process, then durably on worker processes that are
SIGKILLed (a) while a model call is in flight, (b) while a tool is in flight, (c) between
calls, (d) after the human's answer. Every durable run must match the plain one: the
``RunResult`` (final output, items, last agent, usage, context), every request body the model
received (the one killed in flight may come again, identical), and no completed model call
or tool ran again.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

pytest.importorskip("agents")

import redis.asyncio as aioredis
from agents import Runner, SQLiteSession, UserError
from agents.result import RunResult
from agents.tracing import get_trace_provider, set_trace_processors

import tests.adapters.openai_fidelity_apps as apps
from stalwart import Client, RunFailed, Settings
from stalwart.checkpoints import StepDone, StepError
from stalwart.testing import StalwartProcess
from tests.adapters.fake_llm import FakeLLM, Reply, Request, ToolCall, comparable, fake_llm
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    entries_of,
    eventually,
    execs,
    gate_key,
    journaled,
    mark_gated,
    open_gate,
    rid,
)

__all__ = ["fake_llm"]  # the fixture, imported to be found by pytest

APP = "tests.adapters.openai_fidelity_apps:app"
TURN_1 = "I want to change my seat. My confirmation number is ABC123; I'd like seat 14C."
TURN_2 = "How much baggage can I bring?"
WEATHER = "What is the weather and temperature in Oakland?"


# -- the model's side: scripts that decide from the request alone --------------------------


def _since_last_user(req: Request) -> list[dict[str, Any]]:
    messages = req.messages()
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return messages[last + 1 :]


def _results_this_turn(req: Request) -> list[str]:
    return [str(m.get("content")) for m in _since_last_user(req) if m.get("role") == "tool"]


def triage(req: Request) -> Reply:
    if "seat" in req.last_user_text().lower():
        return Reply(tool_calls=(ToolCall("transfer_to_seat_booking_agent"),))
    return Reply(tool_calls=(ToolCall("transfer_to_faq_agent"),))


def seat(req: Request) -> Reply:
    if "seat" not in req.last_user_text().lower():
        return Reply(tool_calls=(ToolCall("transfer_to_triage_agent"),))
    if not any(r.startswith("Updated seat") for r in _results_this_turn(req)):
        args = {"confirmation_number": "ABC123", "new_seat": "14C"}
        return Reply(tool_calls=(ToolCall("update_seat", args),))
    found = re.search(r"flight is (\S+);.*seat (\S+)\.", req.system())
    flight, chosen = found.groups() if found else ("?", "?")
    return Reply(text=f"Done: you are in seat {chosen} on flight {flight}.")


def faq(req: Request) -> Reply:
    results = _results_this_turn(req)
    answers = [r for r in results if "assistant" not in r]
    if not answers:
        return Reply(tool_calls=(ToolCall("faq_lookup_tool", {"question": req.last_user_text()}),))
    return Reply(text=answers[-1])


def guard(req: Request) -> Reply:
    relevant = "poem" not in req.last_user_text().lower()
    return Reply(text=json.dumps({"reasoning": "airline topics", "is_relevant": relevant}))


def weather(req: Request) -> Reply:
    results = req.tool_results()
    if not results:
        return Reply(
            tool_calls=(
                ToolCall("get_weather", {"city": "Oakland"}),
                ToolCall("get_temperature", {"city": "Oakland"}),
            )
        )
    return Reply(text=" ".join(results))


def billing(req: Request) -> Reply:
    results = req.tool_results()
    if results:
        return Reply(text=f"Result: {results[-1]}")
    tool = "charge_card" if "charge" in req.last_user_text() else "refund_card"
    return Reply(tool_calls=(ToolCall(tool, {"amount": 30}),))


SCRIPTS = {
    "gpt-triage": triage,
    "gpt-seat": seat,
    "gpt-faq": faq,
    "gpt-guard": guard,
    "gpt-weather": weather,
    "gpt-billing": billing,
}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def fake(fake_llm: FakeLLM) -> AsyncIterator[FakeLLM]:
    for model, script in SCRIPTS.items():
        fake_llm.route(model, script)
    apps.use_fake(fake_llm.url)
    yield fake_llm
    await apps.close_clients()


@pytest.fixture(autouse=True)
def no_trace_export() -> Iterator[None]:
    """Plain runs in this process trace into nothing (the SDK's default would export)."""
    provider: Any = get_trace_provider()
    before = list(provider._multi_processor._processors)
    set_trace_processors([])
    yield
    set_trace_processors(before)


@pytest.fixture
async def fid_workers(
    settings: Settings, servers: Servers, client: Client, fake: FakeLLM
) -> AsyncIterator[WorkerFactory]:
    runners = (apps.airline, apps.airline_budget, apps.weather, apps.billing)
    for runner in runners:  # the module's runners submit through this test's client
        runner._client = client
    try:
        async with worker_pool(APP, settings, servers, client, FAKE_LLM_URL=fake.url) as start:
            yield start
    finally:
        for runner in runners:
            runner._client = None


# -- comparing a durable run with the plain one --------------------------------------------


def bodies(reqs: list[Request]) -> Counter[str]:
    return Counter(json.dumps(b, sort_keys=True) for b in comparable(reqs))


def items(result: RunResult) -> list[Any]:
    return result.to_input_list()


def usage(result: RunResult) -> tuple[int, int, int]:
    u = result.context_wrapper.usage
    return (u.requests, u.input_tokens, u.output_tokens)


def assert_same_result(durable: RunResult, plain: RunResult) -> None:
    assert isinstance(durable, RunResult)
    assert durable.final_output == plain.final_output
    assert items(durable) == items(plain)
    assert [type(i).__name__ for i in durable.new_items] == [
        type(i).__name__ for i in plain.new_items
    ]
    assert durable.last_agent.name == plain.last_agent.name
    assert usage(durable) == usage(plain)
    assert [r.output for r in durable.raw_responses] == [r.output for r in plain.raw_responses]
    assert durable.context_wrapper.context == plain.context_wrapper.context


async def finished(runner: Any, handle: Any, *procs: StalwartProcess) -> Any:
    """``runner.result(handle)``; on a timeout, fail with the workers' logs."""
    try:
        return await runner.result(handle, timeout=60)
    except TimeoutError:
        logs = "\n".join(f"--- {p.name}\n{p.log_text()[-6000:]}" for p in procs)
        raise AssertionError(f"run {handle.run_id} did not end\n{logs}") from None


class Since:
    """The requests the fake server received from now on."""

    def __init__(self, fake: FakeLLM) -> None:
        self.fake = fake
        self.start = len(fake.requests())

    def requests(self) -> list[Request]:
        return self.fake.requests()[self.start :]


async def plain_conversation(*turns: str) -> tuple[list[RunResult], apps.AirlineAgentContext]:
    """The customer-service example's own loop, plainly."""
    context = apps.AirlineAgentContext()
    input_items: list[Any] = []
    current: Any = apps.triage_agent
    results = []
    for text in turns:
        input_items.append({"content": text, "role": "user"})
        result = await Runner.run(current, input_items, context=context)
        results.append(result)
        input_items = result.to_input_list()
        current = result.last_agent
    return results, context


async def arrived(counters: aioredis.Redis, run_id: str, point: str) -> bool:
    return bool(await counters.llen(gate_key(run_id, f"{point}:arrived")))


# -- the customer-service example: kills at (a), (b), (c) ----------------------------------


@pytest.mark.slow
async def test_customer_service_survives_kills_as_the_plain_run(
    client: Client,
    fid_workers: WorkerFactory,
    fake: FakeLLM,
    counters: aioredis.Redis,
    supervisor: Any,
) -> None:
    plain_results, plain_context = await plain_conversation(TURN_1, TURN_2)
    plain_turn1 = bodies(
        [r for r in fake.requests() if not _is_turn2(r)]
    )  # the first turn's requests
    assert plain_context.flight_number == "FLT-123" and plain_context.seat_number == "14C"
    assert plain_results[0].final_output == "Done: you are in seat 14C on flight FLT-123."
    assert plain_results[1].final_output.startswith("You are allowed to bring one bag")
    plain_all = bodies(fake.requests())
    workers: list[StalwartProcess] = [await fid_workers("w0", SPAN_WORKER="w0")]

    async def kill_and_resume(name: str) -> StalwartProcess:
        # The next worker first (a loaded machine can take long to start one), then the kill:
        # the run is on the old worker, and only the new one is left to resume it.
        proc = await fid_workers(name, SPAN_WORKER=name)
        workers[-1].kill()
        workers.append(proc)
        return proc

    # No kill, twice, with no context given: each run builds its own (fresh) context.
    for _ in range(2):
        since = Since(fake)
        fresh = await apps.airline.run(TURN_1)
        assert_same_result(fresh, plain_results[0])
        assert bodies(since.requests()) == plain_turn1

    # (b) killed while update_seat runs: the resumed run has the handoff's flight number.
    since = Since(fake)
    run_b = rid()
    await mark_gated(counters, run_b, "update_seat")
    context = apps.AirlineAgentContext()
    handle = await apps.airline.submit([_user(TURN_1)], run_id=run_b, context=context)
    await eventually(lambda: arrived(counters, run_b, "update_seat"), timeout=30)
    await kill_and_resume("w1")
    await open_gate(counters, run_b, "update_seat")
    result = await finished(apps.airline, handle, *workers)
    assert_same_result(result, plain_results[0])
    assert bodies(since.requests()) == plain_turn1
    for name in ("update_seat", "on_seat_booking_handoff"):
        assert await execs(counters, run_b, name) == 1, name

    # (c) killed between update_seat and the next model call; then the second turn runs at
    # result.last_agent with result.to_input_list(), as the example's loop does.
    since = Since(fake)
    run_c = rid()
    point = "llm:Seat Booking Agent:2"
    await mark_gated(counters, run_c, point)
    context = apps.AirlineAgentContext()
    handle = await apps.airline.submit([_user(TURN_1)], run_id=run_c, context=context)
    await eventually(lambda: arrived(counters, run_c, point), timeout=30)
    assert await journaled(client, run_c, "tool:" + _update_seat_call(fake))
    b = await kill_and_resume("w2")
    await open_gate(counters, run_c, point)
    first = await finished(apps.airline, handle, *workers)
    assert_same_result(first, plain_results[0])
    second = await apps.airline.run(
        [*first.to_input_list(), _user(TURN_2)],
        context=first.context_wrapper.context,
        agent=first.last_agent,
    )
    assert_same_result(second, plain_results[1])
    assert bodies(since.requests()) == plain_all
    for name in ("update_seat", "on_seat_booking_handoff"):
        assert await execs(counters, run_c, name) == 1, name
    await _assert_replays_marked(counters, run_c, b.name)
    await _assert_guardrail_usage_counted(client, run_c, fake)

    # (a) killed while the seat agent's last model call is in flight.
    since = Since(fake)
    hold = fake.hold(lambda r: r.model == "gpt-seat" and len(_results_this_turn(r)) == 2)
    run_a = rid()
    context = apps.AirlineAgentContext()
    handle = await apps.airline.submit([_user(TURN_1)], run_id=run_a, context=context)
    held = await hold.arrived(timeout=30)
    await kill_and_resume("w3")
    hold.release()
    result = await finished(apps.airline, handle, *workers)
    assert_same_result(result, plain_results[0])
    assert bodies(since.requests()) == plain_turn1 + bodies([held])  # the killed call, again
    for name in ("update_seat", "on_seat_booking_handoff"):
        assert await execs(counters, run_a, name) == 1, name


def _user(text: str) -> dict[str, Any]:
    return {"content": text, "role": "user"}


def _is_turn2(req: Request) -> bool:
    return req.last_user_text() == TURN_2


def _update_seat_call(fake: FakeLLM) -> str:
    for req in reversed(fake.requests("gpt-seat")):
        for m in req.messages():
            for call in m.get("tool_calls") or []:
                if call["function"]["name"] == "update_seat":
                    return str(call["id"])
    raise AssertionError("no update_seat call")


async def _assert_replays_marked(counters: aioredis.Redis, run_id: str, worker: str) -> None:
    """On the resumed worker, replayed work is marked as replayed, executed work is not."""
    spans = [json.loads(s) for s in await counters.lrange(f"spans:{run_id}", 0, -1)]
    on_b = [s for s in spans if s["worker"] == worker]
    replayed = [s["data"]["data"] for s in on_b if s["data"].get("name") == "stalwart.replayed"]
    kinds = Counter(r["kind"] for r in replayed)
    # Replayed on b: triage's model call, the guardrail, the handoff, the seat agent's first
    # model call and update_seat; live on b: the seat agent's last model call only.
    assert kinds == Counter({"model": 2, "guardrail": 1, "handoff": 1, "tool": 1}), kinds
    responses = [s for s in on_b if s["data"].get("type") == "response"]
    assert len(responses) == 1
    functions = {s["id"]: s for s in on_b if s["data"].get("type") == "function"}
    replayed_tool = next(s for s in on_b if s["data"].get("data", {}).get("kind") == "tool")
    assert functions[replayed_tool["parent"]]["data"]["name"] == "update_seat"


async def _assert_guardrail_usage_counted(client: Client, run_id: str, fake: FakeLLM) -> None:
    """The relevance guardrail's own agent call is a model step with its tokens."""
    done = {e.key: e for e in await entries_of(client, run_id, StepDone)}
    step = done["guardrail:Relevance Guardrail/model:1"]
    guard_req = next(r for r in fake.requests("gpt-guard") if r.last_user_text() == TURN_1)
    assert (step.kind, step.model) == ("model", "gpt-guard")
    assert (step.input_tokens, step.output_tokens) == _tokens(guard_req)


def _tokens(req: Request) -> tuple[int, int]:
    from tests.adapters.fake_llm import _usage

    return _usage(req, guard(req))


# -- the human-in-the-loop example: (d) killed after the approval ------------------------


@pytest.mark.slow
async def test_approval_flow_survives_a_kill_after_the_answer(
    client: Client,
    fid_workers: WorkerFactory,
    fake: FakeLLM,
    counters: aioredis.Redis,
    supervisor: Any,
) -> None:
    agent = apps.weather_agent()
    result = await Runner.run(agent, WEATHER)
    while result.interruptions:
        state = result.to_state()
        for interruption in result.interruptions:
            state.approve(interruption)
        result = await Runner.run(agent, state)
    plain = result
    plain_bodies = bodies(fake.requests())
    assert plain.final_output == (
        "The weather in Oakland is sunny The temperature in Oakland is 20° Celsius"
    )

    a = await fid_workers("a", SPAN_WORKER="a")
    since = Since(fake)
    run_id = rid()
    await mark_gated(counters, run_id, "get_temperature")
    handle = await apps.weather.submit(WEATHER, run_id=run_id)
    requested = await eventually(lambda: _approval_signal(handle), timeout=30)
    await handle.signal(requested, True)
    await eventually(lambda: arrived(counters, run_id, "get_temperature"), timeout=30)
    b = await fid_workers("b", SPAN_WORKER="b")
    a.kill()
    await open_gate(counters, run_id, "get_temperature")
    durable = await finished(apps.weather, handle, a, b)

    assert_same_result(durable, plain)
    assert bodies(since.requests()) == plain_bodies
    for name in ("get_weather", "get_temperature"):
        assert await execs(counters, run_id, name) == 1, name


async def _approval_signal(handle: Any) -> str | None:
    async for ev in handle.events(follow=False):
        if ev.type == "approval.requested":
            return str(ev.data["signal"])
    return None


# -- tools that raise: as the SDK does, once --------------------------------------------


@pytest.mark.slow
async def test_tool_errors_behave_as_the_sdk_does(
    client: Client, fid_workers: WorkerFactory, fake: FakeLLM, counters: aioredis.Redis
) -> None:
    with pytest.raises(UserError) as plain_error:
        await Runner.run(apps.billing_agent(), "charge 30")
    plain_refund = await Runner.run(apps.billing_agent(), "refund 30")
    plain_bodies = bodies(fake.requests())
    await fid_workers("a", SPAN_WORKER="a")

    since = Since(fake)
    handle = await apps.billing.submit("charge 30")
    with pytest.raises(UserError) as durable_error:
        await apps.billing.result(handle, timeout=30)
    assert str(durable_error.value) == str(plain_error.value)
    assert str(durable_error.value) == "Error running tool charge_card: card declined for 30"
    assert await execs(counters, handle.run_id, "charge_card") == 1
    errors = await entries_of(client, handle.run_id, StepError)
    assert len(errors) == 1 and errors[0].kind == "tool"  # once, not retried

    refund = await apps.billing.run("refund 30")
    assert_same_result(refund, plain_refund)
    assert "An error occurred while running the tool" in str(refund.to_input_list())
    assert bodies(since.requests()) == plain_bodies


# -- a session: the history stays in the caller's process ----------------------------------


@pytest.mark.slow
async def test_a_session_keeps_the_conversation_and_inner_agents_count_in_budgets(
    fid_workers: WorkerFactory, fake: FakeLLM
) -> None:
    plain_session, context = SQLiteSession("plain"), apps.AirlineAgentContext()
    first = await Runner.run(apps.triage_agent, TURN_1, session=plain_session, context=context)
    second = await Runner.run(first.last_agent, TURN_2, session=plain_session, context=context)
    plain_bodies = bodies(fake.requests())
    # Enough tokens for the calls before the seat agent's last one, not counting the
    # guardrail's agent; counting it (as budgets must), that last call is refused.
    budget = sum(r.usage.input_tokens + r.usage.output_tokens for r in first.raw_responses[:-1])
    await fid_workers("a", SPAN_WORKER="a", AIRLINE_MAX_TOKENS=str(budget + 1))

    since = Since(fake)
    session, durable_context = SQLiteSession("durable"), apps.AirlineAgentContext()
    one = await apps.airline.run(TURN_1, session=session, context=durable_context)
    two = await apps.airline.run(
        TURN_2, session=session, context=durable_context, agent=one.last_agent
    )
    assert_same_result(one, first)
    assert_same_result(two, second)
    assert await session.get_items() == await plain_session.get_items()
    assert durable_context == context
    assert bodies(since.requests()) == plain_bodies
    session.close()
    plain_session.close()

    with pytest.raises(RunFailed) as over:
        await apps.airline_budget.run(TURN_1)
    assert over.value.error_type == "BudgetExceeded" and "max_tokens" in over.value.message
