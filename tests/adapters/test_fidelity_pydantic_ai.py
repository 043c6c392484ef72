"""Fidelity: a durable PydanticAI run behaves exactly like the plain run, crash or no crash.

Two upstream-style agents (``tests.adapters.pydantic_fidelity_apps``: PydanticAI's
bank-support example and the human-in-the-loop example of its deferred-tools docs), with
PydanticAI's real ``OpenAIChatModel`` against the fake OpenAI-compatible server, run first
plainly in this process and then durably on worker processes, SIGKILLed (a) while a model
call is in flight, (b) while a tool is in flight, (c) between calls, (d) after the human's
answer. Each durable run must end with the plain run's ``AgentRunResult`` (output, messages,
usage), the model must receive the plain run's request bodies (plus, after (a), the one
killed request sent again), and no completed model call or tool may run again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("pydantic_ai")

import redis.asyncio as aioredis
from pydantic_ai import (
    Agent,
    DeferredToolRequests,
    DeferredToolResults,
    RunContext,
    ToolDenied,
    models,
)
from pydantic_ai.messages import ModelMessage, ModelMessagesTypeAdapter
from pydantic_ai.run import AgentRunResult

from stalwart import App, Client, RunFailed, Settings
from stalwart.adapters.pydantic_ai import DurableAgentRunner
from stalwart.checkpoints import StepDone
from stalwart.testing import StalwartProcess
from tests.adapters.fake_llm import FakeLLM, Reply, Request, ToolCall, comparable, fake_llm
from tests.adapters.pydantic_fidelity_apps import (
    DatabaseConn,
    SupportDependencies,
    fake_model,
    files_agent,
    support_agent,
    support_deps,
)
from tests.conftest import Servers, worker_pool
from tests.helpers import eventually, execs, journal, mark_gated, open_gate, rid

__all__ = ["fake_llm"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow

APP = "tests.adapters.pydantic_fidelity_apps:app"
BALANCE = "What is my balance?"
FILES = "Delete `__init__.py`, write `Hello, world!` to `README.md`, and clear `.env`"
BACKUP = "Now create a backup of README.md"

WorkerFactory = Callable[..., Awaitable[StalwartProcess]]


# -- the model's side: scripts that answer from the request alone ------------------------------


def bank_script(req: Request) -> Reply:
    results = req.tool_results()
    if not results:
        return Reply(tool_calls=(ToolCall("customer_balance", {"include_pending": True}),))
    advice = f"Hello John, your current balance including pending transactions is {results[-1]}."
    answer = {"support_advice": advice, "block_card": False, "risk": 1}
    return Reply(tool_calls=(ToolCall("final_result", answer),))


def files_script(req: Request) -> Reply:
    if req.turn() == 0:
        return Reply(
            tool_calls=(
                ToolCall("delete_file", {"path": "__init__.py"}),
                ToolCall("update_file", {"path": "README.md", "content": "Hello, world!"}),
                ToolCall("update_file", {"path": ".env", "content": ""}),
            )
        )
    if "backup" in req.last_user_text() and not any(".bak" in r for r in req.tool_results()):
        return Reply(
            tool_calls=(
                ToolCall("update_file", {"path": "README.md.bak", "content": "Hello, world!"}),
            )
        )
    return Reply(text="Here's what I've done: " + "; ".join(req.tool_results()))


@pytest.fixture
def fake(fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> FakeLLM:
    fake_llm.route("gpt-4o", bank_script)
    fake_llm.route("gpt-5", files_script)
    # Another adapter test module blocks real model requests in this process at import.
    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)
    return fake_llm


@pytest.fixture
async def pool(
    settings: Settings, servers: Servers, client: Client, fake: FakeLLM
) -> AsyncIterator[WorkerFactory]:
    async with worker_pool(APP, settings, servers, client, FAKE_LLM_URL=fake.url) as start:
        yield start


@contextlib.asynccontextmanager
async def plain_model(agent: Agent[Any, Any], name: str, fake: FakeLLM) -> AsyncIterator[None]:
    """Run ``agent`` plainly against ``fake``, as PydanticAI's testing docs override models."""
    async with fake_model(name, fake.url) as model:  # closes its HTTP client after
        with agent.override(model=model):
            yield


def runner(name: str, agent: Any, client: Client, **kwargs: Any) -> DurableAgentRunner:
    """A client-side runner for agent ``name`` (the workers serve the apps module's)."""
    return DurableAgentRunner(name, agent, app=App(f"client-{name}"), client=client, **kwargs)


# -- what is compared ------------------------------------------------------------------------------


