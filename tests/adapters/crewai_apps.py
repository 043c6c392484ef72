"""CrewAI crews the test suite runs in real worker processes (``tests.adapters.crewai_apps:app``).

The models are :class:`ScriptedLLM`s: each answer is a function of the conversation, never of
a counter in the process (the process gets SIGKILLed). Every real model call and every real
tool execution is counted in Redis (``COUNTER_REDIS_URL``) under its step key, outside the
worker, so a test can prove what ran how often across a crash. A step whose key a test wrote
to ``block:<run_id>`` waits on the run's ``in`` gate: model calls before they count (nothing
of them has happened yet), tool calls after (they are in flight).
"""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry or tracing (they also make runs take 20 s).
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

import re
from typing import Any

import redis
from crewai import Agent, Crew, Process, Task
from crewai.tools import BaseTool, tool
from pydantic import BaseModel, Field

from stalwart import App, Limits, Policies, RetryPolicy, current_step
from stalwart.adapters.crewai import (
    DurableAgentRunner,
    DurableCrewRunner,
    ScriptedLLM,
    text,
    tool_call,
    tool_results,
)
from tests.helpers import COUNTER_ENV, exec_key, gate_key

app = App("crewai-tests")

_redis: redis.Redis | None = None


def counters() -> redis.Redis:
    # Not tests.helpers.counters(): CrewAI calls tools and models in threads with no event
    # loop, so this is a blocking client.
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ[COUNTER_ENV], socket_timeout=None)
    return _redis


def block_key(run_id: str) -> str:
    return f"block:{run_id}"


def order_key(run_id: str) -> str:
    return f"order:{run_id}"


def executed(*, block_first: bool = False) -> None:
    """Count this step's real execution; wait on the gate if the test asked to hold it."""
    info = current_step()
    assert info is not None, "called outside a durable step"
    held = (counters().get(block_key(info.run_id)) or b"").decode() == info.key
    if held and block_first:
        _wait(info.run_id)
    counters().incr(exec_key(info.run_id, info.key))
    counters().rpush(order_key(info.run_id), info.key)
    if held and not block_first:
        _wait(info.run_id)


def _wait(run_id: str) -> None:
    if counters().blpop([gate_key(run_id, "in")], timeout=60) is None:
        raise TimeoutError(f"gate of {run_id} never opened")


# -- tools: a function tool and a class-based one -----------------------------------------------


@tool("search")
def search(query: str) -> str:
    """Search the web for a query."""
    executed()
    return f"results for {query}"


class StatsArgs(BaseModel):
    topic: str = Field(description="The topic")


class StatsTool(BaseTool):
    name: str = "stats"
    description: str = "Market statistics for a topic."
    args_schema: type[BaseModel] = StatsArgs

    def _run(self, topic: str) -> dict[str, Any]:
        executed()
        return {"topic": topic, "growth": len(topic) % 7}


@tool("broken")
def broken(what: str) -> str:
    """A tool whose backend is down."""
    executed()
    raise ConnectionError(f"backend down for {what}")


@tool("charge")
def charge(amount: int) -> str:
    """Charge the customer's card."""
    executed()
    return f"charged {amount}"


# -- the scripted models ------------------------------------------------------------------------


def _topic(messages: list[dict[str, Any]]) -> str:
    found = re.search(r"TOPIC=([\w-]+)", text(messages))
    return found.group(1) if found else "unknown"


def researcher_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    """Two rounds of parallel tool calls, then findings built from their results."""
    executed(block_first=True)
    topic, results = _topic(messages), tool_results(messages)
    if not results:
        return [
            tool_call("search", {"query": f"{topic} pricing"}, "call_1a"),
            tool_call("search", {"query": f"{topic} competitors"}, "call_1b"),
            tool_call("stats", {"topic": topic}, "call_1c"),
        ]
    if len(results) == 3:
        return [
            tool_call("search", {"query": f"{topic} outlook"}, "call_2a"),
            tool_call("stats", {"topic": f"{topic}-next"}, "call_2b"),
        ]
    return "FINDINGS: " + " | ".join(results)


def writer_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    executed(block_first=True)
    found = re.search(r"FINDINGS: ([^\n]*)", text(messages))
    findings = found.group(1) if found else "none"
    return f"REPORT on {_topic(messages)}: {len(findings.split(' | '))} findings; {findings}"


