"""Strands agents, graphs and swarms that the adapter tests run in real worker processes.

Served as ``tests.adapters.strands_apps:app``. As in ``tests/apps.py``, everything a test
needs to observe across a SIGKILL lives in Redis (``COUNTER_REDIS_URL``): every real model
call is logged (``modelcalls:<run_id>``, the step key it ran in), every model and tool body
counts its executions (``exec:<run_id>:<step key>``), and a body whose step key is marked
``gated:<run_id>:<step key>`` blocks on the list ``gate:<run_id>:<step key>`` first, which
holds a run at an exact point.

The scripted models decide their answer from the conversation they are given (how many tool
results it holds), never from an in-process counter: the process that made the previous
calls may be dead.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel
from strands import Agent, ToolContext, tool
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.multiagent import Swarm
from strands.multiagent.graph import Graph, GraphBuilder
from strands.types.content import Messages
from strands.types.exceptions import ContextWindowOverflowException

from stalwart import NO_RETRY, App, RetryPolicy, current_step, durable
from stalwart.adapters.strands import DurableAgentRunner, ScriptedModel, reply, tool_call
from tests.helpers import calls_key, count_execution, counters, wait_if_gated

app = App("strands-tests")


async def count() -> None:
    """Count one execution of the running step, then wait at its gate if it has one.

    Counted first: a held body is in flight (the OpenAI apps wait before counting).
    """
    info = current_step()
    assert info is not None, "called outside a step"
    await count_execution()
    await wait_if_gated(info.run_id, info.key)


async def log_model_call(messages: Messages) -> None:
    info = current_step()
    assert info is not None, "a model call outside a step"
    await counters().rpush(calls_key(info.run_id), info.key)
    await count()


def results(messages: Messages) -> list[str]:
    """The text of every tool result in the conversation, in order."""
    return [
        str(block["toolResult"]["content"][0].get("text", ""))
        for m in messages
        for block in m["content"]
        if "toolResult" in block
    ]


def prompt(messages: Messages) -> str:
    first = messages[0]["content"][0]
    return str(first.get("text", ""))


def model(script: Any, model_id: str) -> ScriptedModel:
    return ScriptedModel(script, model_id=model_id, on_call=log_model_call)


# -- tools ------------------------------------------------------------------------------------


@tool
async def search(topic: str) -> str:
    """Search the web for a topic."""
    await count()
    return f"{len(topic) + 7} sources on {topic}"


@tool
async def fetch(source: str) -> str:
    """Fetch one report."""
    await count()
    return f"{source}: trending up"


@tool
async def summarize(notes: str) -> str:
    """Summarize notes."""
    await count()
    return f"summary of {notes.count(';') + 1} notes"


@tool
async def flaky_lookup(key: str) -> str:
    """A tool that always fails."""
    await count()
    raise ValueError(f"no record for {key}")


# -- one agent: 4 model calls, 6 tool calls (3 then 2 in parallel) ----------------------------


def research_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(
            "Planning the research.",
            tool_call("search", {"topic": "pricing"}, id="s1"),
            tool_call("search", {"topic": "competitors"}, id="s2"),
            tool_call("search", {"topic": "demand"}, id="s3"),
        )
    if len(done) == 3:
        return reply(
            tool_call("fetch", {"source": "pricing-report"}, id="f1"),
            tool_call("fetch", {"source": "competitor-report"}, id="f2"),
        )
    if len(done) == 5:
        return reply(tool_call("summarize", {"notes": "; ".join(done)}, id="sum"))
    return f"{prompt(messages)} => " + " | ".join(done)


def build_research() -> Agent:
    return Agent(
        name="research",
        model=model(research_script, "scripted-research"),
        tools=[search, fetch, summarize],
        # A new deployment may change the prompt: the tests use this to change the agent.
        system_prompt=os.environ.get("RESEARCH_PROMPT", "You research markets."),
        callback_handler=None,
    )


DurableAgentRunner("st-research", build_research, max_iterations=10, app=app)

# The same agent given as an object, not a factory: runs take turns and start fresh.
DurableAgentRunner("st-research-shared", build_research(), app=app)


def flaky_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("flaky_lookup", {"key": "k-1"}, id="x1"))
    return f"gave up: {done[0]}"


DurableAgentRunner(
    "st-flaky",
    lambda: Agent(
        model=model(flaky_script, "scripted-flaky"), tools=[flaky_lookup], callback_handler=None
    ),
    app=app,
)


# -- structured output and a tool that only touches agent state ------------------------------


class Brief(BaseModel):
    topic: str
    sources: int


def brief_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("search", {"topic": "pricing"}, id="b1"))
    sources = int(done[0].split()[0])
    return reply(tool_call("Brief", {"topic": "pricing", "sources": sources}, id="b2"))


DurableAgentRunner(
    "st-brief",
    lambda: Agent(
        model=model(brief_script, "scripted-brief"),
        tools=[search],
        structured_output_model=Brief,
        callback_handler=None,
    ),
    app=app,
)


@tool(context=True)
def remember(fact: str, tool_context: ToolContext) -> str:
    """Remember a fact for later in this conversation."""
    tool_context.agent.state.set("fact", fact)
    return "noted"


@tool(context=True)
async def recall(tool_context: ToolContext) -> str:
    """Recall the fact remembered earlier."""
    await count()
    return f"recalled {tool_context.agent.state.get('fact') or 'nothing'}"


def memory_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("remember", {"fact": "Q4 is up"}, id="m1"))
    if len(done) == 1:
        return reply(tool_call("recall", {}, id="m2"))
    return done[-1]


DurableAgentRunner(
    "st-memory",
    lambda: Agent(
        model=model(memory_script, "scripted-memory"),
        tools=[remember, recall],
        callback_handler=None,
    ),
    local_tools=["remember"],
    app=app,
)


# -- an at-most-once tool: a payment must never run twice ------------------------------------


@tool
@durable(at_most_once=True, retry=NO_RETRY)
async def charge(amount: int) -> str:
    """Charge the customer's card."""
    await count()
    return f"charged {amount}"


