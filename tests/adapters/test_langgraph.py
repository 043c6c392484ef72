"""LangGraph adapter: the saver (conformance, storage growth, fencing) and durable graph runs
in real worker processes, SIGKILLed mid-run and resumed by another worker."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import operator
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict, cast

import pytest

pytest.importorskip("langgraph")

import redis
import redis.asyncio as aioredis
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel

from stalwart import Client, RunCancelled, RunFailed, Settings
from stalwart.adapters.langgraph import KIND_NODE, StalwartSaver, _codec
from stalwart.adapters.langgraph._serde import SafeSerializer, declared_types, type_key
from stalwart.checkpoints import Finished, Started, StepDone
from stalwart.errors import DisallowedTypeError, LeaseLost
from stalwart.testing import StalwartProcess
from tests.adapters.tampering import MARKER_ENV, MARKER_MODULE
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import (
    at_least,
    eventually,
    execs,
    gate_key,
    journal,
    journaled,
    mark_gated,
    open_gate,
    owners,
    rid,
)

# -- codec -----------------------------------------------------------------------------------


def test_list_deltas_round_trip() -> None:
    import ormsgpack

    first = ormsgpack.packb(["a" * 10, {"b": 1}])
    blob1, state1 = _codec.encode_blob(("msgpack", first), None, "v1")
    grown = ormsgpack.packb(["a" * 10, {"b": 1}, *range(20)])  # crosses the fixarray limit
    blob2, state2 = _codec.encode_blob(("msgpack", grown), state1, "v2")
    assert _codec.blob_base(blob2) == "v1"
    assert len(blob2) < len(grown)  # only the 20 new elements
    typed, state = _codec.decode_chain([blob2, blob1], "v2")
    assert typed == ("msgpack", grown) and state == state2
    # A list that does not extend the previous one is stored whole.
    other = ormsgpack.packb(["z"])
    blob3, _ = _codec.encode_blob(("msgpack", other), state2, "v3")
    assert _codec.blob_base(blob3) == ""
    assert _codec.decode_chain([blob3], "v3")[0] == ("msgpack", other)
    # Anything else is stored as it is.
    blob4, state4 = _codec.encode_blob(("msgpack", ormsgpack.packb({"k": 1})), state2, "v4")
    assert state4 is None and _codec.decode_chain([blob4], "v4")[0] == (
        "msgpack",
        ormsgpack.packb({"k": 1}),
    )
    assert _codec.decode_chain([_codec.encode_blob(None, None, "v5")[0]], "v5")[0] is None


# -- the saver on its own --------------------------------------------------------------------


@pytest.fixture
async def saver(servers: Servers, namespace: str) -> AsyncIterator[StalwartSaver]:
    s = StalwartSaver.from_url(servers.redis_url, namespace=namespace)
    yield s
    await s.aclose()


async def test_conformance_suite(servers: Servers) -> None:

    @checkpointer_test(name="StalwartSaver")
    async def factory() -> AsyncIterator[StalwartSaver]:
        s = StalwartSaver.from_url(servers.redis_url, namespace="conf" + uuid.uuid4().hex[:8])
        yield s
        await s.aclose()

    report = await validate(factory)
    failures = {cap: r.failures for cap, r in report.results.items() if not r.passed}
    assert not failures, failures
    # Every capability, the extended ones (delete_for_runs, copy_thread, prune) included.
    assert len(report.results) == 8
    assert sum(r.tests_passed for r in report.results.values()) == 81


class Counter(TypedDict):
    items: Annotated[list[str], operator.add]
    n: int


def _counting_graph(limit: int) -> Any:
    def step(state: Counter) -> dict[str, Any]:
        return {"items": [f"item {state['n']}"], "n": state["n"] + 1}

    b = StateGraph(Counter)
    b.add_node("step", step)
    b.add_edge(START, "step")
    b.add_conditional_edges("step", lambda s: END if s["n"] >= limit else "step")
    return b


async def test_sync_invoke_history_and_delete(saver: StalwartSaver) -> None:
    graph = _counting_graph(5).compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "t-sync"}}
    out = graph.invoke({"items": [], "n": 0}, config, durability="sync")
    assert out == {"items": [f"item {i}" for i in range(5)], "n": 5}
    history = [s.values for s in graph.get_state_history(config)]
    assert history[0] == out and len(history) == 7  # input, 5 steps, the __start__ step
    assert [s.values async for s in graph.aget_state_history(config)] == history
    await saver.adelete_thread("t-sync")
    assert graph.get_state(config).values == {}


async def test_prune_keeps_the_latest_state_whole(
    saver: StalwartSaver, counters: aioredis.Redis
) -> None:
    graph = _counting_graph(4).compile(checkpointer=saver)
    config: Any = {"configurable": {"thread_id": "t-prune"}}
    final = await graph.ainvoke({"items": [], "n": 0}, config, durability="sync")
    keys = _codec.Keys(saver.namespace, "t-prune")
    assert await counters.hlen(keys.blobs("")) > 10  # one per changed channel per step
    await saver.aprune(["t-prune"])
    assert [s.values async for s in graph.aget_state_history(config)] == [final]
    assert await counters.hlen(keys.blobs("")) <= 5  # the latest values, each stored whole
    # The pruned thread goes on: the next run extends the list from its new base.
    more = (
        await _counting_graph(6)
        .compile(checkpointer=saver)
        .ainvoke({"items": [], "n": 4}, config, durability="sync")
    )
    assert more["items"] == [f"item {i}" for i in range(6)]


async def test_fenced_saver_refuses_a_stale_epoch(servers: Servers, namespace: str) -> None:
    r = aioredis.Redis.from_url(servers.redis_url)
    run_id = rid()
    await r.hset(f"{namespace}:{{{run_id}}}:run", mapping={"epoch": "7"})
    owner = StalwartSaver(r, namespace=namespace, fence_epoch=7)
    zombie = StalwartSaver(r, namespace=namespace, fence_epoch=3)
    config: Any = {"configurable": {"thread_id": run_id}, "recursion_limit": 50}
    assert await _counting_graph(3).compile(checkpointer=owner).ainvoke(
        {"items": [], "n": 0}, config, durability="sync"
    ) == {"items": ["item 0", "item 1", "item 2"], "n": 3}
    before = await owner.aget_tuple(config)
    with pytest.raises(LeaseLost, match="epoch 3 no longer owns"):
        await (
            _counting_graph(6)
            .compile(checkpointer=zombie)
            .ainvoke({"items": [], "n": 0}, config, durability="sync")
        )
    after = await owner.aget_tuple(config)
    assert before is not None and after is not None
    assert after.checkpoint["id"] == before.checkpoint["id"]  # nothing of the zombie's
    await r.aclose()


# -- durable runs in worker processes --------------------------------------------------------


@pytest.fixture
async def lg_workers(
    settings: Settings, servers: Servers, client: Client
) -> AsyncIterator[WorkerFactory]:
    """Worker processes serving ``tests.adapters.langgraph_apps:app``."""
    async with worker_pool("tests.adapters.langgraph_apps:app", settings, servers, client) as start:
        yield start


async def tasks_done(client: Client, run_id: str, name: str) -> int:
    return sum(
        isinstance(je.entry, StepDone) and je.entry.kind == KIND_NODE and je.entry.name == name
        for je in await journal(client, run_id)
    )


def _agent_calls() -> list[str]:
    return [
        "model:0",
        "lookup:pricing",
        "lookup:competitors",
        "lookup:churn",
        "model:1",
        "summarize:market",
        "model:2",
    ]


@pytest.mark.slow
async def test_agent_sigkilled_during_parallel_tool_calls_resumes_elsewhere(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await lg_workers("a")
    question = {"messages": [{"role": "user", "content": "research the market"}]}
    run_id = rid()
    # lookup:churn blocks inside the tool; the other two parallel calls finish.
    await mark_gated(counters, run_id, "lookup:churn")
    handle = await client.submit("lg-agent", question, run_id=run_id)

    async def two_tools_stored() -> bool:
        return await tasks_done(client, run_id, "tools") == 2

    await eventually(two_tools_stored, timeout=30)
    assert await execs(counters, run_id, "lookup:churn") == 1  # in flight
    a.kill()
    await open_gate(counters, run_id, "lookup:churn")  # for the next attempt
    b = await lg_workers("b")
    result = await handle.result(timeout=60)

    # The same conversation as an uninterrupted run of the same agent.
    baseline = await client.submit("lg-agent", question)
    assert await baseline.result(timeout=60) == result
    assert result[-1] == ["ai", "final: pricing, competitors and churn summarized", [], None]
    assert [c for c in result[1][2]] == ["lookup:call-a", "lookup:call-b", "lookup:call-c"]

    # Every completed model and tool call ran once; only the call in flight ran again.
    for call in _agent_calls():
        expected = 2 if call == "lookup:churn" else 1
        assert await execs(counters, run_id, call) == expected, call
    entries = await journal(client, run_id)
    assert owners(entries) == ["a", "b"]
    assert isinstance(entries[-1].entry, Finished)
    by_worker = [
        (je.entry.name, je.entry.worker) for je in entries if isinstance(je.entry, StepDone)
    ]
    assert by_worker == [
        ("model", "a"),  # each model call's usage, journaled with the task that made it
        ("agent", "a"),
        ("tools", "a"),
        ("tools", "a"),
        ("tools", "b"),
        ("model", "b"),
        ("agent", "b"),
        ("tools", "b"),
        ("model", "b"),
        ("agent", "b"),
    ]
    events = [ev async for ev in handle.events(follow=False)]
    resumed = [ev for ev in events if ev.type == "run.resumed"]
    assert len(resumed) == 1 and resumed[0].data == {"journaled_steps": 4}
    assert sum(ev.type == "step.completed" for ev in events) == 10
    assert b.alive()


@pytest.mark.slow
async def test_frozen_worker_comes_back_as_a_zombie_and_stores_nothing(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await lg_workers("a")
    question = {"messages": [("user", "go")]}
    run_id = rid()
    await mark_gated(counters, run_id, "lookup:churn")
    handle = await client.submit("lg-agent", question, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "lookup:churn"), timeout=30)
    a.pause()  # SIGSTOP inside the tool call: its lease expires, B takes the run over
    try:
        await lg_workers("b")

        async def taken_over() -> bool:
            record = await handle.status()
            return record.worker == "b" and await execs(counters, run_id, "lookup:churn") == 2

        await eventually(taken_over, timeout=30)
        # Two tokens: Redis hands one to A's still-pending BLPOP, one to B's.
        await counters.lpush(gate_key(run_id, "lookup:churn"), "1", "2")
        result = await handle.result(timeout=60)
    finally:
        a.resume()
    await eventually(lambda: _logged(a, "lease"), timeout=30, message=lambda: a.log_text()[-3000:])
    assert a.alive(), "the zombie worker should give the run up, not crash"

    baseline = await client.submit("lg-agent", question)
    assert await baseline.result(timeout=60) == result
    # A zombie checkpoint would be one more than an undisturbed run of the same graph has.
    root = _codec.Keys(client.store.ns, run_id).ids("")
    assert await counters.zcard(root) == await counters.zcard(
        _codec.Keys(client.store.ns, baseline.run_id).ids("")
    )
    entries = await journal(client, run_id)
    b_epoch = next(
        je.entry.epoch for je in entries if isinstance(je.entry, Started) and je.entry.worker == "b"
    )
    b_start = next(
        je.seq for je in entries if isinstance(je.entry, Started) and je.entry.worker == "b"
    )
    assert all(je.entry.epoch == b_epoch for je in entries if je.seq > b_start), (
        "an entry from the zombie's epoch after the takeover"
    )


async def _logged(proc: StalwartProcess, needle: str) -> bool:
    return needle in proc.log_text()


@pytest.mark.slow
async def test_sigterm_hands_the_graph_over_after_the_running_tool(
    client: Client, lg_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    # No supervisor: only the draining worker's own resume request can move the run.
    a = await lg_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "lookup:churn")
    handle = await client.submit("lg-agent", {"messages": [("user", "go")]}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "lookup:churn"), timeout=30)
    await eventually(lambda: at_least(tasks_done(client, run_id, "tools"), 2), timeout=30)
    assert a.proc is not None
    a.proc.terminate()  # SIGTERM: drain; the tool in flight may finish and is kept
    await lg_workers("b")
    await open_gate(counters, run_id, "lookup:churn")
    result = await handle.result(timeout=60)
    assert result[-1][1] == "final: pricing, competitors and churn summarized"
    assert await asyncio.to_thread(a.proc.wait, 20) == 0
    for call in _agent_calls():
        assert await execs(counters, run_id, call) == 1, call
    entries = await journal(client, run_id)
    assert owners(entries) == ["a", "b"]
    # The tool that finished during the drain was stored by A; A stopped at that task's
    # journal step, so B journals it (late) before going on.
    done = [je.entry for je in entries if isinstance(je.entry, StepDone)]
    assert [(e.name, e.worker) for e in done] == [
        ("model", "a"),  # each model call's usage, journaled with the task that made it
        ("agent", "a"),
        ("tools", "a"),
        ("tools", "a"),
        ("tools", "b"),
        ("model", "b"),
        ("agent", "b"),
        ("tools", "b"),
        ("model", "b"),
        ("agent", "b"),
    ]


@pytest.mark.slow
async def test_subgraph_sigkilled_mid_way_resumes_from_its_last_node(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await lg_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "sub:search")
    handle = await client.submit("lg-team", {"topic": "batteries"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "sub:search"), timeout=30)
    assert await tasks_done(client, run_id, "plan") == 1
    a.kill()
    await open_gate(counters, run_id, "sub:search")
    await lg_workers("b")

    result = await handle.result(timeout=60)
    assert result == {
        "topic": "batteries",
        "notes": [
            "brief: batteries",
            "reviewed: plan for batteries | 3 sources on batteries | draft on batteries",
        ],
        "findings": ["plan for batteries", "3 sources on batteries", "draft on batteries"],
    }
    ran = {c: await execs(counters, run_id, c) for c in ("parent:brief", "sub:plan", "sub:write")}
    assert ran == {"parent:brief": 1, "sub:plan": 1, "sub:write": 1}
    assert await execs(counters, run_id, "sub:search") == 2  # it was in flight
    assert await execs(counters, run_id, "parent:review") == 1
    steps = [
        (je.entry.name, je.entry.worker)
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone)
    ]
    assert steps == [
        ("brief", "a"),
        ("plan", "a"),
        ("search", "b"),
        ("write", "b"),
        ("researcher", "b"),
        ("review", "b"),
    ]


@pytest.mark.slow
async def test_functional_api_tasks_survive_a_sigkill(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await lg_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "combine")
    handle = await client.submit("lg-func", ["x", "y", "z"], run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "combine"), timeout=30)

    async def fetches_journaled() -> bool:
        # The journal mirror of finished tasks is written beside LangGraph's own checkpoint.
        return await tasks_done(client, run_id, "fetch") == 3

    await eventually(fetches_journaled, timeout=10)
    a.kill()
    await open_gate(counters, run_id, "combine")
    await lg_workers("b")
    assert await handle.result(timeout=60) == "x-data + y-data + z-data"
    for source in ("x", "y", "z"):
        assert await execs(counters, run_id, f"fetch:{source}") == 1
    assert await execs(counters, run_id, "combine") == 2


async def test_interrupt_ends_the_run_clearly_or_is_answered(
    client: Client, lg_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await lg_workers()
    plain = await client.submit("lg-approval", {"request": "refund"})
    with pytest.raises(RunFailed) as info:
        await plain.result(timeout=30)
    assert info.value.error_type == "GraphInterrupted"
    assert "approve refund?" in info.value.message and "on_interrupt" in info.value.message
    assert await execs(counters, plain.run_id, "approved") == 0

    answered = await client.submit("lg-approval-auto", {"request": "refund"})
    result = await answered.result(timeout=30)
    assert result == {"request": "refund", "decision": "yes to approve refund?"}
    entries = await journal(client, answered.run_id)
    assert [je.entry.kind for je in entries if isinstance(je.entry, StepDone)] == [
        "interrupt",
        KIND_NODE,
    ]


async def test_interrupt_waits_for_a_durable_signal_across_a_crash(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    a = await lg_workers("a", STALWART_PASSIVATE_AFTER="60")
    run_id = rid()
    handle = await client.submit("lg-approval-signal", {"request": "refund"}, run_id=run_id)

    async def asked() -> Any:
        async for ev in handle.events(follow=False):
            if ev.type == "graph.interrupted":
                return ev
        return None

    ev = await eventually(asked, timeout=30)
    (question,) = ev.data["interrupts"]
    assert question["value"] == {"question": "approve refund?"}
    a.kill()  # waiting for the answer when the worker dies
    await lg_workers("b", STALWART_PASSIVATE_AFTER="0.5")

    async def passivated() -> bool:
        return (await handle.status()).status == "waiting"

    await eventually(passivated, timeout=30)
    assert await handle.signal(question["signal"], "approved by ana") == "woke"
    result = await handle.result(timeout=30)
    assert result == {"request": "refund", "decision": "approved by ana"}
    assert await execs(counters, run_id, "approved") == 1
    # Announced by A, and again by B (still open then); not by the owner the answer woke.
    assert len(await _interrupted_events(handle)) == 2


async def test_cancel_stops_a_graph_at_its_next_task(
    client: Client, lg_workers: WorkerFactory, counters: aioredis.Redis
) -> None:
    await lg_workers()
    run_id = rid()
    await mark_gated(counters, run_id, "sub:plan")
    handle = await client.submit("lg-team", {"topic": "x"}, run_id=run_id)
    await eventually(lambda: execs(counters, run_id, "sub:plan"), timeout=30)
    assert await handle.cancel("enough") == "requested"
    await open_gate(counters, run_id, "sub:plan")
    with pytest.raises(RunCancelled, match="enough"):
        await handle.result(timeout=30)
    assert await execs(counters, run_id, "sub:search") == 0


async def _thread_bytes(client: Client, run_id: str) -> tuple[int, int]:
    """(MEMORY USAGE, summed key + value lengths) of the run's LangGraph keys and journal."""
    r = client.store.redis
    usage = await client.store.journal_bytes(run_id)
    lengths = 0
    rows = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]", await r.xrange(client.store.journal_key(run_id))
    )
    for _, fields in rows:
        lengths += sum(len(k) + len(v) for k, v in fields.items())
    async for key in r.scan_iter(match=f"{client.store.ns}:{{{run_id}}}:lg:*", count=1000):
        usage += int(await r.memory_usage(key, samples=0) or 0)
        kind = await r.type(key)
        if kind == b"hash":
            lengths += sum(len(k) + len(v) for k, v in (await r.hgetall(key)).items())
        elif kind == b"zset":
            lengths += sum(len(m) for m in await r.zrange(key, 0, -1))
        elif kind == b"set":
            lengths += sum(len(m) for m in await r.smembers(key))
    return usage, lengths


