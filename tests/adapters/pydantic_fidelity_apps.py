"""Upstream-style PydanticAI agents, served durably by the fidelity tests' worker processes.

Served with ``stalwart worker tests.adapters.pydantic_fidelity_apps:app``. The agents are
written as PydanticAI's own examples write them, with PydanticAI's real ``OpenAIChatModel``
talking to the fake OpenAI-compatible server (``tests.adapters.fake_llm``) whose URL the
worker gets in ``FAKE_LLM_URL``; the test process runs the same agents plainly with
``agent.override(model=...)`` pointed at the same server.

- ``bank``: PydanticAI's bank-support example (``pydantic_ai_examples.bank_support``): deps
  with a customer id and a database object, built in the worker by a deps factory; a
  dynamic system prompt reading deps; the ``customer_balance`` tool; structured output.
- ``files``: the human-in-the-loop example of PydanticAI's deferred-tools docs: a tool that
  always ``requires_approval`` and one that raises ``ApprovalRequired`` for protected
  files; the run ends with ``DeferredToolRequests`` and the next run continues from the
  message history with the human's ``DeferredToolResults``.

Test instrumentation (marked ``# test:``), inert in the plain runs of the test process: the
fake database and the file tools count their executions inside durable steps in Redis and
wait on a gate when the test marked one (``tests.helpers``), and a hook can hold a run
between two model calls.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import BaseModel, Field
from pydantic_ai import (
    Agent,
    ApprovalRequired,
    DeferredToolRequests,
    ModelRequestContext,
    RunContext,
)
from pydantic_ai.capabilities import Hooks
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from stalwart import App, Limits, Policies, current_step
from stalwart.adapters.pydantic_ai import DurableAgentRunner
from tests.helpers import COUNTER_ENV, counters, exec_key, gate_key, gated_key, wait_if_gated

app = App("pydantic-fidelity")


def fake_model(name: str, url: str | None = None) -> OpenAIChatModel:
    """PydanticAI's OpenAI chat model against the fake server (``FAKE_LLM_URL``)."""
    base_url = url or os.environ.get("FAKE_LLM_URL", "http://127.0.0.1:9/v1")
    return OpenAIChatModel(name, provider=OpenAIProvider(base_url=base_url, api_key="sk-fake"))


# -- test instrumentation ---------------------------------------------------------------------


async def step_checkpoint(gate: str) -> None:
    """test: count this durable execution; wait on ``gate`` if the test marked it."""
    info = current_step()
    if info is None:  # the plain run, in the test process
        return
    await counters().incr(exec_key(info.run_id, gate))
    await wait_if_gated(info.run_id, gate)


def step_checkpoint_sync(gate: str) -> None:
    """test: :func:`step_checkpoint` for sync tools (they run in a thread of their own)."""
    info = current_step()
    if info is None:
        return
    r = redis.Redis.from_url(os.environ[COUNTER_ENV], socket_timeout=None)
    try:
        r.incr(exec_key(info.run_id, gate))
        if r.exists(gated_key(info.run_id, gate)):
            r.blpop([gate_key(info.run_id, gate)], timeout=60)
    finally:
        r.close()


def between_calls() -> Hooks[Any]:
    """test: hold a durable run before its n-th model request (gate ``before-model-<n>``).

    Runs outside any step, in agent code: a worker killed there has nothing in flight.
    """
    hooks: Hooks[Any] = Hooks()

    @hooks.on.before_model_request
    async def hold(ctx: RunContext[Any], request: ModelRequestContext) -> ModelRequestContext:
        if os.environ.get(COUNTER_ENV):  # a worker; never the plain run
            n = sum(isinstance(m, ModelResponse) for m in request.messages) + 1
            # ctx.run_id is the Stalwart run id in a durable run.
            await wait_if_gated(ctx.run_id, f"before-model-{n}")
        return request

    return hooks


# -- PydanticAI's bank support example ------------------------------------------------------------


class DatabaseConn:
    """This is a fake database for example purposes (as in the upstream example).

    In reality, you'd be connecting to an external database (e.g. PostgreSQL) to get
    information about customers. It cannot travel to a worker: the deps factory builds it.
    """

    async def customer_name(self, *, id: int) -> str | None:
        if id == 123:
            return "John"
        return None

    async def customer_balance(self, *, id: int, include_pending: bool) -> float:
        await step_checkpoint("customer_balance")  # test:
        if id == 123:
            return 123.45 if include_pending else 100.00
        return 42


@dataclass
class SupportDependencies:
    customer_id: int
    db: DatabaseConn


class SupportOutput(BaseModel):
    support_advice: str = Field(description="Advice returned to the customer")
    block_card: bool = Field(description="Whether to block their card or not")
    risk: int = Field(description="Risk level of query", ge=0, le=10)


support_agent = Agent(
    fake_model("gpt-4o"),
    deps_type=SupportDependencies,
    output_type=SupportOutput,
    system_prompt=(
        "You are a support agent in our bank, give the "
        "customer support and judge the risk level of their query. "
        "Reply using the customer's name."
    ),
    capabilities=[between_calls()],  # test:
)


@support_agent.system_prompt
async def add_customer_name(ctx: RunContext[SupportDependencies]) -> str:
    customer_name = await ctx.deps.db.customer_name(id=ctx.deps.customer_id)
    return f"The customer's name is {customer_name!r}"


@support_agent.tool
async def customer_balance(ctx: RunContext[SupportDependencies], include_pending: bool) -> str:
    """Returns the customer's current account balance."""
    balance = await ctx.deps.db.customer_balance(
        id=ctx.deps.customer_id,
        include_pending=include_pending,
    )
    return f"${balance:.2f}"


def support_deps(data: dict[str, Any]) -> SupportDependencies:
    """The deps factory: runs in the worker, where the database connection is made."""
    return SupportDependencies(customer_id=data["customer_id"], db=DatabaseConn())


bank = DurableAgentRunner("bank", support_agent, deps=support_deps, stream=False, app=app)
bank_streamed = DurableAgentRunner(
    "bank-streamed", support_agent, deps=support_deps, stream=True, app=app
)
bank_budget = DurableAgentRunner(
    "bank-budget",
    support_agent,
    deps=support_deps,
    stream=False,
    app=app,
    policies=Policies(limits=Limits(max_tokens=50)),  # the first response is over it
)


# -- PydanticAI's deferred tools docs: human-in-the-loop tool approval ---------------------------

files_agent = Agent(
    fake_model("gpt-5"),
    output_type=[str, DeferredToolRequests],
    capabilities=[between_calls()],  # test:
)

PROTECTED_FILES = {".env"}


@files_agent.tool
def update_file(ctx: RunContext, path: str, content: str) -> str:
    step_checkpoint_sync(f"update_file:{path}")  # test:
    if path in PROTECTED_FILES and not ctx.tool_call_approved:
        raise ApprovalRequired(metadata={"reason": "protected"})
    return f"File {path!r} updated: {content!r}"


@files_agent.tool_plain(requires_approval=True)
def delete_file(path: str) -> str:
    step_checkpoint_sync(f"delete_file:{path}")  # test:
    return f"File {path!r} deleted"


files = DurableAgentRunner("files", files_agent, stream=False, app=app)