async def check_payment(idempotency_key: str, amount: int) -> str:
    """Asks the payment provider what happened to the charge with this idempotency key."""
    await counters().rpush(f"reconciled:{idempotency_key.split(':')[0]}", idempotency_key)
    return f"already charged {amount}"


@tool
@durable(at_most_once=True, reconcile=check_payment)
async def charge_checked(amount: int) -> str:
    """Charge the customer's card (the provider deduplicates by idempotency key)."""
    await count()
    return f"charged {amount}"


def pay_script(tool_name: str) -> Any:
    def script(messages: Messages) -> Any:
        done = results(messages)
        if not done:
            return reply(tool_call(tool_name, {"amount": 42}, id="p1"))
        return f"payment: {done[0]}"

    return script


for _name, _tool in (("st-pay", charge), ("st-pay-checked", charge_checked)):
    DurableAgentRunner(
        _name,
        lambda t=_tool: Agent(
            model=model(pay_script(t.tool_name), "scripted-pay"), tools=[t], callback_handler=None
        ),
        app=app,
    )


# -- a graph: two scouts in parallel, then an analyst, then a writer -------------------------


def node_script(node: str, tool_name: str, arg: str, value: str) -> Any:
    def script(messages: Messages) -> Any:
        done = results(messages)
        if not done:
            return reply(tool_call(tool_name, {arg: value}, id=f"{node}-1"))
        return f"{node}: {done[0]}"

    return script


def node_agent(node: str, tool_obj: Any, arg: str, value: str) -> Agent:
    return Agent(
        name=node,
        model=model(node_script(node, tool_obj.tool_name, arg, value), f"scripted-{node}"),
        tools=[tool_obj],
        callback_handler=None,
    )


def build_graph() -> Graph:
    builder = GraphBuilder()
    builder.add_node(node_agent("scout_a", search, "topic", "pricing"), "scout_a")
    builder.add_node(node_agent("scout_b", search, "topic", "competitors"), "scout_b")
    builder.add_node(node_agent("analyst", fetch, "source", "market-report"), "analyst")
    builder.add_node(node_agent("writer", summarize, "notes", "a; b; c"), "writer")
    builder.add_edge("scout_a", "analyst")
    builder.add_edge("scout_b", "analyst")
    builder.add_edge("analyst", "writer")
    builder.set_max_node_executions(10)
    builder.set_execution_timeout(120)
    return builder.build()


DurableAgentRunner("st-graph", build_graph, app=app)


# -- a swarm: triage hands off to a researcher, who hands off to a writer ---------------------


def handoff(to: str, note: str, id: str) -> Any:
    return tool_call("handoff_to_agent", {"agent_name": to, "message": note}, id=id)


def triage_script(messages: Messages) -> Any:
    if not results(messages):
        return reply("Routing.", handoff("researcher", "needs research", "t-1"))
    return "triage done"


def researcher_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(
            tool_call("search", {"topic": "pricing"}, id="r-1"),
            tool_call("search", {"topic": "demand"}, id="r-2"),
        )
    if len(done) == 2:
        return reply(handoff("writer", "; ".join(done), "r-3"))
    return "research handed over"


