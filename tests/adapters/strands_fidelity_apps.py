"""Upstream-style Strands agents for the fidelity tests, with the real ``OpenAIModel``.

Served as ``tests.adapters.strands_fidelity_apps:app``; the same builders run plainly in the
test process. The model talks to the fake OpenAI-compatible server at ``FAKE_LLM_URL``.

- ``build_quickstart``: the Strands quickstart agent (``Agent(model=OpenAIModel(...),
  tools=[calculator, current_time, letter_counter], system_prompt=...)``), its tools written
  as the quickstart writes them; ``current_time`` is a fixed clock here, so the plain and the
  durable run see the same tool results. ``letter_counter`` raises on a bad letter, as in
  the quickstart: Strands shows the error to the model.
- ``build_approval``: the approval hook of Strands' interrupt docs (``BeforeToolCallEvent``
  with ``event.interrupt("for_delete_tool", reason="APPROVAL")``) over a ``delete_tool``.

Every tool counts its executions in Redis when it runs inside a durable step (the plain run
has none) and waits at its gate when the test marked one (``tests.helpers``).
"""

from __future__ import annotations

import os
from typing import Any

import redis
from strands import Agent, tool
from strands.hooks import BeforeModelCallEvent, BeforeToolCallEvent, HookProvider, HookRegistry
from strands.models.openai import OpenAIModel

from stalwart import App, current_step
from stalwart.adapters.strands import DurableAgentRunner
from tests.helpers import exec_key, gate_key, gated_key

app = App("strands-fidelity")

QUICKSTART_MODEL = "gpt-4o"
APPROVAL_MODEL = "gpt-4o-mini"


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["COUNTER_REDIS_URL"], socket_timeout=None)


def probe() -> None:
    """Count this execution of the running tool step; wait at its gate if it has one.

    Sync, for the quickstart's sync tools (Strands runs them in a thread, which carries the
    step's context). Nothing happens outside a durable step: the plain run.
    """
    info = current_step()
    if info is None:
        return
    r = _redis()
    r.incr(exec_key(info.run_id, info.key))
    if r.exists(gated_key(info.run_id, info.key)):
        r.blpop([gate_key(info.run_id, info.key)], timeout=60)


def openai_model(model_id: str, url: str | None = None) -> OpenAIModel:
    return OpenAIModel(
        client_args={"base_url": url or os.environ["FAKE_LLM_URL"], "api_key": "sk-fake"},
        model_id=model_id,
    )


# -- the quickstart agent ----------------------------------------------------------------


@tool
def calculator(expression: str) -> str:
    """Evaluate a basic arithmetic expression (+, -, *, / of two numbers).

    Args:
        expression: The expression to evaluate, e.g. "3 * 4"
    """
    probe()
    left, op, right = expression.split()
    a, b = float(left), float(right)
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
    return f"{value:g}"


@tool
def current_time(timezone: str = "UTC") -> str:
    """Get the current time in ISO 8601 format.

    Args:
        timezone: The timezone, e.g. "UTC"
    """
    probe()
    return f"2026-12-03T09:00:00 {timezone}"  # a fixed clock: both runs see the same time


@tool
def letter_counter(word: str, letter: str) -> int:
    """Count occurrences of a specific letter in a word.

    Args:
        word (str): The input word to search in
        letter (str): The specific letter to count

    Returns:
        int: The number of occurrences of the letter in the word
    """
    probe()
    if not isinstance(word, str) or not isinstance(letter, str):
        return 0
    if len(letter) != 1:
        raise ValueError("The 'letter' parameter must be a single character")
    return word.lower().count(letter.lower())


QUICKSTART_PROMPT = """I have 3 requests:
1. What is the time right now?
2. Calculate 3111696 / 74088
3. Tell me how many letter R's are in the word "strawberry"
"""


def build_quickstart(url: str | None = None) -> Agent:
    return Agent(
        model=openai_model(QUICKSTART_MODEL, url),
        tools=[calculator, current_time, letter_counter],
        system_prompt="You are a helpful assistant. Use your tools to answer precisely.",
        callback_handler=None,
    )


