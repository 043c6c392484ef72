"""CrewAI fidelity: a durable crew behaves exactly like the plain crew, and returns what it returns.

Upstream-style crews (``tests.adapters.crewai_fidelity_apps``: delegation, task context, a
tool whose backend is down, a hierarchical manager with a pydantic output, human feedback)
with CrewAI's real ``LLM`` class against the loopback fake server. Each runs plainly in this
process, then durably on worker processes that are SIGKILLed (a) while a model call is in
flight, (b) while a tool runs, (c) between two calls (in a task callback), (d) after a human
answered. Asserted: the ``CrewOutput`` (raw, tasks' outputs and messages, tool failures,
pydantic output, token usage) equals the plain one; every request the model received equals
the plain run's, the only extra being the one in flight when its worker died; no completed
model call or tool runs again; Stalwart's journal counts the same tokens.

CrewAI has its own environment (it pins ``openai<3``): skipped where it is not installed.
"""

from __future__ import annotations

import asyncio
import builtins
import importlib.util
import json
import os
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import msgspec
import pytest
import redis.asyncio as aioredis

from stalwart import Client, RunHandle, Settings
from stalwart.checkpoints import StepDone, StepError, WaitStarted
from stalwart.testing import StalwartProcess
from tests.adapters.fake_llm import FakeLLM, Request, comparable
from tests.adapters.fake_llm import fake_llm as fake_llm  # the fixture the tests use
from tests.conftest import Servers, WorkerFactory, worker_pool
from tests.helpers import eventually, journal, owners

QUIET = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
}
if importlib.util.find_spec("crewai") is not None:  # not in the main environment's process
    os.environ.update(QUIET)

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="crewai")
    warnings.filterwarnings("ignore", "Cannot set an attribute on 'crewai", ImportWarning)
    pytest.importorskip("crewai")
    from crewai.crews.crew_output import CrewOutput

    from stalwart.adapters.crewai import crew_result
    from tests.adapters import crewai_fidelity_apps as apps

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai"),
    pytest.mark.filterwarnings("ignore:Cannot set an attribute on 'crewai:ImportWarning"),
    # CrewAI's executor state dumps an AgentFinish where it declares an AgentAction.
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
]

APP = "tests.adapters.crewai_fidelity_apps:app"
INPUTS = {"topic": "solar"}


@pytest.fixture
def fake(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> FakeLLM:
    """The fake server, answering as the apps' scripts do, its URL where the crews look."""
    for model, script in apps.SCRIPTS.items():
        fake_llm.route(model, script)
    monkeypatch.setenv(apps.URL_ENV, fake_llm.url)
    apps.plain_execs.clear()
    return fake_llm


class Pool:
    """Worker processes started together, and SIGKILLed by whoever owns the run at the time.

    Started at once and waited for with a long timeout: importing CrewAI takes a loaded
    machine tens of seconds. After each kill, the supervisor places the run on another one.
    """

    def __init__(self, start: WorkerFactory, client: Client) -> None:
        self.start, self.client = start, client
        self.procs: dict[str, StalwartProcess] = {}

    async def up(self, n: int, **env: str) -> None:
        names = [f"w{len(self.procs) + i}" for i in range(n)]
        for name in names:
            self.procs[name] = await self.start(name, wait=False, **env)
        for name in names:
            log = self.procs[name].log_text
            await eventually(partial(self.registered, name), timeout=180, message=log)

    async def registered(self, name: str) -> bool:
        return name in {w.worker_id for w in await self.client.broker.workers()}

    async def kill_owner(self, run_id: str) -> str:
        """SIGKILL the worker that owns ``run_id`` now; its id."""
        owner = owners(await journal(self.client, run_id))[-1]
        self.procs.pop(owner).kill()
        return owner


@pytest.fixture
async def pool(
    settings: Settings, servers: Servers, client: Client, fake: FakeLLM, counters: aioredis.Redis
) -> AsyncIterator[Pool]:
    env = {**QUIET, apps.URL_ENV: fake.url, "FIDELITY_WORKER": "1"}
    await counters.delete(apps.HOLD, apps.AT, apps.GATE)
    async with worker_pool(APP, settings, servers, client, **env) as start:
        yield Pool(start, client)


# -- what is compared ---------------------------------------------------------------------------


def meaningful(output: CrewOutput) -> dict[str, Any]:
    """A ``CrewOutput`` as comparable plain data (a task's random id left out)."""
    data: dict[str, Any] = msgspec.to_builtins(crew_result(output))
    for task in data["tasks"]:
        for failure in task.get("tool_failures", []):
            failure.pop("task_id", None)
    return data


async def submit(client: Client, name: str) -> tuple[Any, RunHandle]:
    """Submit a run as a client does, with the runner's per-run ``inputs=``."""
    runner = apps.runners[name]
    return runner, await client.submit(name, runner.request(inputs=INPUTS))


def with_resent(plain: list[dict[str, Any]], *resent: dict[str, Any]) -> list[dict[str, Any]]:
    """The plain run's requests with each request that was in flight at a kill sent twice."""
    out = list(plain)
    for body in resent:
        out.insert(out.index(body), body)
    return out


def run_plainly(
    fake: FakeLLM, name: str, answers: list[str] | None = None
) -> tuple[CrewOutput, list[dict[str, Any]], dict[str, int]]:
    """Kick the crew off as CrewAI's docs do; its output, the model's requests, tool runs.

    In a thread: CrewAI refuses a sync kickoff from a running event loop.
    """
    fake.clear()
    apps.plain_execs.clear()
    feedback: Iterator[str] = iter(answers or [])
    original = builtins.input
    builtins.input = lambda *_: next(feedback)  # the terminal CrewAI reads human feedback from
    try:
        output = apps.CREWS[name]().kickoff(inputs=INPUTS)
    finally:
        builtins.input = original
    requests = comparable(fake.requests())
    fake.clear()
    return output, requests, dict(apps.plain_execs)


async def durable_execs(counters: aioredis.Redis, run_id: str) -> dict[str, int]:
    counts = await counters.hgetall(apps.execs_key(run_id))
    return {k.decode(): int(v) for k, v in counts.items()}


async def journal_tokens(client: Client, run_id: str) -> int:
    return sum(
        je.entry.input_tokens + je.entry.output_tokens
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone) and je.entry.kind == "model"
    )


