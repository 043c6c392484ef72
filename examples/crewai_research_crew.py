"""A CrewAI research crew made crash-proof by Stalwart, and a crash to prove it.

    python examples/crewai_research_crew.py                 # offline: scripted models
    OPENAI_API_KEY=sk-... python examples/crewai_research_crew.py   # a real model
    python examples/crewai_research_crew.py --no-crash

The crew is ordinary CrewAI: a researcher with two tools (which it calls in parallel) and a
writer, two sequential tasks. ``DurableCrewRunner`` wraps it without changing it. The script
starts embedded NATS and Redis servers (or uses ``STALWART_NATS_URL`` / ``STALWART_REDIS_URL``),
two ``stalwart worker`` processes serving this module's ``app`` and a supervisor, submits a
run, SIGKILLs the worker that runs it after its fourth tool call (the fifth, a parallel
sibling, is still running: it runs again on the new worker), and follows the run's events
while another worker resumes it: the journaled model responses and tool results are replayed,
nothing completed runs again, and the crew continues inside the research task where it died.
Needs ``pip install 'stalwart[crewai]'`` (in an environment of its own: CrewAI pins
``openai<3``).

Offline, both agents use ``ScriptedLLM``: each answer is computed from the conversation it is
given (how many tool results it holds), never from a counter in memory, because after a crash
the new worker's model has not seen the calls the old one made.
"""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry or tracing.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from crewai import LLM, Agent, Crew, Task
from crewai.tools import tool

from stalwart import App, current_step
from stalwart.adapters.crewai import (
    CrewResult,
    DurableCrewRunner,
    ScriptedLLM,
    text,
    tool_call,
    tool_results,
)

if TYPE_CHECKING:
    from crewai.llms.base_llm import BaseLLM

    from stalwart.testing import CrashStage

HERE = Path(__file__).resolve().parent
REAL_MODEL = "gpt-4o-mini" if os.environ.get("OPENAI_API_KEY") else None

PRICES = {"espresso machines": 249.0, "grinders": 129.0, "kettles": 59.0}


# -- the crew, exactly as one would write it ------------------------------------------------


@tool("search_web")
def search_web(query: str) -> str:
    """Search the web and return the main finding for the query."""
    time.sleep(0.4)  # a slow API
    return f"{query}: demand up 12% year on year"


@tool("price_check")
def price_check(product: str) -> str:
    """Look up the average retail price of a product category."""
    time.sleep(0.8)  # slower still
    step = current_step()  # <run id>:<step key>: an idempotency key for APIs that deduplicate
    key = step.key if step else "outside-stalwart"
    return f"{product}: average price {PRICES.get(product, 99.0):.2f} (idempotency key <run>:{key})"


def _researcher_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    """Offline stand-in for an LLM: the answer depends only on the conversation so far."""
    results = tool_results(messages)
    market = re.search(r"MARKET=([\w ]+?)\.", text(messages))
    topic = market.group(1) if market else "coffee gear"
    if not results:  # first round: three calls at once (CrewAI runs them in parallel)
        return [
            tool_call("search_web", {"query": f"{topic} trends"}, "call_1"),
            tool_call("price_check", {"product": "espresso machines"}, "call_2"),
            tool_call("price_check", {"product": "grinders"}, "call_3"),
        ]
    if len(results) == 3:  # second round, after reading the first
        return [
            tool_call("search_web", {"query": f"{topic} competitors"}, "call_4"),
            tool_call("price_check", {"product": "kettles"}, "call_5"),
        ]
    return "Findings:\n" + "\n".join(f"- {r}" for r in results)


def _writer_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    findings = re.findall(r"^- (.*)$", text(messages), flags=re.MULTILINE)
    bullets = "; ".join(f.split(":")[0] for f in findings)
    return f"Report: {len(findings)} findings ({bullets}). Recommendation: lead with grinders."


def llm(script: Any) -> BaseLLM | str:
    """The real model when an API key is set, else ``script`` as a ScriptedLLM."""
    return LLM(model=REAL_MODEL) if REAL_MODEL else ScriptedLLM(script)


def build_crew() -> Crew:
    researcher = Agent(
        role="Market researcher",
        goal="Collect demand and price facts with the tools, in parallel where possible",
        backstory="A meticulous analyst who checks every number.",
        llm=llm(_researcher_script),
        tools=[search_web, price_check],
    )
    writer = Agent(
        role="Report writer",
        goal="Turn findings into a short recommendation",
        backstory="Writes one crisp paragraph.",
        llm=llm(_writer_script),
    )
    research = Task(
        description="Research the MARKET={market}. Check demand and prices.",
        expected_output="A bullet list of findings",
        agent=researcher,
    )
    report = Task(
        description="Write a short report on the {market} market from the findings.",
        expected_output="One paragraph",
        agent=writer,
        context=[research],
    )
    return Crew(agents=[researcher, writer], tasks=[research, report])


# -- made durable: one line ------------------------------------------------------------------

app = App("crewai-research")
runner = DurableCrewRunner("research-crew", build_crew, app=app)


# -- the demonstration -----------------------------------------------------------------------


async def main(crash: bool) -> None:
    from stalwart.testing import crash_stage

    async with crash_stage(f"{Path(__file__).stem}:app", path=HERE) as stage:
        try:
            print(
                f"model: {REAL_MODEL or 'scripted (offline)'}; workers: {', '.join(stage.workers)}"
            )
            handle = await runner.submit({"market": "coffee gear"})
            await follow(handle, stage, crash)
            result = msgspec.convert(await handle.result(timeout=120), CrewResult)
            print("\nresult:")
            for task in result.tasks:
                print(f"  [{task.agent}] {task.raw}")
        finally:
            await runner.aclose()


async def follow(handle: Any, stage: CrashStage, crash: bool) -> None:
    """Print the run's events as they happen; SIGKILL the owner after its 4th tool call."""
    tools_done = 0
    async for ev in handle.events():
        stamp = stage.stamp(ev.at)
        if ev.type in ("run.started", "run.resumed"):
            replay = f", {ev.data['journaled_steps']} steps to replay" if ev.data else ""
            print(f"{stamp}  {ev.type} on {ev.worker}{replay}")
        elif ev.type == "tool.call":
            print(f"{stamp}  {ev.step}: {ev.data['tool']}({json.dumps(ev.data['args'])})")
        elif ev.type == "step.completed":
            print(f"{stamp}  {ev.step} done on {ev.worker}")
            if ev.data and ev.data.get("kind") == "tool":
                tools_done += 1
                if tools_done == 4 and crash:
                    stage.kill(ev.worker)
        elif ev.type in ("run.completed", "run.failed", "run.cancelled"):
            print(f"{stamp}  {ev.type}")
            return


if __name__ == "__main__":
    asyncio.run(main(crash="--no-crash" not in sys.argv))
