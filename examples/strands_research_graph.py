"""A research graph written with AWS Strands Agents, made crash-proof by Stalwart.

The graph is plain Strands code: a researcher that runs two web searches in parallel, an
analyst, and a writer, wired with ``GraphBuilder``. One line wraps it
(``DurableAgentRunner``); Stalwart workers then run Strands' own graph and agent loops with
every model call and tool call journaled in Redis, each node's calls under its own scope.

Run it from the repository root (needs ``pip install -e '.[strands]'``):

    python examples/strands_research_graph.py                # offline: scripted models
    OPENAI_API_KEY=sk-... python examples/strands_research_graph.py   # a real model

It starts embedded NATS and Redis servers, two worker processes and a supervisor, submits
a run, SIGKILLs the worker that owns it after ``--kill-after`` steps (default 5: inside the
analyst node), and follows the run's events while another worker resumes it. Strands' own
graph would start again from the entry point; here the researcher's calls are replayed from
the journal and the new worker goes live at the first call that had not completed. Against
your own deployment, serve the graph with ``stalwart worker strands_research_graph:app``
(from ``examples/``) and call ``runner.run(...)`` / ``runner.submit(...)`` with
``STALWART_NATS_URL`` / ``STALWART_REDIS_URL`` set.

Offline, every agent's model is ``stalwart.adapters.strands.ScriptedModel``, whose reply is
read from the conversation it is given (how many tool results it holds), never from a
counter in memory: after a crash the new worker's model has not seen the calls the old one
made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strands import Agent, tool
from strands.multiagent.graph import Graph, GraphBuilder

from stalwart import App
from stalwart.adapters.strands import DurableAgentRunner, ScriptedModel, reply, tool_call

if TYPE_CHECKING:
    from collections.abc import Callable

    from strands.models.model import Model
    from strands.types.content import Messages

app = App("strands-research")

HERE = Path(__file__).resolve().parent
REAL_MODEL = "gpt-4.1-mini" if os.environ.get("OPENAI_API_KEY") else None


# -- the tools and agents, exactly as one would write them for Strands ------------------------


@tool
async def search_web(query: str) -> str:
    """Search the web and return the main findings for the query."""
    await asyncio.sleep(0.3)  # stands in for network latency
    return f"{query}: 3 sources, demand up 4% quarter on quarter"


@tool
async def analyze_data(topic: str, findings: str) -> str:
    """Analyze findings on a topic and return the key takeaway."""
    await asyncio.sleep(0.3)
    return f"{topic}: growth is steady; watch pricing pressure ({len(findings)} chars reviewed)"


# -- offline: scripted models, each reply chosen from the conversation ------------------------


def _tool_results(messages: Messages) -> list[str]:
    return [
        str(block["toolResult"]["content"][0].get("text", ""))
        for m in messages
        for block in m["content"]
        if "toolResult" in block
    ]


def _prompt(messages: Messages) -> str:
    return " ".join(str(b.get("text", "")) for b in messages[0]["content"])


def researcher_script(messages: Messages) -> Any:
    found = _tool_results(messages)
    if not found:  # two searches at once: Strands' concurrent executor runs them together
        return reply(
            "Searching two angles.",
            tool_call("search_web", {"query": "Q4 pricing"}),
            tool_call("search_web", {"query": "Q4 competitors"}),
        )
    return "Findings: " + " | ".join(found)


def analyst_script(messages: Messages) -> Any:
    found = _tool_results(messages)
    if not found:
        findings = _prompt(messages).split("Findings: ", 1)[-1]
        return reply(tool_call("analyze_data", {"topic": "Q4 market", "findings": findings}))
    return f"Takeaway: {found[0]}"


def writer_script(messages: Messages) -> Any:
    takeaway = _prompt(messages).split("Takeaway: ", 1)[-1].split("\n", 1)[0]
    return f"Q4 market report. {takeaway}"


def model_for(script: Callable[[Messages], Any]) -> Model:
    if REAL_MODEL:
        from strands.models.openai import OpenAIModel

        return OpenAIModel(model_id=REAL_MODEL)

    async def slow(messages: Messages) -> Any:
        await asyncio.sleep(0.2)  # stands in for model latency
        return script(messages)

    return ScriptedModel(slow, model_id="scripted")


def build_graph() -> Graph:
    """A fresh graph per run: Strands agents keep their conversation in the object."""
    researcher = Agent(
        name="researcher",
        system_prompt="Search the web for the market question, from two angles at once.",
        tools=[search_web],
        model=model_for(researcher_script),
        callback_handler=None,
    )
    analyst = Agent(
        name="analyst",
        system_prompt="Analyze the findings you are given with the analyze_data tool.",
        tools=[analyze_data],
        model=model_for(analyst_script),
        callback_handler=None,
    )
    writer = Agent(
        name="writer",
        system_prompt="Write a three-sentence market report from the analysis.",
        model=model_for(writer_script),
        callback_handler=None,
    )
    builder = GraphBuilder()
    builder.add_node(researcher, "researcher")
    builder.add_node(analyst, "analyst")
    builder.add_node(writer, "writer")
    builder.add_edge("researcher", "analyst")
    builder.add_edge("analyst", "writer")
    builder.set_max_node_executions(10)
    builder.set_execution_timeout(300)
    return builder.build()


# The one line that makes it durable; `stalwart worker strands_research_graph:app` serves it.
runner = DurableAgentRunner("strands-research", build_graph, app=app)


# -- the demo: embedded servers, two workers, a supervisor, one SIGKILL ------------------------


async def demo(question: str, kill_after: int) -> None:
    from stalwart.testing import crash_stage

    env = {"OTEL_SDK_DISABLED": "true"}
    async with crash_stage("strands_research_graph:app", path=HERE, env=env) as stage:
        try:
            print(
                f"model: {REAL_MODEL or 'scripted (offline)'}; workers: {', '.join(stage.workers)}\n"
            )
            handle = await runner.submit(question)
            done = 0
            async for ev in handle.events():
                t = stage.stamp(ev.at)
                if ev.type in ("run.started", "run.resumed"):
                    data = f", {ev.data['journaled_steps']} steps to replay" if ev.data else ""
                    print(f"{t}  {ev.type:<13} on {ev.worker} (epoch {ev.epoch}{data})")
                elif ev.type == "step.completed":
                    done += 1
                    print(f"{t}  {ev.step:<32} {ev.data['kind']:<6} done on {ev.worker}")
                    if done == kill_after and len(stage.workers) == 2:
                        stage.kill(ev.worker)
                elif ev.type in ("run.completed", "run.failed", "run.cancelled"):
                    print(f"{t}  {ev.type} on {ev.worker}")
                    break
            print("\nresult:", json.dumps(await handle.result(timeout=60), indent=2))
        finally:
            await runner.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("question", nargs="?", default="Analyze Q4 market trends")
    parser.add_argument("--kill-after", type=int, default=5, help="SIGKILL after N steps")
    args = parser.parse_args()
    asyncio.run(demo(args.question, args.kill_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