async def at_point(counters: aioredis.Redis, point: str) -> bool:
    return (await counters.get(apps.AT) or b"").decode() == point


async def hold_at(counters: aioredis.Redis, point: str) -> None:
    await counters.delete(apps.AT)
    await counters.set(apps.HOLD, point)


async def reached(counters: aioredis.Redis, point: str) -> None:
    await eventually(lambda: at_point(counters, point), timeout=60)
    await counters.delete(apps.HOLD)  # the next owner runs through it


def model_call(model: str, match: Callable[[Request], bool]) -> Callable[[Request], bool]:
    return lambda r: r.model == model and match(r)


# -- the tests ----------------------------------------------------------------------------------


async def test_a_delegating_crew_killed_at_a_tool_between_tasks_and_in_a_delegation_ends_as_plainly(
    client: Client,
    pool: Pool,
    supervisor: Any,
    counters: aioredis.Redis,
    fake: FakeLLM,
) -> None:
    plain, plain_requests, plain_execs = await asyncio.to_thread(run_plainly, fake, "blog")
    assert plain.tasks_output[0].tool_failures  # the pricing backend is down, plainly too

    await pool.up(4)
    # (b) a tool in flight: the research task's search.
    search = 'tool:search {"query": "solar trends"}'
    await hold_at(counters, search)
    runner, handle = await submit(client, "blog")
    await reached(counters, search)
    # (c) between two calls: the research task's callback, after its last model call.
    await hold_at(counters, "callback:research")
    killed = [await pool.kill_owner(handle.run_id)]
    await reached(counters, "callback:research")
    # (a) a model call in flight inside the delegation: the coworker's first call.
    asked = model_call("fake-researcher", lambda r: "QUESTION:" in r.last_user_text())
    in_flight = fake.hold(lambda r: asked(r) and not r.tool_results())
    killed.append(await pool.kill_owner(handle.run_id))
    held = await in_flight.arrived(timeout=90)
    killed.append(await pool.kill_owner(handle.run_id))
    in_flight.release()
    output = runner.decode_result(await handle.result(timeout=120))

    assert isinstance(output, CrewOutput)
    assert meaningful(output) == meaningful(plain)
    assert output.token_usage == plain.token_usage
    assert comparable(fake.requests()) == with_resent(plain_requests, *comparable([held]))
    execs = await durable_execs(counters, handle.run_id)
    assert execs.pop(search.removeprefix("tool:")) == 2  # at-least-once: it was running
    assert execs == {k: v for k, v in plain_execs.items() if k != search.removeprefix("tool:")}
    assert await journal_tokens(client, handle.run_id) == plain.token_usage.total_tokens
    placed = owners(await journal(client, handle.run_id))
    assert placed[:3] == killed and len(set(placed)) == 4  # each kill moved it on