def writer_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        context = prompt(messages)
        note = context.split("Handoff Message: ", 1)[-1].split("\n", 1)[0]
        return reply(tool_call("summarize", {"notes": note}, id="w-1"))
    return f"final report ({done[0]})"


def build_swarm() -> Swarm:
    return Swarm(
        [
            Agent(
                name="triage",
                model=model(triage_script, "scripted-triage"),
                callback_handler=None,
            ),
            Agent(
                name="researcher",
                model=model(researcher_script, "scripted-researcher"),
                tools=[search],
                callback_handler=None,
            ),
            Agent(
                name="writer",
                model=model(writer_script, "scripted-writer"),
                tools=[summarize],
                callback_handler=None,
            ),
        ],
        max_handoffs=10,
        max_iterations=10,
    )


DurableAgentRunner("st-swarm", build_swarm, app=app)


# -- a tool whose errors the user asked to retry ------------------------------------------


@tool
@durable(retry=RetryPolicy(max_attempts=3, initial_interval=0.01))
async def shaky_lookup(key: str) -> str:
    """A lookup that fails twice, then answers (its retry policy allows three attempts)."""
    await count()
    info = current_step()
    assert info is not None
    if info.attempt < 3:
        raise ConnectionError(f"lookup of {key} timed out (attempt {info.attempt})")
    return f"record {key}"


def shaky_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("shaky_lookup", {"key": "k-2"}, id="y1"))
    return f"found: {done[0]}"


DurableAgentRunner(
    "st-shaky",
    lambda: Agent(
        model=model(shaky_script, "scripted-shaky"), tools=[shaky_lookup], callback_handler=None
    ),
    app=app,
)


# -- per-run structured output ---------------------------------------------------------------


DurableAgentRunner(
    "st-brief-per-run",
    lambda: Agent(
        model=model(brief_script, "scripted-brief"), tools=[search], callback_handler=None
    ),
    output_models=[Brief],
    app=app,
)


# -- a tool that asks a human (tool_context.interrupt) --------------------------------------


@tool(context=True)
async def refund(amount: int, tool_context: ToolContext) -> str:
    """Refund the customer, once a manager approved it."""
    await count()
    answer = tool_context.interrupt("manager_approval", reason={"amount": amount})
    return f"refunded {amount}" if answer == "yes" else f"refund refused ({answer})"


def refund_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("refund", {"amount": 30}, id="i1"))
    return f"done: {done[0]}"


DurableAgentRunner(
    "st-refund",
    lambda: Agent(
        model=model(refund_script, "scripted-refund"), tools=[refund], callback_handler=None
    ),
    app=app,
)


# -- a conversation that outgrows the model's window: Strands trims it and calls again -------

WINDOW = 6
"""The scripted model refuses a conversation of more messages than this."""


@tool
async def lookup(n: int) -> str:
    """Look up page n of the report."""
    if current_step() is not None:  # counted in durable runs; the plain run has no step
        await count()
    return f"page {n}"


def long_script(messages: Messages) -> Any:
    """Reads page after page; decides from the last message only, so a trimmed history
    gets the same answer."""
    if len(messages) > WINDOW:
        raise ContextWindowOverflowException(f"{len(messages)} messages do not fit")
    last = results(messages[-1:])
    page = int(last[0].split()[-1]) if last else 0
    if page < 4:
        return reply(tool_call("lookup", {"n": page + 1}, id=f"l{page + 1}"))
    return "seen: " + " | ".join(results(messages))


def build_long(script_model: Any = None) -> Agent:
    return Agent(
        model=script_model or model(long_script, "scripted-long"),
        tools=[lookup],
        conversation_manager=SlidingWindowConversationManager(window_size=40),
        callback_handler=None,
    )


DurableAgentRunner("st-long", build_long, app=app)


# -- an agent used as a tool by another --------------------------------------------------------


def assistant_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("search", {"topic": prompt(messages)}, id="r1"))
    return f"assistant found {done[0]}"


def orchestrator_script(messages: Messages) -> Any:
    done = results(messages)
    if not done:
        return reply(tool_call("research_assistant", {"input": "pricing"}, id="o1"))
    return f"orchestrated: {done[0]}"


def build_orchestrator() -> Agent:
    assistant = Agent(
        name="research_assistant",
        model=model(assistant_script, "scripted-assistant"),
        tools=[search],
        callback_handler=None,
    )
    return Agent(
        model=model(orchestrator_script, "scripted-orchestrator"),
        tools=[assistant.as_tool(name="research_assistant", description="Researches a topic.")],
        callback_handler=None,
    )


DurableAgentRunner("st-orchestrator", build_orchestrator, app=app)