@pytest.mark.slow
async def test_storage_grows_linearly_with_steps(client: Client, lg_workers: WorkerFactory) -> None:
    await lg_workers()
    sizes: dict[int, tuple[int, int]] = {}
    for steps in (10, 100, 1000):
        handle = await client.submit("lg-loop", {"messages": [], "n": 0, "limit": steps})
        assert await handle.result(timeout=120) == {"n": steps, "messages": steps}
        sizes[steps] = await _thread_bytes(client, handle.run_id)
    print("\nLangGraph run storage (MEMORY USAGE, payload bytes):")
    for steps, (usage, payload) in sizes.items():
        print(
            f"  {steps:5d} steps: {usage:9d} B ({usage / steps:7.0f}/step), payload {payload:9d} B"
        )
    for i in (0, 1):  # usage and payload
        per_step_low = (sizes[100][i] - sizes[10][i]) / 90
        per_step_high = (sizes[1000][i] - sizes[100][i]) / 900
        # Linear: each step adds about the same; the whole state each step would add ~10x more
        # per step between 100 and 1000 steps than between 10 and 100.
        assert 0.7 < per_step_high / per_step_low < 1.4, (per_step_low, per_step_high)


# -- deserialization safety: a checkpoint never makes a worker import or call what it names ----


def _ext(code: int, *parts: Any) -> Any:
    import ormsgpack

    return ormsgpack.Ext(code, ormsgpack.packb(list(parts)))