class PauseBeforeModel(HookProvider):
    """Test-only: holds the run between two calls, before model call ``pause_before`` starts.

    Driven by the run's ``invocation_state`` (``{"pause_before": n, "pause_token": t}``),
    which never reaches the model. It pauses once per token (``SETNX``), so the resumed run
    goes on.
    """

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        registry.add_callback(BeforeModelCallEvent, self.before_model)

    async def before_model(self, event: BeforeModelCallEvent) -> None:
        state = event.invocation_state
        token = state.get("pause_token")
        turn = 1 + sum(m["role"] == "assistant" for m in event.agent.messages)
        if token is None or state.get("pause_before") != turn:
            return
        import redis.asyncio as aioredis

        r = aioredis.from_url(os.environ["COUNTER_REDIS_URL"], socket_timeout=None)
        try:
            if await r.set(f"paused:{token}", 1, nx=True):
                await r.blpop([f"resume:{token}"], timeout=60)
        finally:
            await r.aclose()


def build_quickstart_pausable() -> Agent:
    agent = build_quickstart()
    agent.hooks.add_hook(PauseBeforeModel())
    return agent


RUNNERS: dict[str, DurableAgentRunner] = {}
"""The runners by name: tests decode results and encode per-run options with them."""

RUNNERS["fq-quickstart"] = DurableAgentRunner("fq-quickstart", build_quickstart_pausable, app=app)


def quickstart_script(req: Any) -> Any:
    """The model's side of the quickstart conversation, decided from the request alone."""
    from tests.adapters.fake_llm import Reply, ToolCall

    results = req.tool_results()
    if not results:
        return Reply(
            text="Let me work on those.",
            tool_calls=(
                ToolCall("current_time", {"timezone": "UTC"}),
                ToolCall("calculator", {"expression": "3111696 / 74088"}),
                ToolCall("letter_counter", {"word": "strawberry", "letter": "R's"}),
            ),
        )
    if len(results) == 3:
        # The quickstart's letter_counter refused "R's": ask again with one letter.
        return Reply(
            tool_calls=(ToolCall("letter_counter", {"word": "strawberry", "letter": "r"}),)
        )
    if req.last_user_text().startswith("And"):
        return Reply(text=f"Still {results[-1]} r's, and the time was {results[0]}.")
    return Reply(
        text=f"1. It is {results[0]}. 2. 3111696 / 74088 = {results[1]}. "
        f"3. 'strawberry' has {results[3]} r's (first try: {results[2]})."
    )


# -- the approval agent: Strands' interrupt docs -------------------------------------------


@tool
def delete_tool(key: str) -> bool:
    """Delete the object stored under a key.

    Args:
        key: The key of the object to delete
    """
    probe()
    return True


class ToolInterruptHook(HookProvider):
    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        registry.add_callback(BeforeToolCallEvent, self.approve)

    def approve(self, event: BeforeToolCallEvent) -> None:
        if event.tool_use["name"] != "delete_tool":
            return

        approval = event.interrupt("for_delete_tool", reason="APPROVAL")
        if approval != "A":
            event.cancel_tool = "approval was not granted"


def build_approval(url: str | None = None) -> Agent:
    return Agent(
        model=openai_model(APPROVAL_MODEL, url),
        hooks=[ToolInterruptHook()],
        tools=[delete_tool],
        system_prompt="You delete objects given their keys.",
        callback_handler=None,
    )


RUNNERS["fq-approval"] = DurableAgentRunner("fq-approval", build_approval, app=app)


def approval_script(req: Any) -> Any:
    from tests.adapters.fake_llm import Reply, ToolCall

    results = req.tool_results()
    if not results:
        return Reply(tool_calls=(ToolCall("delete_tool", {"key": "X"}),))
    return Reply(text=f"Deleting X: {results[0]}.")
