"""A PydanticAI support agent made crash-proof by Stalwart, and a crash to prove it.

    python examples/pydantic_ai_support_agent.py            # offline: a scripted model
    OPENAI_API_KEY=sk-... python examples/pydantic_ai_support_agent.py   # a real model
    python examples/pydantic_ai_support_agent.py --no-crash

The agent is ordinary PydanticAI: tools, a typed ``deps``, structured output, and a tool that
delegates to a second agent. ``DurableAgentRunner`` wraps it without changing it. The script
starts embedded NATS and Redis servers (or uses ``STALWART_NATS_URL`` / ``STALWART_REDIS_URL``),
two ``stalwart worker`` processes serving this module's ``app`` and a supervisor, submits a
ticket, SIGKILLs the worker that runs it after its second tool call, and follows the run's
events while another worker resumes it: the journaled model responses and tool results are
replayed, nothing completed runs again. Needs ``pip install 'stalwart[pydantic-ai]'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel

from stalwart import App, current_step
from stalwart.adapters.pydantic_ai import DurableAgentRunner, StalwartDurability

if TYPE_CHECKING:
    from pydantic_ai.models import Model

    from stalwart.testing import CrashStage

HERE = Path(__file__).resolve().parent
REAL_MODEL = "openai:gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else None


# -- the agent, exactly as one would write it ---------------------------------------------------


@dataclass
class Customer:
    """The run's deps: plain data, sent with the run and rebuilt in the worker."""

    customer_id: str
    tier: str = "gold"


class Resolution(BaseModel):
    order_id: str
    refunded: float
    policy: str
    reply: str


ORDERS = {"A-1001": {"item": "espresso machine", "amount": 249.0, "status": "delivered broken"}}


async def lookup_order(ctx: RunContext[Customer], order_id: str) -> dict[str, Any]:
    """Look an order of this customer up."""
    await asyncio.sleep(0.5)  # a slow backend
    return {"customer": ctx.deps.customer_id, "order_id": order_id, **ORDERS[order_id]}


async def check_policy(ctx: RunContext[Customer], question: str) -> str:
    """Ask the policy specialist (another agent) a question."""
    result = await policy_agent.run(question, deps=ctx.deps, usage=ctx.usage)
    return result.output


async def issue_refund(order_id: str, amount: float) -> str:
    """Refund an order. Pass the idempotency key to the payment API: a refund must not repeat."""
    await asyncio.sleep(0.5)
    step = current_step()
    key = step.idempotency_key if step else "outside-stalwart"
    return f"refund of {amount:.2f} for {order_id} accepted (idempotency key {key})"


def _scripted(messages: list[ModelMessage], info: AgentInfo) -> list[ToolCallPart | TextPart]:
    """Offline stand-in for an LLM: the answer depends only on the conversation so far."""
    seen = {
        p.tool_name: p.content
        for m in messages
        for p in getattr(m, "parts", [])
        if isinstance(p, ToolReturnPart)
    }
    if "lookup_order" not in seen:
        return [
            ToolCallPart("lookup_order", {"order_id": "A-1001"}),
            ToolCallPart("check_policy", {"question": "Refund for an item delivered broken?"}),
        ]
    order = seen["lookup_order"]
    assert isinstance(order, dict)
    if "issue_refund" not in seen:
        return [ToolCallPart("issue_refund", {"order_id": "A-1001", "amount": order["amount"]})]
    reply = f"Sorry about your {order['item']}! We refunded {order['amount']:.2f}."
    resolution = {
        "order_id": "A-1001",
        "refunded": order["amount"],
        "policy": seen["check_policy"],
        "reply": reply,
    }
    return [ToolCallPart("final_result", resolution)]


def _policy(messages: list[ModelMessage], info: AgentInfo) -> list[ToolCallPart | TextPart]:
    return [TextPart("Broken on delivery: full refund within 30 days, no return needed.")]


def model(script: Any) -> Model | str:
    """The real model when an API key is set, else ``script`` as a (streaming) FunctionModel."""
    if REAL_MODEL:
        return REAL_MODEL

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        return ModelResponse(parts=list(script(messages, info)))

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> Any:
        await asyncio.sleep(0.3)  # "thinking"
        for i, part in enumerate(script(messages, info)):
            if isinstance(part, TextPart):
                words = part.content.split(" ")
                for n, word in enumerate(words):
                    yield word if n == len(words) - 1 else word + " "
            else:
                yield {i: DeltaToolCall(name=part.tool_name, json_args=json.dumps(part.args))}

    return FunctionModel(respond, stream_function=stream, model_name="scripted")


policy_agent = Agent(
    model(_policy),
    name="policy",
    deps_type=Customer,
    instructions="You know the refund policy. Answer in one sentence.",
    # Delegated runs get their own journaled steps inside the calling tool's step.
    capabilities=[StalwartDurability()],
)

support_agent = Agent(
    model(_scripted),
    name="support",
    deps_type=Customer,
    output_type=Resolution,
    instructions=(
        "You are a support agent. Look the order up and check the refund policy (in parallel), "
        "refund when the policy allows it, then answer."
    ),
    tools=[lookup_order, check_policy, issue_refund],
)

# -- made durable: one line ------------------------------------------------------------------

app = App("pydantic-support")
runner = DurableAgentRunner("support", support_agent, app=app, max_iterations=10)


# -- the demonstration -----------------------------------------------------------------------


async def main(crash: bool) -> None:
    from stalwart.testing import crash_stage

    async with crash_stage(f"{Path(__file__).stem}:app", path=HERE) as stage:
        try:
            print(
                f"model: {REAL_MODEL or 'scripted (offline)'}; workers: {', '.join(stage.workers)}"
            )
            handle = await runner.submit(
                "My espresso machine (order A-1001) arrived broken. Can I get my money back?",
                deps=Customer(customer_id="c-42"),
            )
            await follow(handle, stage, crash)
            resolution = runner.output(await handle.result(timeout=120))
            print(f"\nresult: {resolution.model_dump_json(indent=2)}")
        finally:
            await runner.aclose()


async def follow(handle: Any, stage: CrashStage, crash: bool) -> None:
    """Print the run's events as they happen; SIGKILL the owner after its 2nd tool call."""
    tools_done, streaming = 0, False
    async for ev in handle.events():
        stamp = stage.stamp(ev.at)
        if ev.type == "model.delta" and ev.data.get("type") == "text":
            print(("" if streaming else "          ") + ev.data["delta"], end="", flush=True)
            streaming = True
            continue
        if streaming and ev.type in ("step.completed", "tool.call", "run.resumed"):
            print()
            streaming = False
        if ev.type in ("run.started", "run.resumed"):
            replay = f", {ev.data['journaled_steps']} steps to replay" if ev.data else ""
            print(f"{stamp}  {ev.type} on {ev.worker}{replay}")
        elif ev.type == "tool.call":
            print(f"{stamp}  {ev.step}: {ev.data['tool']}({json.dumps(ev.data['args'])})")
        elif ev.type == "step.completed":
            print(f"{stamp}  {ev.step} done on {ev.worker}")
            if ev.data and ev.data.get("kind") == "tool":
                tools_done += 1
                if tools_done == 2 and crash:
                    stage.kill(ev.worker)
        elif ev.type in ("run.completed", "run.failed", "run.cancelled"):
            print(f"{stamp}  {ev.type}")
            return


if __name__ == "__main__":
    asyncio.run(main(crash="--no-crash" not in sys.argv))