def _crafted(command: str) -> bytes:
    """A msgpack value LangGraph's default serializer would turn into ``os.system(command)``
    and an import of the marker module, nested in an ordinary dict and list."""
    import ormsgpack

    return ormsgpack.packb(
        {
            "ok": [1, "two"],
            "run": [_ext(1, "os", "system", [command])],  # positional-args constructor
            "mod": _ext(2, MARKER_MODULE, "EvilState", {"x": 1}),  # keyword constructor
        }
    )


class Finding(BaseModel):
    text: str


class Report(BaseModel):
    title: str
    findings: list[Finding]


@dataclasses.dataclass
class Note:
    body: str


def test_safe_serializer_rebuilds_allowed_types_and_refuses_the_rest(tmp_path: Any) -> None:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.types import Command, Interrupt, Send

    serde = SafeSerializer([Report, Finding, Note])
    values = [
        [HumanMessage("hi", id="1"), AIMessage("yo", id="2"), ToolMessage("r", tool_call_id="c")],
        Command(goto="x", update={"k": 1}),
        Send("node", {"a": 1}),
        Interrupt(value={"q": "?"}, id="i1"),
        Report(title="t", findings=[Finding(text="f")]),
        Note(body="b"),
        {"when": datetime.datetime(2026, 1, 2), "ids": {uuid.UUID(int=1)}},
    ]
    for value in values:
        assert serde.loads_typed(serde.dumps_typed(value)) == value

    pwned = tmp_path / "pwned"
    loaded = set(sys.modules)
    with pytest.raises(DisallowedTypeError) as refused:
        serde.loads_typed(("msgpack", _crafted(f"touch {pwned}")))
    assert refused.value.type_name == "os.system"
    assert "allowed_types" in str(refused.value)
    assert not pwned.exists()
    assert set(sys.modules) - loaded == set()
    # An object that cannot be read is refused too: what follows it would go unchecked.
    import ormsgpack

    broken = ormsgpack.packb([ormsgpack.Ext(2, b"\xc1"), _ext(1, "os", "system", ["x"])])
    with pytest.raises(DisallowedTypeError, match="undecodable"):
        serde.loads_typed(("msgpack", broken))
    # A model nobody allowed is refused too, not handed back as its raw fields.
    with pytest.raises(DisallowedTypeError, match="Report"):
        SafeSerializer().loads_typed(serde.dumps_typed(Report(title="t", findings=[])))
    # Formats the saver never writes are refused outright.
    for kind in ("pickle", "json"):
        with pytest.raises(DisallowedTypeError):
            serde.loads_typed((kind, b"\x80\x04N."))
    # LangGraph's strict-mode compile adds a graph's types to a copy.
    wider = SafeSerializer().with_msgpack_allowlist([Report, Finding])
    assert wider.loads_typed(serde.dumps_typed(Report(title="t", findings=[])))


