"""A LangGraph research agent made crash-proof by Stalwart, and a crash to prove it.

    python examples/langgraph_research_agent.py              # offline: a scripted model
    python examples/langgraph_research_agent.py --no-crash

The agent is ordinary LangGraph: ``create_react_agent`` with two tools, and a model that
asks for three searches at once (parallel tool calls). ``DurableGraphRunner`` wraps the
compiled graph without changing it. The script starts embedded NATS and Redis servers (or
uses ``STALWART_NATS_URL`` / ``STALWART_REDIS_URL``), two ``stalwart worker`` processes
serving this module's ``app`` and a supervisor, submits a question, SIGKILLs the worker that
runs it after its second search, and follows the run's events while the other worker resumes
the graph from its checkpoints in Redis: the finished model call and searches are not run
again. Swap ``ScriptedModel()`` for any LangChain chat model (``ChatOpenAI(...)``) to use a
real one. Needs ``pip install 'stalwart[langgraph]'``.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.warnings import LangGraphDeprecatedSinceV10

from stalwart import App
from stalwart.adapters.langgraph import DurableGraphRunner, StalwartSaver

if TYPE_CHECKING:
    from stalwart.testing import CrashStage

TOPICS = ["pricing", "competitors", "churn"]
HERE = str(Path(__file__).resolve().parent)

# -- the agent, exactly as one would write it ------------------------------------------------


@tool
async def search(topic: str) -> str:
    """Search the web for a topic."""
    await asyncio.sleep(0.6 + 0.4 * TOPICS.index(topic))  # a slow backend
    return f"{topic}: 3 sources found"


@tool
async def write_report(findings: list[str]) -> str:
    """Write the report from the findings."""
    await asyncio.sleep(0.5)
    return "report: " + "; ".join(findings)


class ScriptedModel(BaseChatModel):
    """Offline stand-in for an LLM: its answer depends only on the conversation so far, so a
    worker that resumes the run gets the same answers as the one that started it."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedModel:
        return self

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        results = [m.content for m in messages if isinstance(m, ToolMessage)]
        if not results:  # plan: search every topic at once
            calls = [
                {"name": "search", "args": {"topic": t}, "id": f"search-{t}", "type": "tool_call"}
                for t in TOPICS
            ]
            answer = AIMessage(content="", tool_calls=calls)
        elif len(results) == len(TOPICS):
            call = {"name": "write_report", "args": {"findings": results}, "id": "report"}
            answer = AIMessage(content="", tool_calls=[{**call, "type": "tool_call"}])
        else:
            answer = AIMessage(content=f"Done. {results[-1]}")
        return ChatResult(generations=[ChatGeneration(message=answer)])

    async def _agenerate(self, messages: list[BaseMessage], *args: Any, **kw: Any) -> ChatResult:
        await asyncio.sleep(0.4)  # "thinking"
        return self._generate(messages)


def build_agent() -> Any:
    from langgraph.prebuilt import create_react_agent

    # langchain's create_agent is the successor; both compile to a LangGraph graph.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangGraphDeprecatedSinceV10)
        return create_react_agent(ScriptedModel(), [search, write_report])


# -- made durable: one line ------------------------------------------------------------------

app = App("langgraph-research")
runner = DurableGraphRunner(
    "research",
    build_agent(),
    app=app,
    output_fn=lambda state: state["messages"][-1].content,
)


# -- the demonstration -----------------------------------------------------------------------


async def main(crash: bool) -> None:
    from stalwart.testing import crash_stage

    async with crash_stage(f"{Path(__file__).stem}:app", path=HERE) as stage:
        try:
            print(f"workers: {', '.join(stage.workers)}")
            question = {"messages": [("user", "How is our market doing?")]}
            handle = await runner.submit(question)
            await follow(handle, stage, crash)
            print(f"\nresult: {await handle.result(timeout=120)}")
            store = stage.client.store
            journal = await store.journal_bytes(handle.run_id)
            saver = StalwartSaver(store.redis, namespace=store.ns)
            checkpoints = await saver.thread_bytes(handle.run_id)
            print(f"Redis: journal {journal} bytes, LangGraph checkpoints {checkpoints} bytes")
        finally:
            await runner.aclose()


async def follow(handle: Any, stage: CrashStage, crash: bool) -> None:
    """Print the run's events as they happen; SIGKILL the owner after its 2nd search."""
    searches = 0
    async for ev in handle.events():
        stamp = stage.stamp(ev.at)
        if ev.type in ("run.started", "run.resumed"):
            replay = f", {ev.data['journaled_steps']} tasks stored" if ev.data else ""
            print(f"{stamp}  {ev.type} on {ev.worker}{replay}")
        elif ev.type == "step.completed":
            print(f"{stamp}  {ev.data['name']:<6} done on {ev.worker}  ({ev.step})")
            if ev.data["name"] == "tools":
                searches += 1
                if searches == 2 and crash:
                    stage.kill(ev.worker)  # a search is in flight
        elif ev.type in ("run.completed", "run.failed", "run.cancelled"):
            print(f"{stamp}  {ev.type}")
            return


if __name__ == "__main__":
    asyncio.run(main(crash="--no-crash" not in sys.argv))
