"""A market-research agent written with the OpenAI Agents SDK, made crash-proof by Stalwart.

The agent is plain SDK code: two function tools and a handoff to a report writer. One line
wraps it (``DurableAgentRunner``); Stalwart workers then run the SDK's own loop with every
model call, tool call and handoff journaled in Redis.

Run it from the repository root (needs ``pip install -e '.[openai-agents]'``):

    python examples/openai_market_research.py                # offline: scripted model
    OPENAI_API_KEY=sk-... python examples/openai_market_research.py   # a real model

It starts embedded NATS and Redis servers, two worker processes and a supervisor, submits
a run, SIGKILLs the worker that owns it after ``--kill-after`` steps (default 3), and
follows the run's events while another worker resumes it: the journaled calls are not
made again. Against your own deployment, serve the agent with
``stalwart worker openai_market_research:app`` (from ``examples/``) and call
``runner.run(...)`` / ``runner.submit(...)`` with ``STALWART_NATS_URL`` /
``STALWART_REDIS_URL`` set.

Offline, the model is the SDK's ``agents.testing.ScriptedModel``, asked for one scripted
step per call. Which step comes next is read from the conversation it is given (how many
tool results it holds), never from a counter in memory: after a crash the new worker's
model has not seen the calls the old one made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents import Agent, RunConfig, function_tool
from agents.models.interface import Model
from agents.testing import ScriptedModel, assistant_message, function_call

from stalwart import App
from stalwart.adapters.openai_agents import DurableAgentRunner

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from agents.items import ModelResponse, TResponseOutputItem, TResponseStreamEvent

app = App("market-research")

HERE = Path(__file__).resolve().parent
REAL_MODEL = "gpt-4.1-mini" if os.environ.get("OPENAI_API_KEY") else None


# -- the agent, exactly as one would write it for the SDK ---------------------------------


@function_tool
async def search_web(query: str) -> str:
    """Search the web and return the main findings for the query."""
    await asyncio.sleep(0.3)  # stands in for network latency
    return f"{query}: 3 sources, demand up 4% quarter on quarter"


@function_tool
async def analyze_data(topic: str, findings: str) -> str:
    """Analyze findings on a topic and return the key takeaway."""
    await asyncio.sleep(0.3)
    return f"{topic}: growth is steady; watch pricing pressure ({len(findings)} chars reviewed)"


# -- offline: the SDK's scripted model, one step per call, chosen by the conversation -------


def _tool_outputs(items: Any) -> list[str]:
    if not isinstance(items, list):
        return []
    return [
        str(i.get("output"))
        for i in items
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    ]


def analyst_script(items: Any) -> list[TResponseOutputItem]:
    outputs = _tool_outputs(items)
    if not outputs:  # two searches at once: the SDK runs them concurrently
        return [
            function_call("search_web", {"query": "Q4 pricing"}, call_id="call_search_1"),
            function_call("search_web", {"query": "Q4 competitors"}, call_id="call_search_2"),
        ]
    if len(outputs) == 2:
        return [
            function_call(
                "analyze_data",
                {"topic": "Q4 market", "findings": " ".join(outputs)},
                call_id="call_analyze",
            )
        ]
    return [function_call("transfer_to_report_writer", {}, call_id="call_handoff")]


def writer_script(items: Any) -> list[TResponseOutputItem]:
    findings = _tool_outputs(items)[:3]
    return [assistant_message("Q4 market report. " + " ".join(f"- {f}" for f in findings))]


class ConversationScriptedModel(Model):
    """Answers with ``ScriptedModel``, one step per call, picked from the conversation."""

    def __init__(self, script: Callable[[Any], list[TResponseOutputItem]]) -> None:
        self.script = script

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> ModelResponse:
        await asyncio.sleep(0.2)  # stands in for model latency
        model = ScriptedModel([self.script(input)])
        return await model.get_response(system_instructions, input, *args, **kwargs)

    async def stream_response(
        self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any
    ) -> AsyncIterator[TResponseStreamEvent]:
        model = ScriptedModel([self.script(input)])
        async for event in model.stream_response(system_instructions, input, *args, **kwargs):
            yield event


def model_for(script: Callable[[Any], list[TResponseOutputItem]]) -> str | Model:
    return REAL_MODEL if REAL_MODEL else ConversationScriptedModel(script)


report_writer = Agent(
    name="report_writer",
    instructions="Write a short market report from the research in the conversation.",
    model=model_for(writer_script),
)

agent = Agent(
    name="research-analyst",
    instructions=(
        "Research the market question: search the web for the relevant topics, analyze the "
        "findings, then hand off to the report writer."
    ),
    tools=[search_web, analyze_data],
    handoffs=[report_writer],
    model=model_for(analyst_script),
)

# The one line that makes it durable; `stalwart worker openai_market_research:app` serves it.
runner = DurableAgentRunner(
    "market-research",
    agent,
    max_iterations=10,
    run_config=RunConfig(tracing_disabled=REAL_MODEL is None),
    app=app,
)


# -- the demo: embedded servers, two workers, a supervisor, one SIGKILL --------------------


async def demo(question: str, kill_after: int) -> None:
    from stalwart.testing import crash_stage

    async with crash_stage("openai_market_research:app", path=HERE) as stage:
        try:
            print(
                f"model: {REAL_MODEL or 'scripted (offline)'}; workers: {', '.join(stage.workers)}\n"
            )
            handle = await runner.submit(question)
            done = 0
            async for ev in handle.events():
                t = stage.stamp(ev.at)
                if ev.type in ("run.started", "run.resumed"):
                    print(f"{t}  {ev.type:<13} on {ev.worker} (epoch {ev.epoch})")
                elif ev.type == "step.completed":
                    done += 1
                    print(f"{t}  {ev.step:<28} {ev.data['kind']:<8} done on {ev.worker}")
                    if done == kill_after and len(stage.workers) == 2:
                        stage.kill(ev.worker)
                elif ev.type in ("run.completed", "run.failed", "run.cancelled"):
                    print(f"{t}  {ev.type} on {ev.worker}")
                    break
            result = await runner.result(handle, timeout=60)  # the SDK's RunResult
            print("\nresult:", json.dumps(result.final_output, indent=2))
        finally:
            await runner.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("question", nargs="?", default="Analyze Q4 market trends")
    parser.add_argument("--kill-after", type=int, default=3, help="SIGKILL after N steps")
    args = parser.parse_args()
    asyncio.run(demo(args.question, args.kill_after))
    return 0


if __name__ == "__main__":
    sys.exit(main())
