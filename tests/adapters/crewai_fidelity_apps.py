"""Upstream-style CrewAI crews for the fidelity tests (``tests.adapters.crewai_fidelity_apps:app``).

Written as CrewAI's docs write them: ``Agent(role, goal, backstory, tools=[...], llm=LLM(...))``,
``Task(description, expected_output, agent, context=[...])``, ``Crew(agents, tasks, process)``,
with CrewAI's real ``LLM`` class (``openai/<name>``: its native OpenAI provider) talking to the
loopback fake server of ``tests.adapters.fake_llm`` (``FIDELITY_LLM_URL``). The model
scripts live here too, so the test and the worker processes answer the same way.

- ``blog``: a sequential crew; the researcher runs two tools in parallel (one of them fails,
  as its backend is down), the writer gets the research as task context and asks the
  researcher a question (``allow_delegation=True``), who searches once more to answer.
- ``briefing``: a hierarchical crew; the manager delegates research and writing to its
  coworkers and returns a pydantic ``Briefing``.
- ``headline``: one task with ``human_input=True``: the editor revises on feedback.

Tools count their executions: in the test process (plain runs) in memory, in workers in
Redis (``COUNTER_REDIS_URL``) by run id. ``hold(point)``: a worker whose run reaches the
point named in Redis key ``fidelity:hold`` records it in ``fidelity:at`` and waits for the
gate ``fidelity:gate`` (the test SIGKILLs it meanwhile).
"""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry or tracing (they also make runs take 20 s).
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

import collections
import json
import re
from typing import Any

import redis
from crewai import LLM, Agent, Crew, Process, Task
from crewai.tasks.task_output import TaskOutput
from crewai.tools import tool
from pydantic import BaseModel

from stalwart import App, current_step
from stalwart.adapters.crewai import DurableCrewRunner
from tests.adapters.fake_llm import Reply, Request, ToolCall
from tests.helpers import COUNTER_ENV

URL_ENV = "FIDELITY_LLM_URL"
HOLD, AT, GATE = "fidelity:hold", "fidelity:at", "fidelity:gate"

app = App("crewai-fidelity")

# -- counting and holding --------------------------------------------------------------------

plain_execs: collections.Counter[str] = collections.Counter()
_redis: redis.Redis | None = None


def _counters() -> redis.Redis | None:
    global _redis
    if _redis is None and os.environ.get(COUNTER_ENV):
        _redis = redis.Redis.from_url(os.environ[COUNTER_ENV], socket_timeout=None)
    return _redis


def execs_key(run_id: str) -> str:
    return f"fidelity:execs:{run_id}"


def executed(name: str, args: dict[str, Any]) -> None:
    """Count a tool's execution (by run id in a durable run), then wait if held there."""
    call = f"{name} {json.dumps(args, sort_keys=True)}"
    info = current_step()
    r = _counters()
    if info is None or r is None:
        plain_execs[call] += 1
        return
    r.hincrby(execs_key(info.run_id), call, 1)
    hold(f"tool:{call}")


def hold(point: str) -> None:
    """In a worker, wait at ``point`` when the test asked for it (see the module docs)."""
    r = _counters()
    if r is None or os.environ.get("FIDELITY_WORKER") != "1":
        return
    if (r.get(HOLD) or b"").decode() != point:
        return
    r.set(AT, point)
    if r.blpop([GATE], timeout=60) is None:
        raise TimeoutError(f"the gate at {point} never opened")


# -- tools -------------------------------------------------------------------------------------


@tool("Search the web")
def search(query: str) -> str:
    """Search the web for a query and return the top result."""
    executed("search", {"query": query})
    return f"top result for '{query}'"


@tool("Pricing API")
def pricing(product: str) -> str:
    """Current prices of a product."""
    executed("pricing", {"product": product})
    raise ConnectionError(f"pricing service unavailable for {product}")


def between_tasks(output: TaskOutput) -> None:
    """The research task's callback: between two model calls, a point to crash at."""
    hold(f"callback:{output.name or output.description[:20]}")


# -- model scripts: the fake server answers from the request alone -------------------------------


def _topic(req: Request) -> str:
    found = re.search(r"TOPIC=([\w-]+)", json.dumps(req.messages()))
    return found.group(1) if found else "unknown"


def researcher(req: Request) -> Reply:
    results, user = req.tool_results(), req.last_user_text()
    topic = _topic(req)
    if "QUESTION:" in user:  # asked by a coworker: search once more, then answer
        if not results:
            return Reply(tool_calls=(ToolCall("search_the_web", {"query": f"{topic} leader"}),))
        return Reply(text=f"ANSWER: the leader is in {results[0]}")
    if not results:
        return Reply(
            tool_calls=(
                ToolCall("search_the_web", {"query": f"{topic} trends"}),
                ToolCall("pricing_api", {"product": topic}),
            )
        )
    return Reply(text="FINDINGS: " + " | ".join(results))