def messages(items: list[ModelMessage]) -> list[Any]:
    """Messages as data without what differs between any two runs: times and run ids."""
    out = []
    for m in ModelMessagesTypeAdapter.dump_python(items, mode="json"):
        kept = {k: v for k, v in m.items() if k not in ("timestamp", "run_id", "conversation_id")}
        kept["parts"] = [{k: v for k, v in p.items() if k != "timestamp"} for p in m["parts"]]
        out.append(kept)
    return out


def assert_same_result(durable: AgentRunResult[Any], plain: AgentRunResult[Any]) -> None:
    assert isinstance(durable, AgentRunResult)
    assert durable.output == plain.output
    assert type(durable.output) is type(plain.output)
    assert messages(durable.all_messages()) == messages(plain.all_messages())
    assert messages(durable.new_messages()) == messages(plain.new_messages())
    assert durable.usage == plain.usage


def since(fake: FakeLLM, mark: int) -> list[Request]:
    return fake.requests()[mark:]


def assert_same_requests(
    durable: list[Request], plain: list[Request], *, killed_in_flight: int | None = None
) -> None:
    """The durable run sent the plain run's bodies; after (a), the killed one sent twice."""
    bodies = comparable(durable)
    if killed_in_flight is not None:
        assert bodies[killed_in_flight] == bodies[killed_in_flight + 1], "not sent the same again"
        del bodies[killed_in_flight]
    assert bodies == comparable(plain)


async def tool_steps(client: Client, run_id: str) -> list[StepDone]:
    return [
        je.entry
        for je in await journal(client, run_id)
        if isinstance(je.entry, StepDone) and je.entry.kind == "tool"
    ]


# -- the bank support agent --------------------------------------------------------------------


async def test_bank_support_agent_survives_a_kill_at_every_point(
    client: Client, pool: WorkerFactory, supervisor: Any, counters: aioredis.Redis, fake: FakeLLM
) -> None:
    # The plain run, exactly as the upstream example runs it.
    deps = SupportDependencies(customer_id=123, db=DatabaseConn())
    async with plain_model(support_agent, "gpt-4o", fake):
        plain = await support_agent.run(BALANCE, deps=deps)
    plain_requests = fake.requests()
    assert len(plain_requests) == 2 and plain.usage.tool_calls == 1

    bank = runner("bank", support_agent, client, deps=support_deps)
    worker = await pool()

    # The database object cannot travel: the error says what to pass instead.
    with pytest.raises(TypeError, match=r"deps\.db is a .*DatabaseConn.*deps factory"):
        await bank.submit(BALANCE, deps=deps)

    # No crash: the same result and requests; Stalwart's journal saw the plain run's tokens.
    mark, run_id = len(fake.requests()), rid()
    result = await bank.run(BALANCE, deps={"customer_id": 123}, run_id=run_id, timeout=30)
    assert_same_result(result, plain)
    assert_same_requests(since(fake, mark), plain_requests)
    done = [je.entry for je in await journal(client, run_id) if isinstance(je.entry, StepDone)]
    assert sum(e.input_tokens for e in done) == plain.usage.input_tokens
    assert sum(e.output_tokens for e in done) == plain.usage.output_tokens

    async def crash(
        prepare: Callable[[str], Awaitable[Any]], killed_when: Callable[[str, Any], Awaitable[None]]
    ) -> tuple[str, int, AgentRunResult[Any]]:
        nonlocal worker
        run_id, mark = rid(), len(fake.requests())
        held = await prepare(run_id)
        handle = await bank.submit(BALANCE, deps={"customer_id": 123}, run_id=run_id)
        await killed_when(run_id, held)
        worker.kill()
        if held is not None:
            held.release()
        worker = await pool(wait=False)  # it takes the run over once it is up
        await open_gate(counters, run_id, "customer_balance", "before-model-2")
        return run_id, mark, await bank.result(handle, timeout=60)

    # (a) while model call 2 is in flight: sent again once, the tool is not run again.
    async def hold_model_2(run_id: str) -> Any:
        return fake.hold(lambda r: r.model == "gpt-4o" and r.turn() == 1)

    async def model_arrived(run_id: str, held: Any) -> None:
        await held.arrived()

    run_id, mark, result = await crash(hold_model_2, model_arrived)
    assert_same_result(result, plain)
    assert_same_requests(since(fake, mark), plain_requests, killed_in_flight=1)
    assert await execs(counters, run_id, "customer_balance") == 1

    # (b) while the tool is in flight: it runs again (at least once); model call 1 does not.
    async def gate_tool(run_id: str) -> None:
        await mark_gated(counters, run_id, "customer_balance")

    async def tool_started(run_id: str, held: Any) -> None:
        await eventually(lambda: _at_least(counters, run_id, "customer_balance", 1), timeout=30)

    run_id, mark, result = await crash(gate_tool, tool_started)
    assert_same_result(result, plain)
    assert_same_requests(since(fake, mark), plain_requests)
    assert await execs(counters, run_id, "customer_balance") == 2

    # (c) between calls: the tool's result journaled, model call 2 not yet asked for.
    async def gate_model_2(run_id: str) -> None:
        await mark_gated(counters, run_id, "before-model-2")

    async def tool_journaled(run_id: str, held: Any) -> None:
        async def journaled() -> bool:
            return len(await tool_steps(client, run_id)) == 1

        await eventually(journaled, timeout=30)

    run_id, mark, result = await crash(gate_model_2, tool_journaled)
    assert_same_result(result, plain)
    assert_same_requests(since(fake, mark), plain_requests)
    assert await execs(counters, run_id, "customer_balance") == 1

    # The conversation goes on from the durable result as from the plain one.
    before = len(fake.requests())
    async with plain_model(support_agent, "gpt-4o", fake):
        plain_next = await support_agent.run(
            "And without pending?", deps=deps, message_history=plain.all_messages()
        )
    mark = len(fake.requests())
    durable_next = await bank.run(
        "And without pending?",
        deps={"customer_id": 123},
        message_history=result.all_messages(),
        timeout=30,
    )
    assert durable_next.output == plain_next.output
    assert durable_next.usage == plain_next.usage
    assert messages(durable_next.new_messages()) == messages(plain_next.new_messages())
    assert comparable(since(fake, mark)) == comparable(fake.requests()[before:mark])


