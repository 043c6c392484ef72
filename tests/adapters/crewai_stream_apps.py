"""CrewAI crews for the streaming and conversation tests (``tests/adapters/test_crewai_stream.py``).

Served as ``tests.adapters.crewai_stream_apps:app``. The crews are ``Crew(stream=True)`` with
:class:`ScriptedLLM`s, which stream word by word through CrewAI's event bus. A model step
marked ``gated:<run_id>:<step key>/mid`` holds after streaming two words, so a test can kill
the worker in the middle of a streamed call. Every model call logs the prompt it was sent
(``seen:<run_id>``, JSON lines) in the counters' Redis, outside the workers.
"""

from __future__ import annotations

import os

# Before CrewAI is imported: no telemetry or tracing.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

import json
from typing import Any

import redis
from crewai import Agent, Crew, Task
from crewai.tools import tool
from pydantic import PrivateAttr

from stalwart import App, current_step
from stalwart.adapters.crewai import (
    DurableAgentRunner,
    DurableCrewRunner,
    ScriptedLLM,
    tool_call,
    tool_results,
)
from tests.helpers import COUNTER_ENV, exec_key, gate_key, gated_key

app = App("crewai-stream-tests")

HELD_AFTER = 2
"""Words a gated model call streams before it holds."""

_redis: redis.Redis | None = None


def counters() -> redis.Redis:
    # Blocking: CrewAI calls models and tools in threads with no event loop.
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ[COUNTER_ENV], socket_timeout=None)
    return _redis


def seen_key(run_id: str) -> str:
    return f"seen:{run_id}"


def _hold(run_id: str, gate: str) -> None:
    if counters().exists(gated_key(run_id, gate)):
        if counters().blpop([gate_key(run_id, gate)], timeout=60) is None:
            raise TimeoutError(f"gate {gate} never opened")


class WordLLM(ScriptedLLM):
    """A ``ScriptedLLM`` that logs each durable call and can hold before it or mid-stream."""

    _sent: int = PrivateAttr(default=0)

    def call(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        info = current_step()
        if info is not None:
            counters().incr(exec_key(info.run_id, info.key))
            counters().rpush(seen_key(info.run_id), json.dumps(messages, default=str))
            _hold(info.run_id, info.key)
        self._sent = 0
        return super().call(messages, *args, **kwargs)

    def _emit_stream_chunk_event(self, chunk: str, *args: Any, **kwargs: Any) -> None:
        super()._emit_stream_chunk_event(chunk, *args, **kwargs)
        self._sent += 1
        info = current_step()
        if self._sent == HELD_AFTER and info is not None:
            _hold(info.run_id, f"{info.key}/mid")


@tool("lookup")
def lookup(topic: str) -> str:
    """Look a topic up."""
    return f"{len(topic)} facts on {topic}"


FINAL = "The outlook for pricing is steady with 7 facts behind it and no surprises"
FIRST_TASK = "Pricing holds at current levels"


def analyst_script(messages: list[dict[str, Any]], tools: list[str]) -> Any:
    if "Summarize" in str(messages[-1].get("content")) or "Summarize" in str(messages):
        if not tool_results(messages):
            return [tool_call("lookup", {"topic": "pricing"}, "call_l1")]
        return FINAL
    return FIRST_TASK


def stream_crew() -> Crew:
    analyst = Agent(
        role="Analyst",
        goal="Answer about {topic}",
        backstory="Brief.",
        llm=WordLLM(analyst_script, model="words-model"),
        tools=[lookup],
    )
    research = Task(description="Research TOPIC={topic}.", expected_output="A line", agent=analyst)
    summary = Task(
        description="Summarize TOPIC={topic}.",
        expected_output="A line",
        agent=analyst,
        context=[research],
    )
    return Crew(agents=[analyst], tasks=[research, summary], stream=True)


streamed = DurableCrewRunner("crew-stream", stream_crew, app=app)
quiet = DurableCrewRunner("crew-stream-quiet", stream_crew, stream=False, app=app)


def chat_script(messages: list[dict[str, Any]], tools: list[str]) -> str:
    prompt = "\n".join(str(m.get("content") or "") for m in messages)
    turns = prompt.count("User: ")
    question = prompt.split("QUESTION=", 1)[1].split(".", 1)[0] if "QUESTION=" in prompt else "?"
    return f"answer to {question} after {turns} earlier questions"


def chat_crew() -> Crew:
    agent = Agent(
        role="Chat",
        goal="Answer",
        backstory="Terse.",
        llm=WordLLM(chat_script, model="chat-model"),
    )
    task = Task(description="Answer QUESTION={question}.", expected_output="A line", agent=agent)
    return Crew(agents=[agent], tasks=[task], stream=True)


chat = DurableCrewRunner("crew-chat", chat_crew, app=app)


def agent_chat_script(messages: list[dict[str, Any]], tools: list[str]) -> str:
    # CrewAI wraps the last prompt in its own task text; the earlier ones come as they were.
    users = [str(m.get("content")) for m in messages if m.get("role") == "user"]
    return f"agent answer after {len(users) - 1} earlier questions: {' | '.join(users[:-1])}"


def chat_agent() -> Agent:
    return Agent(
        role="Chat",
        goal="Answer",
        backstory="Terse.",
        llm=WordLLM(agent_chat_script, model="agent-chat-model"),
    )


agent_chat = DurableAgentRunner("agent-chat", chat_agent, stream=True, app=app)
