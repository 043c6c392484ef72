"""Fidelity: upstream-style LangGraph agents run plainly and durably behave the same.

Each agent (``tests.adapters.langgraph_fidelity_apps``: LangGraph's chatbot tutorial with
tools and human-in-the-loop, the prebuilt ReAct agent calling two tools at once, and a graph
with parallel branches) runs first plainly in the
test process, as LangGraph's docs run it (``graph.invoke`` on a thread, then
``Command(resume=...)``), and then durably on worker processes, SIGKILLed at one point per
scenario: a model call in flight, a tool in flight, between calls, after the human's answer.
Both use the real ``ChatOpenAI`` against the loopback fake server, which logs every request.

Asserted per scenario: the result equals the plain run's (messages, interrupts, report);
every request the model received equals the plain run's (``comparable``), the one in-flight
request that was killed and sent again aside; tools ran as often as in the plain run (once
more only for the one in flight); the usage journaled equals what the plain run's model
calls reported.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("langchain_openai")

import redis.asyncio as aioredis
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import BaseMessage
from langgraph.types import Command, Interrupt

from stalwart import App, BudgetExceeded, Client, RunFailed, Settings
from stalwart.adapters.langgraph import KIND_MODEL, DurableGraphRunner, ThreadBusy
from stalwart.checkpoints import StepDone
from stalwart.testing import StalwartProcess
from tests.adapters import langgraph_fidelity_apps as apps
from tests.adapters.fake_llm import FakeLLM, Reply, Request, ToolCall, comparable, fake_llm
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import COUNTER_ENV, eventually, execs, journal, mark_gated, open_gate

__all__ = ["fake_llm"]  # the fixture, imported for pytest

QUESTION = "What is LangGraph? Then ask an expert how to build an agent with it."
ANSWER = "We, the experts, recommend LangGraph: it is reliable and extensible."
TOPIC = "durable agents"


def script(req: Request) -> Reply:
    """One model for the three agents; decides from the request alone."""
    if "get_weather" in req.tool_names():  # the ReAct agent: two tools at once, then text
        if not req.tool_results():
            cities = ("sf", "nyc")
            return Reply(tool_calls=tuple(ToolCall("get_weather", {"city": c}) for c in cities))
        return Reply(text="Sunny in both: " + " / ".join(req.tool_results()))
    if req.tool_names():  # the chatbot
        results = req.tool_results()
        if not results:
            return Reply(tool_calls=(ToolCall("search", {"query": "LangGraph"}),))
        if len(results) == 1:
            ask = {"query": "How should I build an agent with LangGraph?"}
            return Reply(tool_calls=(ToolCall("human_assistance", ask),))
        return Reply(text=f"Found: {results[0]} Expert: {results[1]}")
    return Reply(text=f"[{req.system()}] {req.last_user_text()[:80]}")


@pytest.fixture
def fake(fake_llm: FakeLLM, servers: Servers, monkeypatch: pytest.MonkeyPatch) -> FakeLLM:
    fake_llm.route(apps.MODEL, script)
    monkeypatch.setenv(COUNTER_ENV, servers.redis_url)  # the plain run's tools count too
    return fake_llm


@pytest.fixture
async def workers(
    settings: Settings, servers: Servers, client: Client, fake: FakeLLM
) -> AsyncIterator[WorkerFactory]:
    app = "tests.adapters.langgraph_fidelity_apps:app"
    async with worker_pool(app, settings, servers, client, FAKE_LLM_URL=fake.url) as start:
        yield start


def runner(client: Client, name: str, graph: Callable[[], Any], **kw: Any) -> DurableGraphRunner:
    """The submitting side's runner (its own app: the workers serve the real one)."""
    return DurableGraphRunner(name, graph, app=App("client"), client=client, **kw)


# -- comparing runs -------------------------------------------------------------------------------