async def test_a_hierarchical_crew_killed_while_its_manager_and_a_coworker_work_ends_as_plainly(
    client: Client,
    pool: Pool,
    supervisor: Any,
    counters: aioredis.Redis,
    fake: FakeLLM,
) -> None:
    plain, plain_requests, plain_execs = await asyncio.to_thread(run_plainly, fake, "briefing")
    assert isinstance(plain.pydantic, apps.Briefing)

    await pool.up(3)
    # (b) inside the first delegation: the researcher's search; then (a) the manager's
    # second call, after the delegation came back.
    search = 'tool:search {"query": "solar trends"}'
    await hold_at(counters, search)
    runner, handle = await submit(client, "briefing")
    await reached(counters, search)

    async def pricing_journaled() -> bool:  # search's sibling in the parallel batch
        return any(
            isinstance(je.entry, StepDone | StepError) and "pricing" in je.entry.name.lower()
            for je in await journal(client, handle.run_id)
        )

    # Only the held search may be in flight at the kill (a pricing call still running
    # would rightly run again: at-least-once), so the counts below are exact.
    await eventually(pricing_journaled, timeout=60)
    second = fake.hold(model_call("fake-manager", lambda r: len(r.tool_results()) == 1))
    await pool.kill_owner(handle.run_id)
    held = await second.arrived(timeout=90)
    await pool.kill_owner(handle.run_id)
    second.release()
    output = runner.decode_result(await handle.result(timeout=120))

    assert isinstance(output.pydantic, apps.Briefing)
    assert meaningful(output) == meaningful(plain)
    assert comparable(fake.requests()) == with_resent(plain_requests, *comparable([held]))
    execs = await durable_execs(counters, handle.run_id)
    assert execs.pop(search.removeprefix("tool:")) == 2
    assert execs == {k: v for k, v in plain_execs.items() if k != search.removeprefix("tool:")}
    assert await journal_tokens(client, handle.run_id) == plain.token_usage.total_tokens


async def test_human_feedback_is_a_durable_signal_answered_once_across_a_crash(
    client: Client,
    pool: Pool,
    supervisor: Any,
    counters: aioredis.Redis,
    fake: FakeLLM,
) -> None:
    feedback = "FEEDBACK: make it punchier"
    plain, plain_requests, _ = await asyncio.to_thread(
        run_plainly, fake, "headline", [feedback, ""]
    )
    assert plain.raw.startswith("HEADLINE v2")

    # Workers that give a run up while nobody answers (passivate it) after half a second.
    await pool.up(2, STALWART_PASSIVATE_AFTER="0.5")
    runner, handle = await submit(client, "headline")
    first = await eventually(lambda: _asked(handle, 1), timeout=90)
    assert first == {
        "signal": "human:task:0/1",
        "task": "Write a headline on TOPIC=solar.",
        "agent": "Editor",
        "output": "HEADLINE v1 for solar",
    }
    # (d) killed after the human answered, while the agent revises on the feedback.
    revising = fake.hold(model_call("fake-editor", lambda r: feedback in json.dumps(r.body)))
    await handle.signal(first["signal"], feedback)
    held = await revising.arrived(timeout=90)
    await pool.kill_owner(handle.run_id)
    revising.release()
    second = await eventually(lambda: _asked(handle, 2), timeout=90)
    assert (second["signal"], second["output"]) == ("human:task:0/2", "HEADLINE v2 for solar")
    await eventually(lambda: _status(handle, "waiting"), timeout=60)
    assert await handle.signal(second["signal"], "") == "woke"
    output = runner.decode_result(await handle.result(timeout=90))

    assert meaningful(output) == meaningful(plain)
    assert comparable(fake.requests()) == with_resent(plain_requests, *comparable([held]))
    waits = [
        je.entry.key
        for je in await journal(client, handle.run_id)
        if isinstance(je.entry, WaitStarted)
    ]
    # Each question asked once: the answered one is replayed, never asked again.
    assert waits == ["signal:human:task:0/1", "signal:human:task:0/2"]
    assert await journal_tokens(client, handle.run_id) == plain.token_usage.total_tokens


async def _asked(handle: RunHandle, n: int) -> dict[str, Any] | None:
    """The n-th question to the human, from the run's events (as a client reads it)."""
    asked = [ev.data async for ev in handle.events(follow=False) if ev.type == "crew.human_input"]
    return asked[n - 1] if len(asked) >= n else None


async def _status(handle: RunHandle, status: str) -> bool:
    return (await handle.status()).status == status
