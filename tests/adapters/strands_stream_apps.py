"""Strands agents for the streaming and conversation tests (``tests/adapters/test_strands_stream.py``).

Served as ``tests.adapters.strands_stream_apps:app``. The scripted model streams each text
reply word by word (a real provider streams many deltas per call); a model call marked
``gated:<run_id>:<step key>/mid`` holds after its first two words, so a test can kill the
worker in the middle of a streamed call. Every model call logs the conversation it was given
(``seen:<run_id>``, JSON lines) in the counters' Redis, outside the workers.
"""

from __future__ import annotations

import json
import re
from typing import Any

from strands import Agent, tool
from strands.types.content import Messages

from stalwart import App, current_step
from stalwart.adapters.strands import DurableAgentRunner, ScriptedModel, reply, tool_call
from tests.helpers import count_execution, counters, wait_if_gated

app = App("strands-stream-tests")

HELD_AFTER = 2
"""Words a gated model call streams before it holds."""


def seen_key(run_id: str) -> str:
    """The conversations the model calls of ``run_id`` were given, one JSON line a call."""
    return f"seen:{run_id}"


class WordModel(ScriptedModel):
    """A scripted model that streams its text replies a word at a time."""

    async def stream(self, messages: Messages, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        async for event in super().stream(messages, *args, **kwargs):
            block = event.get("contentBlockDelta")
            text = block["delta"].get("text") if block else None
            if block is None or text is None:
                yield event
                continue
            for n, word in enumerate(re.findall(r"\S+\s*", text), start=1):
                yield {
                    "contentBlockDelta": {
                        "contentBlockIndex": block["contentBlockIndex"],
                        "delta": {"text": word},
                    }
                }
                if n == HELD_AFTER:
                    await hold_mid_stream()


async def hold_mid_stream() -> None:
    info = current_step()
    if info is not None:  # a plain (non-durable) run is never held
        await wait_if_gated(info.run_id, f"{info.key}/mid")


async def log_call(messages: Messages) -> None:
    info = current_step()
    if info is None:
        return
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    await counters().rpush(seen_key(info.run_id), json.dumps(plain))
    await count_execution()


def results(messages: Messages) -> list[str]:
    return [
        str(block["toolResult"]["content"][0].get("text", ""))
        for m in messages
        for block in m["content"]
        if "toolResult" in block
    ]


@tool
async def lookup(topic: str) -> str:
    """Look a topic up."""
    info = current_step()
    if info is not None:  # durable: counted, and held while the test wants it held
        await count_execution()
        await wait_if_gated(info.run_id, info.key)
    return f"{len(topic)} facts on {topic}"


FINAL = "The outlook for pricing is steady with 7 facts behind it and no surprises"


def stream_script(messages: Messages) -> Any:
    if not results(messages):
        return reply("Looking it up first.", tool_call("lookup", {"topic": "pricing"}, id="l1"))
    return FINAL


def build_streamer() -> Agent:
    return Agent(
        model=WordModel(stream_script, model_id="scripted-words", on_call=log_call),
        tools=[lookup],
        callback_handler=None,
    )


DurableAgentRunner("st-stream", build_streamer, app=app)
DurableAgentRunner("st-stream-quiet", build_streamer, stream=False, app=app)


def chat_script(messages: Messages) -> str:
    last = str(messages[-1]["content"][0].get("text", ""))
    return f"reply to {last} after {len(messages)} messages"


def build_chat() -> Agent:
    return Agent(
        model=WordModel(chat_script, model_id="scripted-chat", on_call=log_call),
        callback_handler=None,
    )


DurableAgentRunner("st-chat", build_chat, app=app)