class DeclaredState(BaseModel):
    report: Report | None = None
    notes: Annotated[list[Note], operator.add] = []


def test_a_graph_allows_the_types_its_state_declares() -> None:
    b = StateGraph(DeclaredState)
    b.add_node("n", lambda s: {})
    b.add_edge(START, "n")
    found = declared_types(b.compile())
    assert {type_key(t) for t in (DeclaredState, Report, Finding, Note)} <= found
    saver = StalwartSaver(sync_client=redis.Redis(), allowed_types=[Note])  # never connects
    assert isinstance(saver.serde, SafeSerializer) and type_key(Note) in saver.serde.allowed


@pytest.mark.slow
async def test_a_crafted_checkpoint_fails_the_resumed_run_without_running_anything(
    client: Client, lg_workers: WorkerFactory, tmp_path: Any
) -> None:
    marker, pwned = tmp_path / "imported", tmp_path / "pwned"
    await lg_workers("a", STALWART_PASSIVATE_AFTER="0.5", **{MARKER_ENV: str(marker)})
    run_id = rid()
    handle = await client.submit("lg-approval-signal", {"request": "refund"}, run_id=run_id)

    async def asked() -> Any:
        async for ev in handle.events(follow=False):
            if ev.type == "graph.interrupted":
                return ev
        return None

    (question,) = (await eventually(asked, timeout=30)).data["interrupts"]

    async def passivated() -> bool:
        return (await handle.status()).status == "waiting"

    await eventually(passivated, timeout=30)
    # Someone who can write Redis replaces the stored state channel with a crafted value.
    blobs = _codec.Keys(client.store.ns, run_id).blobs("")
    crafted = _codec.encode_blob(("msgpack", _crafted(f"touch {pwned}")), None, "v")[0]
    fields = [f for f in await client.store.redis.hkeys(blobs) if f.startswith(b"request\0")]
    assert fields
    await client.store.redis.hset(blobs, mapping=dict.fromkeys(fields, crafted))

    assert await handle.signal(question["signal"], "approved") == "woke"
    with pytest.raises(RunFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.error_type == "DisallowedTypeError"
    assert "'os.system'" in failed.value.message and "allowed_types" in failed.value.message
    assert not pwned.exists()
    assert not marker.exists()


async def _interrupted_events(handle: Any) -> list[Any]:
    return [ev async for ev in handle.events(follow=False) if ev.type == "graph.interrupted"]


@pytest.mark.slow
async def test_a_crash_after_an_answered_interrupt_neither_asks_nor_fails(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    # Killed in the node that resumed after the answer: LangGraph had not stored the answer
    # (a resume by interrupt id lives in the invocation's config), so the new owner's graph
    # raises the interrupt again. The journaled answer is given back to it; the interrupt is
    # not announced again, and the journaled signal wait is no divergence.
    a = await lg_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "approved")
    handle = await client.submit("lg-approval-signal", {"request": "refund"}, run_id=run_id)
    (first,) = await eventually(lambda: _interrupted_events(handle), timeout=30)
    (question,) = first.data["interrupts"]
    await handle.signal(question["signal"], "approved by ana")
    await eventually(lambda: execs(counters, run_id, "approved"), timeout=30)
    a.kill()
    await open_gate(counters, run_id, "approved")
    await lg_workers("b")
    result = await handle.result(timeout=60)
    assert result == {"request": "refund", "decision": "approved by ana"}
    assert await execs(counters, run_id, "approved") == 2  # in flight at the kill
    assert len(await _interrupted_events(handle)) == 1
    assert owners(await journal(client, run_id)) == ["a", "b"]


@pytest.mark.slow
async def test_a_crash_after_the_answered_node_finished_is_no_divergence(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    # The neighbour: the resumed node's writes are stored, so LangGraph does not raise the
    # interrupt again at all and the signal wait is never asked for on replay.
    a = await lg_workers("a")
    run_id = rid()
    await mark_gated(counters, run_id, "after")
    handle = await client.submit("lg-approval-then", {"request": "refund"}, run_id=run_id)
    (first,) = await eventually(lambda: _interrupted_events(handle), timeout=30)
    (question,) = first.data["interrupts"]
    await handle.signal(question["signal"], "yes")
    await eventually(lambda: execs(counters, run_id, "after"), timeout=30)
    a.kill()
    await open_gate(counters, run_id, "after")
    await lg_workers("b")
    result = await handle.result(timeout=60)
    assert result == {"request": "refund", "decision": "yes", "done": True}
    assert await execs(counters, run_id, "approved") == 1
    assert len(await _interrupted_events(handle)) == 1


@pytest.mark.slow
async def test_parallel_and_subgraph_interrupts_answered_one_by_one_across_crashes(
    client: Client, lg_workers: WorkerFactory, supervisor: Any, counters: aioredis.Redis
) -> None:
    # Neighbours: two interrupts at once, one in a parallel branch, one in a subgraph. The
    # first is answered, then the owner dies (waiting for the second): the next owner gives
    # the answer back to the graph and announces only the one still open. Its answer comes,
    # and its node is killed while it runs: the last owner asks and announces nothing.
    # Owners that keep the waiting run (no passivation), so each placement is one owner's.
    a = await lg_workers("a", STALWART_PASSIVATE_AFTER="60")
    run_id = rid()
    handle = await client.submit("lg-approval-pair", {"request": "refund"}, run_id=run_id)
    (first,) = await eventually(lambda: _interrupted_events(handle), timeout=30)
    # Answered in the order the run waits for them (by interrupt id).
    one, other = sorted(first.data["interrupts"], key=lambda i: i["id"])
    node = {"legal: refund?": "legal", "finance: refund?": "finance"}
    one_node, other_node = node[one["value"]["question"]], node[other["value"]["question"]]
    await handle.signal(one["signal"], "yes")
    await eventually(lambda: journaled(client, run_id, f"signal:{one['signal']}"), timeout=30)
    a.kill()
    b = await lg_workers("b", STALWART_PASSIVATE_AFTER="60")

    async def announced_again() -> list[Any]:
        events = await _interrupted_events(handle)
        return events if len(events) == 2 else []

    again = (await eventually(announced_again, timeout=30))[1]
    assert [i["id"] for i in again.data["interrupts"]] == [other["id"]]
    await mark_gated(counters, run_id, other_node)
    await handle.signal(other["signal"], "yes")
    await eventually(lambda: execs(counters, run_id, other_node), timeout=30)
    b.kill()
    await open_gate(counters, run_id, other_node)
    await lg_workers("c")
    result = await handle.result(timeout=60)
    assert sorted(result["answers"]) == ["finance yes", "legal yes"]
    assert len(await _interrupted_events(handle)) == 2
    assert await execs(counters, run_id, one_node) == 1
    assert await execs(counters, run_id, other_node) == 2  # in flight at the second kill


def test_requests_carry_langgraph_inputs_and_refuse_what_cannot_travel() -> None:
    from langchain_core.messages import AIMessage, HumanMessage
    from langgraph.types import Command, Interrupt, Send

    from stalwart.adapters.langgraph import _request

    # A bare input stays what any client sends; messages travel as plain data.
    assert _request.encode({"n": 1}, None) == {"n": 1}
    sent = _request.encode({"messages": [HumanMessage("hi")]}, None)
    assert sent["messages"][0]["type"] == "human"
    # A Command and a config travel together, and come back as LangGraph's own.
    config = {"configurable": {"thread_id": "t1", "user": "ana"}, "recursion_limit": 9}
    wire = _request.encode(Command(resume={"data": "ok"}, goto="review"), config)
    req = _request.decode(wire)
    assert req.command == Command(resume={"data": "ok"}, goto="review")
    assert req.thread_id == "t1" and req.config == config
    for bad, says in [
        (({"callbacks": []},), "give it to the runner"),
        (({"configurable": {"checkpoint_id": "x"}},), "cannot be given per run"),
        (({"configurable": {"thread_id": object()}},), "plain data"),
        (({"checkpointer": 1},), "not a per-run option"),
    ]:
        with pytest.raises(TypeError, match=says):
            _request.encode({}, *bad)
    with pytest.raises(TypeError, match="node names"):
        _request.encode(Command(goto=Send("n", {})), None)
    with pytest.raises(TypeError, match=r"a object cannot travel.*input_fn"):
        _request.encode({"doc": object()}, None)
    # Results: messages and interrupts are objects again, other data stays as it is.
    state = {
        "messages": [HumanMessage("hi", id="1"), AIMessage("yo", id="2")],
        "__interrupt__": [Interrupt(value={"q": "?"}, id="i1")],
        "other": {"type": "ai", "k": 1},
    }
    from stalwart.adapters.langgraph import to_builtins

    assert _request.rebuild(to_builtins(state)) == state
    # Command(resume=...) as answers to the interrupts a run waits on.
    ids = ["a" * 32, "b" * 32]
    assert _request.answers_for("v", ids[:1]) == {ids[0]: "v"}
    assert _request.answers_for({ids[1]: "w"}, ids) == {ids[1]: "w"}
    with pytest.raises(ValueError, match="multiple pending interrupts"):
        _request.answers_for("v", ids)
    with pytest.raises(ValueError, match="does not wait on"):
        _request.answers_for({"c" * 32: 1}, ids)