def meaningful(value: Any) -> Any:
    """A result without what differs between any two runs, plain ones too: ids LangGraph and
    LangChain make up at random (message ids, interrupt ids from checkpoint ids)."""
    if isinstance(value, BaseMessage):
        dumped = value.model_dump()
        dumped.pop("id")
        return {"class": type(value).__name__, **dumped}
    if isinstance(value, Interrupt):
        return {"interrupt": value.value}
    if isinstance(value, dict):
        return {k: meaningful(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [meaningful(v) for v in value]
    return value


def bodies(fake: FakeLLM) -> list[dict[str, Any]]:
    return comparable(fake.requests())


def minus_resent(durable: list[dict[str, Any]], held: dict[str, Any]) -> list[dict[str, Any]]:
    """The durable run's requests with the second send of the killed in-flight one removed."""
    first = durable.index(held)
    second = durable.index(held, first + 1)  # it must have been sent again
    return durable[:second] + durable[second + 1 :]


def key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


async def journaled_usage(client: Client, *run_ids: str) -> dict[str, int]:
    tokens = {"input_tokens": 0, "output_tokens": 0, "calls": 0}
    for run_id in run_ids:
        for je in await journal(client, run_id):
            e = je.entry
            if isinstance(e, StepDone) and e.kind == KIND_MODEL:
                assert e.model == apps.MODEL
                tokens["input_tokens"] += e.input_tokens
                tokens["output_tokens"] += e.output_tokens
                tokens["calls"] += 1
    return tokens


def plain_usage(usage: dict[str, Any], calls: int) -> dict[str, int]:
    (only,) = usage.values()
    return {
        "input_tokens": only["input_tokens"],
        "output_tokens": only["output_tokens"],
        "calls": calls,
    }


async def node_journaled(client: Client, run_id: str, node: str) -> bool:
    return any(
        isinstance(je.entry, StepDone) and je.entry.kind == "node" and je.entry.name == node
        for je in await journal(client, run_id)
    )


async def owner_dies(
    proc: StalwartProcess, workers: WorkerFactory, *, then: Callable[[], None] = lambda: None
) -> StalwartProcess:
    """SIGKILL the owner, let whatever it held go, start the worker that takes over.

    Not waiting for its heartbeat: the run finishing on it is the proof it started (a dead
    worker's expired heartbeat can hide the live ones from the registry listing a while).
    """
    proc.kill()
    then()
    return await workers(wait=False)


# -- the chatbot tutorial ---------------------------------------------------------------------------


def plain_chatbot(fake: FakeLLM) -> tuple[Any, Any, dict[str, int], str]:
    """The tutorial's own loop, no Stalwart: invoke on a thread, then resume it."""
    graph = apps.chatbot_graph(fake.url)
    tid = f"plain-{uuid.uuid4().hex}"
    config: Any = {"configurable": {"thread_id": tid}}
    with get_usage_metadata_callback() as cb:
        first = graph.invoke({"messages": [{"role": "user", "content": QUESTION}]}, config)
        final = graph.invoke(Command(resume={"data": ANSWER}), config)
    return first, final, plain_usage(cb.usage_metadata, 3), tid


async def test_chatbot_tutorial_is_the_same_durably_whatever_the_crash(
    client: Client,
    workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    fake: FakeLLM,
) -> None:
    first_plain, final_plain, usage_plain, plain_tid = await asyncio.to_thread(plain_chatbot, fake)
    assert (
        "__interrupt__" in first_plain
        and "Expert: " + ANSWER in final_plain["messages"][-1].content
    )
    plain = bodies(fake)
    assert len(plain) == 3
    assert await execs(counters, plain_tid, "search:LangGraph") == 1
    assert await execs(counters, plain_tid, "human_assistance") == 1
    lg = runner(client, "lg-chatbot", apps.chatbot_graph, interrupts="return")
    owner = await workers("a")

    async def scenario(
        name: str, crash: Callable[[str], Any], rerun: dict[str, int]
    ) -> tuple[str, list[dict[str, Any]]]:
        """One durable conversation on its own thread, the tutorial's loop kept; ``crash``
        kills the owner at one point; returns the thread and the requests sent."""
        nonlocal owner
        fake.clear()
        tid = f"{name}-{uuid.uuid4().hex[:8]}"
        config: Any = {"configurable": {"thread_id": tid}}
        killed = asyncio.ensure_future(crash(tid))
        first_h = await lg.submit(
            {"messages": [{"role": "user", "content": QUESTION}]}, config=config
        )
        first = await lg.result(first_h, timeout=60)
        final_h = await lg.submit(Command(resume={"data": ANSWER}), config=config)
        final = await lg.result(final_h, timeout=60)
        owner = await killed
        assert meaningful(first) == meaningful(first_plain), name
        assert meaningful(final) == meaningful(final_plain), name
        for tool, plain_count in (("search:LangGraph", 1), ("human_assistance", 1)):
            assert await execs(counters, tid, tool) == plain_count + rerun.get(tool, 0), (
                name,
                tool,
            )
        assert await journaled_usage(client, first_h.run_id, final_h.run_id) == usage_plain, name
        return tid, bodies(fake)

    # (a) The model call after the search result is in flight when the owner dies.
    hold = fake.hold(lambda r: len(r.tool_results()) == 1)

    async def model_in_flight(tid: str) -> StalwartProcess:
        held = await hold.arrived()
        assert held.body["messages"][0]["content"] == QUESTION
        return await owner_dies(owner, workers, then=hold.release)

    _, sent = await scenario("model", model_in_flight, {})
    assert hold.request is not None
    assert minus_resent(sent, comparable([hold.request])[0]) == plain

    # (b) The search tool is running when the owner dies: it runs again (at-least-once).
    async def tool_in_flight(tid: str) -> StalwartProcess:
        await eventually(lambda: execs(counters, tid, "search:LangGraph"), timeout=30)
        return await owner_dies(owner, workers)

    async def gated_search(tid: str) -> StalwartProcess:
        await mark_gated(counters, tid, "search:LangGraph")
        proc = await tool_in_flight(tid)
        await open_gate(counters, tid, "search:LangGraph")
        return proc

    _, sent = await scenario("tool", gated_search, {"search:LangGraph": 1})
    assert sent == plain

    # (d) After the human's answer: the resumed tool is running when the owner dies.
    async def after_answer(tid: str) -> StalwartProcess:
        await mark_gated(counters, tid, "human_assistance")
        await eventually(lambda: execs(counters, tid, "human_assistance"), timeout=60)
        proc = await owner_dies(owner, workers)
        await open_gate(counters, tid, "human_assistance")
        return proc

    _, sent = await scenario("answer", after_answer, {"human_assistance": 1})
    assert sent == plain


async def test_a_thread_remembers_across_runs_and_is_held_by_one_run_at_a_time(
    client: Client, workers: WorkerFactory, counters: aioredis.Redis, fake: FakeLLM
) -> None:
    await workers()
    lg = runner(client, "lg-chatbot", lambda: apps.chatbot_graph(fake.url), interrupts="return")
    tid = f"busy-{uuid.uuid4().hex[:8]}"
    config: Any = {"configurable": {"thread_id": tid}}
    await mark_gated(counters, tid, "search:LangGraph")
    first = await lg.submit({"messages": [{"role": "user", "content": QUESTION}]}, config=config)
    await eventually(lambda: execs(counters, tid, "search:LangGraph"), timeout=30)
    second = await lg.submit({"messages": [{"role": "user", "content": "hello?"}]}, config=config)
    with pytest.raises(RunFailed) as refused:
        await lg.result(second, timeout=30)
    assert refused.value.error_type == ThreadBusy.__name__
    assert first.run_id in refused.value.message
    await open_gate(counters, tid, "search:LangGraph")
    interrupted = await lg.result(first, timeout=30)
    assert [i.value for i in interrupted["__interrupt__"]] == [
        {"query": "How should I build an agent with LangGraph?"}
    ]
    # The tutorial's get_state, on the durable thread.
    snapshot = await lg.aget_state(config)
    assert snapshot.next == ("tools",)
    assert [i.value for i in snapshot.interrupts] == [i.value for i in interrupted["__interrupt__"]]
    assert snapshot.values["messages"] == interrupted["messages"]
    # The next run on the thread starts from the first one's state (its interrupt pending).
    final = await lg.run(Command(resume={"data": ANSWER}), config=config, timeout=30)
    assert [m.type for m in final["messages"]] == ["human", "ai", "tool", "ai", "tool", "ai"]
    assert "__interrupt__" not in final
    with pytest.raises(TypeError, match=r"callbacks.*runner"):
        await lg.submit({"messages": []}, config={"callbacks": []})


async def test_command_resume_answers_a_run_that_waits_durably(
    client: Client, workers: WorkerFactory, fake: FakeLLM
) -> None:
    # interrupts="signal": the run waits (passivated when long) instead of returning;
    # the tutorial's Command(resume=...) on the thread answers it through its signal.
    _, final_plain, _, _ = await asyncio.to_thread(plain_chatbot, fake)
    await workers()
    lg = runner(client, "lg-chatbot-signal", apps.chatbot_graph)
    config: Any = {"configurable": {"thread_id": f"signal-{uuid.uuid4().hex[:8]}"}}
    handle = await lg.submit({"messages": [{"role": "user", "content": QUESTION}]}, config=config)

    async def waiting() -> list[Any]:
        return [ev async for ev in handle.events(follow=False) if ev.type == "graph.interrupted"]

    await eventually(waiting, timeout=30)
    with pytest.raises(ValueError, match="does not wait on"):
        await lg.submit(Command(resume={"0" * 32: "?"}), config=config)
    final = await lg.run(Command(resume={"data": ANSWER}), config=config, timeout=30)
    assert meaningful(final) == meaningful(final_plain)
    assert await lg.result(handle, timeout=5) == final  # the waiting run's own result


async def test_the_tutorials_stream_loop_yields_what_graph_stream_yields(
    client: Client, workers: WorkerFactory, fake: FakeLLM
) -> None:
    graph = apps.chatbot_graph(fake.url)
    config: Any = {"configurable": {"thread_id": f"plain-{uuid.uuid4().hex[:8]}"}}
    question = {"messages": [{"role": "user", "content": QUESTION}]}

    def plain() -> list[list[Any]]:
        return [
            list(graph.stream(question, config, stream_mode="values")),
            list(graph.stream(Command(resume={"data": ANSWER}), config, stream_mode="values")),
        ]

    plain_first, plain_final = await asyncio.to_thread(plain)
    assert len(plain_first) == 5 and "__interrupt__" in plain_first[-1]
    await workers()
    lg = runner(client, "lg-chatbot", lambda: apps.chatbot_graph(fake.url), interrupts="return")
    config = {"configurable": {"thread_id": f"stream-{uuid.uuid4().hex[:8]}"}}
    first = [event async for event in lg.astream(question, config=config)]
    final = [event async for event in lg.astream(Command(resume={"data": ANSWER}), config=config)]
    assert meaningful(first) == meaningful(plain_first)
    assert meaningful(final) == meaningful(plain_final)


async def test_budgets_count_the_usage_the_model_reported(
    client: Client, workers: WorkerFactory, fake: FakeLLM
) -> None:
    await workers()
    lg = runner(client, "lg-chatbot-budget", apps.chatbot_graph, interrupts="return")
    config: Any = {"configurable": {"thread_id": f"budget-{uuid.uuid4().hex[:8]}"}}
    with pytest.raises(RunFailed) as spent:
        await lg.run(
            {"messages": [{"role": "user", "content": QUESTION}]}, config=config, timeout=30
        )
    assert spent.value.error_type == BudgetExceeded.__name__
    assert "max_tokens" in spent.value.message
    assert len(fake.requests()) == 1  # the second call was never sent


# -- a graph with parallel branches -----------------------------------------------------------------


def plain_research(fake: FakeLLM) -> tuple[Any, dict[str, int], str]:
    tid = f"plain-{uuid.uuid4().hex}"
    with get_usage_metadata_callback() as cb:
        out = apps.research_graph(fake.url).invoke(
            {"topic": TOPIC, "notes": []}, {"configurable": {"thread_id": tid}}
        )
    return out, plain_usage(cb.usage_metadata, 4), tid


async def test_parallel_branches_are_the_same_durably_whatever_the_crash(
    client: Client,
    workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    fake: FakeLLM,
) -> None:
    plain_out, usage_plain, _ = await asyncio.to_thread(plain_research, fake)
    assert plain_out["report"].startswith("[writer] Write up: ")
    plain = sorted(bodies(fake), key=key)  # the two branches' calls race
    assert len(plain) == 4
    lg = runner(client, "lg-research", apps.research_graph)
    owner = await workers("a")

    # (a) One branch's model call is in flight when the owner dies; the other finished.
    fake.clear()
    hold = fake.hold(lambda r: r.system() == "engineer")
    handle = await lg.submit({"topic": TOPIC, "notes": []})
    await hold.arrived()
    await eventually(lambda: node_journaled(client, handle.run_id, "market"), timeout=30)
    owner = await owner_dies(owner, workers, then=hold.release)
    assert meaningful(await lg.result(handle, timeout=60)) == meaningful(plain_out)
    assert hold.request is not None
    assert sorted(minus_resent(bodies(fake), comparable([hold.request])[0]), key=key) == plain
    assert await journaled_usage(client, handle.run_id) == usage_plain

    # (c) Between calls: both branches are journaled, the plain merge node is running.
    fake.clear()
    run_id = uuid.uuid4().hex
    await mark_gated(counters, run_id, "merge")
    handle = await lg.submit({"topic": TOPIC, "notes": []}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "merge"), timeout=30)
    owner = await owner_dies(owner, workers)
    await open_gate(counters, run_id, "merge")
    assert meaningful(await lg.result(handle, timeout=60)) == meaningful(plain_out)
    assert sorted(bodies(fake), key=key) == plain  # no model call was sent again
    assert await execs(counters, run_id, "merge") == 2  # the node in flight ran again
    assert await journaled_usage(client, run_id) == usage_plain

    # SIGTERM: the drain stops the graph at the first journal write after the held model
    # call returns, before its usage is journaled; the usage was stored with the task's
    # writes, and the next owner journals it.
    fake.clear()
    hold = fake.hold(lambda r: r.system() == "engineer")
    handle = await lg.submit({"topic": TOPIC, "notes": []})
    await hold.arrived()
    await eventually(lambda: node_journaled(client, handle.run_id, "market"), timeout=30)
    assert owner.proc is not None
    await workers(wait=False)  # takes the run over when the drain hands it back
    owner.proc.terminate()
    hold.release()
    assert meaningful(await lg.result(handle, timeout=60)) == meaningful(plain_out)
    assert await asyncio.to_thread(owner.proc.wait, 20) == 0
    by = {
        je.entry.key.split(":")[1]: je.entry.worker  # node name: who journaled its model call
        for je in await journal(client, handle.run_id)
        if isinstance(je.entry, StepDone) and je.entry.kind == KIND_MODEL
    }
    assert by["tech"] != by["market"], by  # journaled by the next owner, from the saver
    assert sorted(bodies(fake), key=key) == plain  # the held call finished on the old owner
    assert await journaled_usage(client, handle.run_id) == usage_plain


# -- the prebuilt ReAct agent, two tools at once -------------------------------------------------


async def test_react_agent_with_parallel_tools_is_the_same_durably(
    client: Client,
    workers: WorkerFactory,
    supervisor: Any,
    counters: aioredis.Redis,
    fake: FakeLLM,
) -> None:
    question = {"messages": [{"role": "user", "content": "What's the weather in sf and nyc?"}]}
    tid = f"plain-{uuid.uuid4().hex}"
    with get_usage_metadata_callback() as cb:
        plain_out = await asyncio.to_thread(
            apps.react_graph(fake.url).invoke, question, {"configurable": {"thread_id": tid}}
        )
    usage_plain = plain_usage(cb.usage_metadata, 2)
    assert plain_out["messages"][-1].content.startswith("Sunny in both")
    plain = bodies(fake)
    assert len(plain) == 2
    lg = runner(client, "lg-react", apps.react_graph)
    owner = await workers("a")

    # (b) One of the two parallel tool calls is running when the owner dies; the other
    # finished (its task is journaled): only the one in flight runs again.
    fake.clear()
    run_id = uuid.uuid4().hex
    await mark_gated(counters, run_id, "weather:nyc")
    handle = await lg.submit(question, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "weather:nyc"), timeout=30)

    async def one_tool_journaled() -> bool:
        return await node_journaled(client, run_id, "tools")

    await eventually(one_tool_journaled, timeout=30)
    await owner_dies(owner, workers)
    await open_gate(counters, run_id, "weather:nyc")
    assert meaningful(await lg.result(handle, timeout=60)) == meaningful(plain_out)
    assert bodies(fake) == plain
    assert await execs(counters, run_id, "weather:sf") == 1
    assert await execs(counters, run_id, "weather:nyc") == 2
    assert await journaled_usage(client, run_id) == usage_plain