async def _at_least(counters: aioredis.Redis, run_id: str, key: str, n: int) -> bool:
    return await execs(counters, run_id, key) >= n


async def test_bank_support_tokens_count_against_stalwart_limits_and_streaming_is_pydantic_ais(
    client: Client, pool: WorkerFactory, fake: FakeLLM
) -> None:
    deps = SupportDependencies(customer_id=123, db=DatabaseConn())
    async with plain_model(support_agent, "gpt-4o", fake):
        await support_agent.run(BALANCE, deps=deps)
    plain_requests = fake.requests()
    await pool()

    # max_tokens=50: the first response's tokens are over it, so the tool never runs.
    budget = runner("bank-budget", support_agent, client, deps=support_deps)
    mark = len(fake.requests())
    with pytest.raises(RunFailed) as failed:
        await budget.run(BALANCE, deps={"customer_id": 123}, timeout=30)
    assert failed.value.error_type == "BudgetExceeded" and "tokens" in failed.value.message
    assert len(since(fake, mark)) == 1

    # stream=True (the runner's default) streams model requests, as a plain run with an
    # event_stream_handler does: the same bodies and result as that plain run; against the
    # plain run without one, the bodies differ by the stream flags only.
    async def handle_events(ctx: RunContext[Any], events: AsyncIterable[Any]) -> None:
        async for _ in events:
            pass

    mark = len(fake.requests())
    async with plain_model(support_agent, "gpt-4o", fake):
        plain_streamed = await support_agent.run(
            BALANCE, deps=deps, event_stream_handler=handle_events
        )
    streamed_requests = since(fake, mark)
    streamed = runner("bank-streamed", support_agent, client, deps=support_deps)
    mark = len(fake.requests())
    result = await streamed.run(BALANCE, deps={"customer_id": 123}, timeout=30)
    assert_same_result(result, plain_streamed)
    assert_same_requests(since(fake, mark), streamed_requests)
    sent = comparable(streamed_requests)
    assert all(b.pop("stream") is True and b.pop("stream_options") for b in sent)
    assert sent == [
        {k: v for k, v in b.items() if k != "stream"} for b in comparable(plain_requests)
    ]


# -- human-in-the-loop tool approval ---------------------------------------------------------------


def answer(requests: DeferredToolRequests) -> DeferredToolResults:
    """The human's answer, as the upstream example gives it."""
    results = DeferredToolResults()
    for call in requests.approvals:
        result: bool | ToolDenied = False
        if call.tool_name == "update_file":
            result = True  # Approve all updates
        elif call.tool_name == "delete_file":
            result = ToolDenied("Deleting files is not allowed")
        results.approvals[call.tool_call_id] = result
    return results