def manager_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    """A hierarchical manager: delegates each task to one coworker, then reports back."""
    executed(block_first=True)
    results = tool_results(messages)
    if results:
        return "MANAGER: " + results[-1]
    body = text(messages)
    writing = "Write a report" in body
    found = re.search(r"FINDINGS: ([^\n]*)", body)
    context = f"FINDINGS: {found.group(1)}" if found else "none yet"
    return [
        tool_call(
            "delegate_work_to_coworker",
            {
                "task": f"{'Write a report' if writing else 'Research'} on TOPIC={_topic(messages)}",
                "context": context,
                "coworker": "Writer" if writing else "Researcher",
            },
            "call_m1",
        )
    ]


def react_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    """Text tool calling (ReAct): no native tool calls, tools named in the answer."""
    executed(block_first=True)
    body = text(messages)
    observations = re.findall(r"Observation: (results for [^\n]*)", body)
    if len(observations) < 2:
        query = f"{_topic(messages)} {'pricing' if not observations else 'outlook'}"
        return f'Thought: I need to search.\nAction: search\nAction Input: {{"query": "{query}"}}'
    return "Thought: I now know the final answer\nFinal Answer: " + " + ".join(observations)


def fragile_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    """Calls the broken tool once, then answers with what it was told."""
    executed(block_first=True)
    results = tool_results(messages)
    if not results:
        return [tool_call("broken", {"what": _topic(messages)}, "call_x")]
    return "GOT: " + results[0]


def payer_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    executed(block_first=True)
    results = tool_results(messages)
    if not results:
        return [tool_call("charge", {"amount": 42}, "call_pay")]
    return "PAID: " + results[0]


# -- crews ----------------------------------------------------------------------------------------


def _researcher(script: Any = researcher_script, **llm: Any) -> Agent:
    return Agent(
        role="Researcher",
        goal="Find facts about the topic",
        backstory="A meticulous analyst.",
        llm=ScriptedLLM(script, model="researcher-model", **llm),
        tools=[search, StatsTool()],
    )


def _writer() -> Agent:
    return Agent(
        role="Writer",
        goal="Write short reports",
        backstory="A concise writer.",
        llm=ScriptedLLM(writer_script, model="writer-model"),
    )


def research_crew() -> Crew:
    researcher, writer = _researcher(), _writer()
    research = Task(
        description="Research TOPIC={topic} with the tools.",
        expected_output="Findings",
        agent=researcher,
    )
    report = Task(
        description="Write a report on TOPIC={topic}.",
        expected_output="A report",
        agent=writer,
        context=[research],
    )
    return Crew(agents=[researcher, writer], tasks=[research, report])


def delegating_crew() -> Crew:
    return Crew(
        agents=[_researcher(), _writer()],
        tasks=[
            Task(description="Research TOPIC={topic}.", expected_output="Findings"),
            Task(description="Write a report on TOPIC={topic}.", expected_output="A report"),
        ],
        process=Process.hierarchical,
        manager_llm=ScriptedLLM(manager_script, model="manager-model"),
    )


research = DurableCrewRunner("research", research_crew(), app=app)
delegation = DurableCrewRunner("delegation", delegating_crew, app=app)
budget = DurableCrewRunner(
    "research_budget",
    research_crew,
    app=app,
    policies=Policies(limits=Limits(max_iterations=2)),
)
tokens_budget = DurableCrewRunner(
    "research_tokens",
    research_crew,
    app=app,
    policies=Policies(limits=Limits(max_tokens=1)),
)
react = DurableAgentRunner(
    "react",
    lambda: _researcher(react_script, function_calling=False),
    app=app,
)


def fragile_crew() -> Crew:
    agent = Agent(
        role="Caller",
        goal="Call the backend",
        backstory="Persistent.",
        llm=ScriptedLLM(fragile_script, model="caller-model"),
        tools=[broken],
    )
    task = Task(description="Fetch TOPIC={topic}.", expected_output="Data", agent=agent)
    return Crew(agents=[agent], tasks=[task])


fragile = DurableCrewRunner(
    "fragile",
    fragile_crew,
    app=app,
    policies=Policies(
        retry_by_name={"broken": RetryPolicy(max_attempts=2, initial_interval=0.05, jitter=0.0)}
    ),
)


def paying_crew() -> Crew:
    agent = Agent(
        role="Cashier",
        goal="Charge once",
        backstory="Careful with money.",
        llm=ScriptedLLM(payer_script, model="cashier-model"),
        tools=[charge],
    )
    task = Task(description="Charge for TOPIC={topic}.", expected_output="Receipt", agent=agent)
    return Crew(agents=[agent], tasks=[task])


payment = DurableCrewRunner(
    "payment", paying_crew, app=app, policies=Policies(at_most_once=frozenset({"charge"}))
)
