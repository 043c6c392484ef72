"""PydanticAI agents the adapter tests run in real worker processes.

Served with ``stalwart worker tests.adapters.pydantic_apps:app``. Scripted models answer
from the messages they receive (never from an in-process counter: the worker dies) and log
every real call in Redis (``COUNTER_REDIS_URL``); tools count their executions there too, so
a test can prove across a SIGKILL which calls ran how often. Gates (Redis lists, as in
``tests.helpers``) hold a run in agent code, outside any step, until the test opens them.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

from openai import AsyncOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent, ModelRetry, RunContext, Tool, models
from pydantic_ai.capabilities import Hooks
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from stalwart import App, current_step
from stalwart.adapters.pydantic_ai import DurableAgentRunner, StalwartDurability
from tests.helpers import calls_key, count_execution, counters, wait_gate

# Real model requests are blocked, except in the worker a test points at its loopback server.
models.ALLOW_MODEL_REQUESTS = os.environ.get("PYD_ALLOW_MODEL_REQUESTS") == "1"

app = App("pydantic-tests")


async def log_model_call(label: str, messages: list[ModelMessage]) -> None:
    info = current_step()
    assert info is not None, "model calls must run inside a step"
    await counters().rpush(calls_key(info.run_id), f"{label}:{responses(messages) + 1}")


def responses(messages: list[ModelMessage]) -> int:
    return sum(isinstance(m, ModelResponse) for m in messages)


def tool_returns(messages: list[ModelMessage]) -> dict[str, object]:
    return {
        part.tool_name: part.content
        for m in messages
        for part in getattr(m, "parts", [])
        if isinstance(part, ToolReturnPart)
    }


async def stream_parts(parts: list[ToolCallPart | TextPart]) -> AsyncIterator[object]:
    """Stream a scripted response: tool-call arguments and text in two chunks each."""
    for i, part in enumerate(parts):
        if isinstance(part, TextPart):
            half = len(part.content) // 2
            yield part.content[:half]
            yield part.content[half:]
            continue
        args = json.dumps(part.args)
        half = len(args) // 2
        yield {i: DeltaToolCall(name=part.tool_name, json_args=args[:half])}
        yield {i: DeltaToolCall(json_args=args[half:])}


def pause_hook(field_name: str) -> Hooks[Scenario]:
    """Block before the model call named by ``deps.<field_name>`` until the test opens its gate."""
    hooks: Hooks[Scenario] = Hooks()

    @hooks.on.before_model_request
    async def pause(ctx: RunContext[Scenario], request: ModelRequestContext) -> ModelRequestContext:
        wanted = getattr(ctx.deps, field_name)
        if wanted and responses(request.messages) + 1 == wanted:
            info_run = ctx.deps.run_id
            await wait_gate(info_run, field_name)
        return request

    return hooks


@dataclass
class Scenario:
    """The deps of the test agents: plain data, sent with the run and rebuilt in the worker."""

    run_id: str
    customer: str = "c-42"
    pause_before_model: int = 0
    """Block before this model call of the support agent (the gate ``pause_before_model``)."""
    pause_specialist: int = 0
    """Block before this model call of the delegated specialist agent."""


# -- support: 3 model calls, 5 tool calls (two in parallel), structured output -------------------


class Resolution(BaseModel):
    customer: str
    orders: list[str]
    open_tickets: int
    summary: str


def support_script(messages: list[ModelMessage], info: AgentInfo) -> list[ToolCallPart | TextPart]:
    lookup = (
        "find_customer"
        if "find_customer" in {t.name for t in info.function_tools}
        else "lookup_customer"
    )
    seen = tool_returns(messages)
    n = responses(messages)
    if n == 0:
        return [ToolCallPart(lookup, {"customer": "c-42"})]
    if n == 1:
        return [
            ToolCallPart("get_orders", {"customer": "c-42"}),
            ToolCallPart("get_tickets", {"customer": "c-42"}),
        ]
    if n == 2:
        orders = seen["get_orders"]
        assert isinstance(orders, list)
        return [
            ToolCallPart("refund", {"order_id": orders[0]}),
            ToolCallPart("notify", {"customer": "c-42", "text": "refund issued"}),
            ToolCallPart(
                "final_result",
                {
                    "customer": str(seen[lookup]),
                    "orders": orders,
                    "open_tickets": seen["get_tickets"],
                    "summary": f"refunded {orders[0]}",
                },
            ),
        ]
    raise AssertionError(f"unexpected model call {n + 1}")


async def support_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await log_model_call("support", messages)
    return ModelResponse(parts=list(support_script(messages, info)))


async def support_model_stream(
    messages: list[ModelMessage], info: AgentInfo
) -> AsyncIterator[object]:
    await log_model_call("support", messages)
    async for chunk in stream_parts(support_script(messages, info)):
        yield chunk


async def lookup_customer(customer: str) -> str:
    await count_execution()
    return f"Ada ({customer})"


async def get_orders(ctx: RunContext[Scenario], customer: str) -> list[str]:
    await count_execution()
    return [f"{ctx.deps.customer}-o1", f"{ctx.deps.customer}-o2"]


async def get_tickets(customer: str) -> int:
    await count_execution()
    return 2


async def refund(order_id: str) -> str:
    await count_execution()
    info = current_step()
    assert info is not None
    return f"refund:{order_id}:{info.idempotency_key}"


async def notify(customer: str, text: str) -> str:
    await count_execution()
    return "sent"


support_agent = Agent(
    FunctionModel(support_model, stream_function=support_model_stream, model_name="scripted"),
    name="support",
    deps_type=Scenario,
    output_type=Resolution,
    end_strategy="exhaustive",
    tools=[
        # A renamed tool between crash and resume is how a test changes the agent.
        Tool(lookup_customer, name="find_customer" if os.environ.get("PYD_TOOL_RENAMED") else None),
        get_orders,
        get_tickets,
        refund,
        notify,
    ],
    capabilities=[pause_hook("pause_before_model")],
)

support = DurableAgentRunner(name="support", agent=support_agent, app=app, max_iterations=10)


# -- triage: delegates to a specialist agent from a tool ---------------------------------------


class Triage(BaseModel):
    category: str
    answer: str


async def specialist_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await log_model_call("specialist", messages)
    if responses(messages) == 0:
        return ModelResponse(parts=[ToolCallPart("search_kb", {"query": "refund policy"})])
    return ModelResponse(parts=[TextPart(f"policy says: {tool_returns(messages)['search_kb']}")])


async def search_kb(query: str) -> str:
    await count_execution()
    return "refunds within 30 days"


specialist_agent = Agent(
    FunctionModel(specialist_model, model_name="specialist-model"),
    name="specialist",
    deps_type=Scenario,
    tools=[search_kb],
    # Its own steps then replay inside the outer run's tool step.
    capabilities=[StalwartDurability(stream=False), pause_hook("pause_specialist")],
)


async def triage_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await log_model_call("triage", messages)
    if responses(messages) == 0:
        return ModelResponse(
            parts=[ToolCallPart("ask_specialist", {"question": "can I get a refund?"})]
        )
    answer = tool_returns(messages)["ask_specialist"]
    return ModelResponse(
        parts=[ToolCallPart("final_result", {"category": "billing", "answer": answer})]
    )


async def ask_specialist(ctx: RunContext[Scenario], question: str) -> str:
    await count_execution()
    result = await specialist_agent.run(question, deps=ctx.deps, usage=ctx.usage)
    return result.output


triage_agent = Agent(
    FunctionModel(triage_model, model_name="triage-model"),
    name="triage",
    deps_type=Scenario,
    output_type=Triage,
    tools=[ask_specialist],
    capabilities=[pause_hook("pause_before_model")],
)

triage = DurableAgentRunner(name="triage", agent=triage_agent, app=app, stream=False)


# -- chat: PydanticAI's OpenAI model against the test's loopback server ---------------------------


def build_chat() -> Agent[None, str]:
    """A factory: each run of ``chat`` gets an agent of its own."""
    return Agent(
        OpenAIChatModel(
            "gpt-4o-mini",
            provider=OpenAIProvider(
                openai_client=AsyncOpenAI(
                    base_url=os.environ.get("FAKE_OPENAI_URL", "http://127.0.0.1:9/v1"),
                    api_key="test-key",
                    max_retries=3,  # the SDK's own retries, inside the one model step
                )
            ),
        ),
        name="chat",
    )


chat = DurableAgentRunner("chat", build_chat, app=app)


# -- memo: message history in, deps built in the worker -------------------------------------------


async def memo_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    await log_model_call("memo", messages)
    seen = tool_returns(messages)
    if "whoami" not in seen:
        return ModelResponse(parts=[ToolCallPart("whoami", {})])
    return ModelResponse(parts=[TextPart(f"{len(messages)} messages, I am {seen['whoami']}")])


async def whoami(ctx: RunContext[Scenario]) -> str:
    await count_execution()
    return ctx.deps.customer


memo_agent = Agent(
    FunctionModel(memo_model, model_name="memo-model"),
    name="memo",
    deps_type=Scenario,
    tools=[whoami],
)


def build_deps(data: dict[str, str]) -> Scenario:
    """Runs in the worker: where connections and clients would be created."""
    return Scenario(run_id=data["run_id"], customer=data["customer"].upper())


memo = DurableAgentRunner(name="memo", agent=memo_agent, app=app, deps=build_deps, stream=False)


# -- errors: what a tool's error does, plainly and durably -----------------------------------------

PLAIN_EXECUTIONS: dict[str, int] = {}
"""Executions in plain runs (the test process): there is no step to count them under."""


async def executed(name: str) -> None:
    """Count one execution of ``name``: in Redis inside a durable step, else in this process."""
    info = current_step()
    if info is None:
        PLAIN_EXECUTIONS[name] = PLAIN_EXECUTIONS.get(name, 0) + 1
        return
    await counters().incr(f"exec:{info.run_id}:{name}")


def errors_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """Calls the tool the prompt names, again after each retry prompt; then answers."""
    prompt = next(
        str(p.content)
        for m in messages
        for p in getattr(m, "parts", [])
        if getattr(p, "part_kind", "") == "user-prompt"
    )
    tool = prompt.removeprefix("call ")
    last = messages[-1]
    retried = any(getattr(p, "outcome", None) == "retried" for p in last.parts)
    if responses(messages) == 0 or retried:
        return ModelResponse(parts=[ToolCallPart(tool, {"x": 1})])
    return ModelResponse(parts=[TextPart(f"done: {tool_returns(messages)}")])


async def explode(x: int) -> str:
    await executed("explode")
    raise ValueError(f"bad x: {x}")


async def always_retry(x: int) -> str:
    await executed("always_retry")
    raise ModelRetry(f"try another x than {x}")


async def validated(x: int) -> str:
    await executed("validated")
    return "ran"


async def reject(ctx: RunContext[None], x: int) -> None:
    await executed("reject")
    raise ValueError(f"x={x} is not allowed")


async def open_socket(x: int) -> object:
    await executed("open_socket")
    return socket.socket()


errors_agent = Agent(
    FunctionModel(errors_model, model_name="errors-model"),
    name="errors",
    tools=[
        explode,
        Tool(always_retry, max_retries=2),
        Tool(validated, args_validator=reject),
        open_socket,
    ],
)

errors = DurableAgentRunner("errors", errors_agent, app=app, stream=False)


# -- story: a streamed answer the tests hold mid-stream or after its last chunk ---------------------

STORY = ["Once ", "upon ", "a ", "time ", "a ", "durable ", "agent."]
"""The answer's seven text chunks (the audit's case: seven deltas, streamed by each worker)."""


def user_prompts(messages: list[ModelMessage]) -> list[str]:
    return [
        str(p.content)
        for m in messages
        for p in getattr(m, "parts", [])
        if getattr(p, "part_kind", "") == "user-prompt"
    ]


async def story_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[object]:
    """Call ``lookup`` first; then stream STORY, held on the gate the prompt names.

    ``hold:mid`` waits on gate ``mid`` after three chunks; ``hold:end`` waits on gate ``end``
    after the last chunk, before the response completes (so before the step is journaled).
    Outside a worker (a plain run in the test process) nothing is logged nor held.
    """
    step = current_step()
    if step is not None:
        await log_model_call("story", messages)
    if responses(messages) == 0:
        yield {0: DeltaToolCall(name="lookup", json_args='{"topic": "agents"}')}
        return
    prompt = user_prompts(messages)[-1]
    for i, chunk in enumerate(STORY):
        if step is not None and i == 3 and "hold:mid" in prompt:
            await wait_gate(step.run_id, "mid")
        yield chunk
    if step is not None and "hold:end" in prompt:
        await wait_gate(step.run_id, "end")


async def story_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    if responses(messages) == 0:
        return ModelResponse(parts=[ToolCallPart("lookup", {"topic": "agents"})])
    return ModelResponse(parts=[TextPart("".join(STORY))])


async def lookup(topic: str) -> str:
    return f"{topic} survive crashes"


story_agent = Agent(
    FunctionModel(story_model, stream_function=story_stream, model_name="story-model"),
    name="story",
    tools=[lookup],
)

story = DurableAgentRunner("story", story_agent, app=app)


# -- turns: a conversation; the model records the prompts it was given -----------------------------


def seen_key(run_id: str) -> str:
    """The user prompts the ``turns`` model saw in a run (a JSON list)."""
    return f"seen:{run_id}"


def turns_reply(messages: list[ModelMessage]) -> str:
    prompts = user_prompts(messages)
    return f"turn {len(prompts)}: you said {prompts[-1]}"


async def turns_stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    step = current_step()
    if step is not None:
        await counters().rpush(seen_key(step.run_id), json.dumps(user_prompts(messages)))
    reply = turns_reply(messages)
    half = len(reply) // 2
    yield reply[:half]
    yield reply[half:]


async def turns_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    return ModelResponse(parts=[TextPart(turns_reply(messages))])


turns_agent = Agent(
    FunctionModel(turns_model, stream_function=turns_stream, model_name="turns-model"),
    name="turns",
)

turns = DurableAgentRunner("turns", turns_agent, app=app)