def writer(req: Request) -> Reply:
    results, user = req.tool_results(), req.last_user_text()
    topic = _topic(req)
    if "Write two lines" in user:  # delegated by a manager
        return Reply(text=f"LINES on {topic}: {user.split('from: ')[-1][:80]}")
    if not results:
        question = {
            "question": f"QUESTION: who leads TOPIC={topic}?",
            "context": "Writing a blog post.",
            "coworker": "Senior Research Analyst",
        }
        return Reply(tool_calls=(ToolCall("ask_question_to_coworker", question),))
    found = re.search(r"FINDINGS: ([^\n\"]*)", user)
    return Reply(text=f"POST on {topic}: {found.group(1) if found else '?'} / {results[0]}")


def manager(req: Request) -> Reply:
    results = req.tool_results()
    topic = _topic(req)
    if len(results) == 0:
        work = {
            "task": f"Research TOPIC={topic} with your tools.",
            "context": "A briefing for the board.",
            "coworker": "Senior Research Analyst",
        }
        return Reply(tool_calls=(ToolCall("delegate_work_to_coworker", work),))
    if len(results) == 1:
        work = {
            "task": f"Write two lines on TOPIC={topic} from: {results[0][:200]}",
            "context": "A briefing for the board.",
            "coworker": "Tech Content Writer",
        }
        return Reply(tool_calls=(ToolCall("delegate_work_to_coworker", work),))
    return Reply(text=json.dumps({"topic": topic, "summary": results[-1][:120]}))


def editor(req: Request) -> Reply:
    feedback = [
        m["content"] for m in req.messages() if m.get("role") == "user" and "FEEDBACK" in str(m)
    ]
    return Reply(text=f"HEADLINE v{len(feedback) + 1} for {_topic(req)}")


SCRIPTS = {
    "fake-researcher": researcher,
    "fake-writer": writer,
    "fake-manager": manager,
    "fake-editor": editor,
}

# -- the crews, as CrewAI's docs write them -----------------------------------------------------


def _llm(name: str) -> LLM:
    return LLM(model=f"openai/{name}", base_url=os.environ[URL_ENV], api_key="sk-fake")


def _researcher() -> Agent:
    return Agent(
        role="Senior Research Analyst",
        goal="Uncover cutting-edge developments in the topic",
        backstory="You work at a leading think tank and find what matters.",
        tools=[search, pricing],
        llm=_llm("fake-researcher"),
        allow_delegation=False,
    )


def _writer(*, delegate: bool) -> Agent:
    return Agent(
        role="Tech Content Writer",
        goal="Craft compelling content on tech advancements",
        backstory="You are a renowned content strategist.",
        llm=_llm("fake-writer"),
        allow_delegation=delegate,
    )


def blog_crew() -> Crew:
    researcher, writer = _researcher(), _writer(delegate=True)
    research = Task(
        name="research",
        description="Research task: the latest developments in TOPIC={topic}.",
        expected_output="A list of findings.",
        agent=researcher,
        callback=between_tasks,
    )
    write = Task(
        name="write",
        description="Write a short blog post about TOPIC={topic}.",
        expected_output="A blog post of two paragraphs.",
        agent=writer,
        context=[research],
    )
    return Crew(agents=[researcher, writer], tasks=[research, write], process=Process.sequential)


class Briefing(BaseModel):
    topic: str
    summary: str


def briefing_crew() -> Crew:
    task = Task(
        name="briefing",
        description="Prepare a board briefing on TOPIC={topic}.",
        expected_output="A briefing with the topic and a summary.",
        output_pydantic=Briefing,
    )
    return Crew(
        agents=[_researcher(), _writer(delegate=False)],
        tasks=[task],
        process=Process.hierarchical,
        manager_llm=_llm("fake-manager"),
    )


def headline_crew() -> Crew:
    editor = Agent(
        role="Editor",
        goal="Write headlines people click",
        backstory="A tabloid veteran.",
        llm=_llm("fake-editor"),
    )
    task = Task(
        description="Write a headline on TOPIC={topic}.",
        expected_output="One headline.",
        agent=editor,
        human_input=True,
    )
    return Crew(agents=[editor], tasks=[task])


CREWS = {"blog": blog_crew, "briefing": briefing_crew, "headline": headline_crew}
runners = {name: DurableCrewRunner(name, build, app=app) for name, build in CREWS.items()}