async def test_approval_agent_survives_kills_before_and_after_the_human_answer(
    client: Client, pool: WorkerFactory, supervisor: Any, counters: aioredis.Redis, fake: FakeLLM
) -> None:
    async with plain_model(files_agent, "gpt-5", fake):
        plain_1 = await files_agent.run(FILES)
        assert isinstance(plain_1.output, DeferredToolRequests)
        first_requests = fake.requests()
        plain_2 = await files_agent.run(
            BACKUP,
            message_history=plain_1.all_messages(),
            deferred_tool_results=answer(plain_1.output),
        )
    second_requests = fake.requests()[len(first_requests) :]
    assert len(first_requests) == 1 and len(second_requests) == 2

    files = runner("files", files_agent, client)
    worker = await pool()

    # (b) in the first run, while update_file('README.md') is in flight; update_file('.env')
    # asked for approval meanwhile (journaled) and is not run again.
    run_id, mark = rid(), len(fake.requests())
    await mark_gated(counters, run_id, "update_file:README.md")
    handle = await files.submit(FILES, run_id=run_id)
    await eventually(lambda: _at_least(counters, run_id, "update_file:README.md", 1), timeout=30)

    async def approval_journaled() -> bool:  # update_file('.env') asked for approval
        return len(await tool_steps(client, run_id)) == 1

    await eventually(approval_journaled, timeout=30)
    worker.kill()
    await open_gate(counters, run_id, "update_file:README.md")
    worker = await pool(wait=False)
    durable_1 = await files.result(handle, timeout=60)
    assert_same_result(durable_1, plain_1)
    assert_same_requests(since(fake, mark), first_requests)
    assert await execs(counters, run_id, "update_file:README.md") == 2
    assert await execs(counters, run_id, "update_file:.env") == 1
    assert await execs(counters, run_id, "delete_file:__init__.py") == 0

    # (d) after the human's answer, while the approved update_file('.env') is in flight.
    assert isinstance(durable_1.output, DeferredToolRequests)
    decision = answer(durable_1.output)
    run_id, mark = rid(), len(fake.requests())
    await mark_gated(counters, run_id, "update_file:.env")
    handle = await files.submit(
        BACKUP,
        message_history=durable_1.all_messages(),
        deferred_tool_results=decision,
        run_id=run_id,
    )
    await eventually(lambda: _at_least(counters, run_id, "update_file:.env", 1), timeout=30)
    worker.kill()
    await open_gate(counters, run_id, "update_file:.env")
    worker = await pool(wait=False)
    durable_2 = await files.result(handle, timeout=60)
    assert_same_result(durable_2, plain_2)
    assert_same_requests(since(fake, mark), second_requests)
    assert await execs(counters, run_id, "update_file:.env") == 2
    assert await execs(counters, run_id, "update_file:README.md.bak") == 1
    assert await execs(counters, run_id, "delete_file:__init__.py") == 0  # denied

    # (d) again, while the model call after the answer is in flight: sent again, nothing of
    # the answer (the approved call) runs again.
    run_id, mark = rid(), len(fake.requests())
    held = fake.hold(lambda r: r.model == "gpt-5" and r.turn() == 1)
    handle = await files.submit(
        BACKUP,
        message_history=durable_1.all_messages(),
        deferred_tool_results=decision,
        run_id=run_id,
    )
    await held.arrived()
    worker.kill()
    held.release()
    worker = await pool(wait=False)
    durable_in_flight = await files.result(handle, timeout=60)
    assert_same_result(durable_in_flight, plain_2)
    assert_same_requests(since(fake, mark), second_requests, killed_in_flight=0)
    assert await execs(counters, run_id, "update_file:.env") == 1
    assert await execs(counters, run_id, "update_file:README.md.bak") == 1

    # (d) again, between calls after the answer: the backup written, the last call not asked.
    run_id, mark = rid(), len(fake.requests())
    await mark_gated(counters, run_id, "before-model-3")
    handle = await files.submit(
        BACKUP,
        message_history=durable_1.all_messages(),
        deferred_tool_results=decision,
        run_id=run_id,
    )

    async def backup_journaled() -> bool:  # update_file('.env') approved, then the backup
        return len(await tool_steps(client, run_id)) == 2

    await eventually(backup_journaled, timeout=30)
    worker.kill()
    await open_gate(counters, run_id, "before-model-3")
    await pool(wait=False)
    durable_3 = await files.result(handle, timeout=60)
    assert_same_result(durable_3, plain_2)
    assert_same_requests(since(fake, mark), second_requests)
    assert await execs(counters, run_id, "update_file:.env") == 1
    assert await execs(counters, run_id, "update_file:README.md.bak") == 1
