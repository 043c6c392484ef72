"""Upstream-style OpenAI Agents SDK agents for the fidelity tests, plain and durable.

Served as ``tests.adapters.openai_fidelity_apps:app``; the tests also run the same agents
plainly in their own process. The agents are written as the SDK's examples write them:

- the customer-service example (``examples/customer_service``): a triage agent handing off to
  an FAQ agent and to a seat-booking agent whose ``on_handoff`` sets the flight number in the
  context, an ``update_seat`` tool that changes the context, dynamic instructions that read
  it, plus the relevance guardrail of the customer-service demo, which runs an agent of its
  own. Models are named by string and reached through the SDK's default OpenAI client
  (``set_default_openai_client``), i.e. ``OpenAIResponsesModel``;
- the human-in-the-loop example (``examples/agent_patterns/human_in_the_loop.py``): a weather
  assistant whose temperature tool needs approval for Oakland, on
  ``OpenAIChatCompletionsModel``.

Both talk to the loopback fake server of ``tests/adapters/fake_llm.py``
(``FAKE_LLM_URL``). The only test-only additions: tool bodies and ``on_handoff`` count their
executions and may block on a gate (both through Redis, inside durable runs only), and the
durable runner's ``RunHooks`` can hold a run just before a model call (kill point "between
calls"). In the workers, a tracing processor stores the SDK's spans in Redis: nothing is
exported anywhere else.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from agents import (
    Agent,
    GuardrailFunctionOutput,
    OpenAIChatCompletionsModel,
    RunContextWrapper,
    RunHooks,
    Runner,
    TResponseInputItem,
    function_tool,
    handoff,
    input_guardrail,
    set_default_openai_client,
)
from agents.extensions.handoff_prompt import RECOMMENDED_PROMPT_PREFIX
from agents.tracing import Span, Trace, TracingProcessor, set_trace_processors
from openai import AsyncOpenAI
from pydantic import BaseModel

from stalwart import App, Limits, Policies
from stalwart.adapters.openai_agents import DurableAgentRunner
from stalwart.adapters.openai_agents._model import SCOPE
from tests.helpers import COUNTER_ENV, counters, exec_key, gate_key, gated_key

app = App("openai-fidelity")

URL_ENV = "FAKE_LLM_URL"
_url: dict[str, str] = {}
_clients: list[AsyncOpenAI] = []


def openai_client() -> AsyncOpenAI:
    """A client of the fake server (kept, so a test process can close them all)."""
    client = AsyncOpenAI(base_url=_url["url"], api_key="sk-fake")
    _clients.append(client)
    return client


def use_fake(url: str) -> None:
    """Point the SDK's default OpenAI client (and the factories' clients) at the fake server."""
    _url["url"] = url
    set_default_openai_client(openai_client(), use_for_tracing=False)


async def close_clients() -> None:
    """Close every client this process made (the test process, after its plain runs)."""
    while _clients:
        await _clients.pop().close()


# -- test instrumentation: counts, gates, spans (durable runs only) ------------------------


def _run_id() -> str | None:
    scope = SCOPE.get()
    return scope.ctx.run_id if scope is not None else None


async def hold_once(run_id: str, point: str) -> None:
    """If the test gated ``point``, say it arrived and wait for the gate, the first time only
    (the resumed worker passes the same point again)."""
    r = counters()
    if not (
        await r.exists(gated_key(run_id, point)) and await r.setnx(f"passed:{run_id}:{point}", 1)
    ):
        return
    await r.rpush(gate_key(run_id, f"{point}:arrived"), 1)
    # Short blocking reads: one longer than the connection's socket timeout would fail the
    # tool while the test is still starting the next worker on a loaded machine.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if await r.blpop([gate_key(run_id, point)], timeout=1):
            return
    raise TimeoutError(f"gate {point} of {run_id} never opened")


async def count(name: str) -> None:
    """Count one execution of ``name`` in this durable run; hold first if gated."""
    run_id = _run_id()
    if run_id is None:  # a plain run
        return
    await hold_once(run_id, name)
    await counters().incr(exec_key(run_id, name))


class GateHooks(RunHooks[Any]):
    """Holds a durable run just before a model call, once: ``llm:<agent>:<tool results>``."""

    async def on_llm_start(
        self,
        context: RunContextWrapper[Any],
        agent: Agent[Any],
        system_prompt: str | None,
        input_items: list[TResponseInputItem],
    ) -> None:
        run_id = _run_id()
        if run_id is None:
            return
        outputs = sum(
            1
            for i in input_items
            if isinstance(i, dict) and i.get("type") == "function_call_output"
        )
        await hold_once(run_id, f"llm:{agent.name}:{outputs}")


class RedisSpans(TracingProcessor):
    """Stores every finished span of a durable run in Redis (``spans:<run_id>``)."""

    def __init__(self, url: str, worker: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.worker = worker

    def on_trace_start(self, trace: Trace) -> None:
        pass

    def on_trace_end(self, trace: Trace) -> None:
        pass

    def on_span_start(self, span: Span[Any]) -> None:
        pass

    def on_span_end(self, span: Span[Any]) -> None:
        run_id = _run_id()
        if run_id is None:
            return
        record = {
            "id": span.span_id,
            "parent": span.parent_id,
            "worker": self.worker,
            "data": span.span_data.export(),
        }
        self.redis.rpush(f"spans:{run_id}", json.dumps(record, default=str))

    def shutdown(self) -> None:
        self.redis.close()

    def force_flush(self) -> None:
        pass


# -- the customer-service example --------------------------------------------------------


class AirlineAgentContext(BaseModel):
    passenger_name: str | None = None
    confirmation_number: str | None = None
    seat_number: str | None = None
    flight_number: str | None = None


@function_tool(
    name_override="faq_lookup_tool", description_override="Lookup frequently asked questions."
)
async def faq_lookup_tool(question: str) -> str:
    await count("faq_lookup_tool")
    question_lower = question.lower()
    if any(k in question_lower for k in ["bag", "baggage", "luggage", "carry-on"]):
        return (
            "You are allowed to bring one bag on the plane. "
            "It must be under 50 pounds and 22 inches x 14 inches x 9 inches."
        )
    if any(k in question_lower for k in ["seat", "seats", "seating", "plane"]):
        return (
            "There are 120 seats on the plane. "
            "There are 22 business class seats and 98 economy seats. "
            "Exit rows are rows 4 and 16. "
            "Rows 5-8 are Economy Plus, with extra legroom. "
        )
    if any(k in question_lower for k in ["wifi", "internet", "wireless"]):
        return "We have free wifi on the plane, join Airline-Wifi"
    return "I'm sorry, I don't know the answer to that question."


@function_tool
async def update_seat(
    context: RunContextWrapper[AirlineAgentContext], confirmation_number: str, new_seat: str
) -> str:
    """
    Update the seat for a given confirmation number.

    Args:
        confirmation_number: The confirmation number for the flight.
        new_seat: The new seat to update to.
    """
    await count("update_seat")
    # Update the context based on the customer's input
    context.context.confirmation_number = confirmation_number
    context.context.seat_number = new_seat
    # Ensure that the flight number has been set by the incoming handoff
    assert context.context.flight_number is not None, "Flight number is required"
    return f"Updated seat to {new_seat} for confirmation number {confirmation_number}"


async def on_seat_booking_handoff(context: RunContextWrapper[AirlineAgentContext]) -> None:
    await count("on_seat_booking_handoff")
    # Upstream draws a random number; a fixed one keeps the plain and the durable run's
    # requests comparable (the count above proves the callback runs once).
    context.context.flight_number = "FLT-123"


def seat_booking_instructions(
    context: RunContextWrapper[AirlineAgentContext], agent: Agent[AirlineAgentContext]
) -> str:
    ctx = context.context
    return (
        f"{RECOMMENDED_PROMPT_PREFIX}\n"
        "You are a seat booking agent. If you are speaking to a customer, you probably were "
        "transferred to from the triage agent.\n"
        f"The customer's flight is {ctx.flight_number}; confirmation number "
        f"{ctx.confirmation_number or 'unknown'}; seat {ctx.seat_number or 'not chosen'}.\n"
        "Use the following routine to support the customer.\n"
        "# Routine\n"
        "1. Ask for their confirmation number.\n"
        "2. Ask the customer what their desired seat number is.\n"
        "3. Use the update seat tool to update the seat on the flight.\n"
        "If the customer asks a question that is not related to the routine, transfer back "
        "to the triage agent."
    )


class RelevanceOutput(BaseModel):
    reasoning: str
    is_relevant: bool


guardrail_agent = Agent(
    model="gpt-guard",
    name="Relevance Guardrail",
    instructions=(
        "Determine if the user's message is highly unrelated to a normal customer service "
        "conversation with an airline (flights, bookings, baggage, check-in, flight status, "
        "policies, loyalty programs, etc.). Return is_relevant=True if it is, else False, "
        "plus a brief reasoning."
    ),
    output_type=RelevanceOutput,
)


@input_guardrail(name="Relevance Guardrail")
async def relevance_guardrail(
    context: RunContextWrapper[None], agent: Agent, input: str | list[TResponseInputItem]
) -> GuardrailFunctionOutput:
    result = await Runner.run(guardrail_agent, input, context=context.context)
    final = result.final_output_as(RelevanceOutput)
    return GuardrailFunctionOutput(output_info=final, tripwire_triggered=not final.is_relevant)


faq_agent = Agent[AirlineAgentContext](
    name="FAQ Agent",
    model="gpt-faq",
    handoff_description="A helpful agent that can answer questions about the airline.",
    instructions=f"""{RECOMMENDED_PROMPT_PREFIX}
    You are an FAQ agent. If you are speaking to a customer, you probably were transferred to from the triage agent.
    Use the following routine to support the customer.
    # Routine
    1. Identify the last question asked by the customer.
    2. Use the faq lookup tool to answer the question. Do not rely on your own knowledge.
    3. If you cannot answer the question, transfer back to the triage agent.""",
    tools=[faq_lookup_tool],
)

seat_booking_agent = Agent[AirlineAgentContext](
    name="Seat Booking Agent",
    model="gpt-seat",
    handoff_description="A helpful agent that can update a seat on a flight.",
    instructions=seat_booking_instructions,
    tools=[update_seat],
)

triage_agent = Agent[AirlineAgentContext](
    name="Triage Agent",
    model="gpt-triage",
    handoff_description="A triage agent that can delegate a customer's request to the appropriate agent.",
    instructions=(
        f"{RECOMMENDED_PROMPT_PREFIX} "
        "You are a helpful triaging agent. You can use your tools to delegate questions to "
        "other appropriate agents."
    ),
    handoffs=[
        faq_agent,
        handoff(agent=seat_booking_agent, on_handoff=on_seat_booking_handoff),
    ],
    input_guardrails=[relevance_guardrail],
)

faq_agent.handoffs.append(triage_agent)
seat_booking_agent.handoffs.append(triage_agent)

airline = DurableAgentRunner(
    "fid-airline", triage_agent, context=AirlineAgentContext, hooks=GateHooks(), app=app
)
# The same agent under a token budget (set per worker by the test that needs it).
airline_budget = DurableAgentRunner(
    "fid-airline-budget",
    triage_agent,
    context=AirlineAgentContext,
    policies=Policies(
        limits=Limits(max_tokens=int(os.environ.get("AIRLINE_MAX_TOKENS", "0")) or None)
    ),
    app=app,
)


# -- the human-in-the-loop example -------------------------------------------------------


@function_tool
async def get_weather(city: str) -> str:
    """Get the weather for a given city."""
    await count("get_weather")
    return f"The weather in {city} is sunny"


async def _needs_temperature_approval(_ctx: Any, params: dict[str, Any], _call_id: str) -> bool:
    return "Oakland" in params.get("city", "")


@function_tool(needs_approval=_needs_temperature_approval)
async def get_temperature(city: str) -> str:
    """Get the temperature for a given city."""
    await count("get_temperature")
    return f"The temperature in {city} is 20° Celsius"


def weather_agent() -> Agent[Any]:
    """The weather assistant (a factory: its model's client needs the server's address)."""
    client = openai_client()
    return Agent(
        name="Weather Assistant",
        instructions=(
            "You are a helpful weather assistant. Answer questions about weather and "
            "temperature using the available tools."
        ),
        tools=[get_weather, get_temperature],
        model=OpenAIChatCompletionsModel(model="gpt-weather", openai_client=client),
    )


weather = DurableAgentRunner("fid-weather", weather_agent, hooks=GateHooks(), app=app)


# -- a tool that raises, with and without the SDK's failure function -------------------


@function_tool(failure_error_function=None)
async def charge_card(amount: int) -> str:
    """Charge the customer's card."""
    await count("charge_card")
    raise ValueError(f"card declined for {amount}")


@function_tool
async def refund_card(amount: int) -> str:
    """Refund the customer's card."""
    await count("refund_card")
    raise ValueError(f"refund of {amount} refused")


def billing_agent() -> Agent[Any]:
    client = openai_client()
    return Agent(
        name="Billing",
        instructions="Charge or refund the card as asked.",
        tools=[charge_card, refund_card],
        model=OpenAIChatCompletionsModel(model="gpt-billing", openai_client=client),
    )


billing = DurableAgentRunner("fid-billing", billing_agent, app=app)


if os.environ.get(URL_ENV):  # a worker process: its clients and its trace go where tests look
    use_fake(os.environ[URL_ENV])
    set_trace_processors([RedisSpans(os.environ[COUNTER_ENV], os.environ.get("SPAN_WORKER", "?"))])
