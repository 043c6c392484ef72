"""``ScriptedModel``: a Strands model that answers from a script, for tests and offline demos.

Strands ships no test model. This one streams whatever a script returns for the conversation
it is given, in the Bedrock-shaped stream events every Strands provider produces, so the
agent loop, tool execution and multi-agent orchestration run exactly as with a real model.
The script should decide from the conversation (how many tool results it holds, what the
last message says), not from a counter of its own: in a durable run the process that made
the earlier calls may be gone.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from strands.models.model import Model

if TYPE_CHECKING:
    import threading
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from pydantic import BaseModel
    from strands.agent.agent_metadata import AgentMetadata
    from strands.types.content import ContentBlock, Message, Messages, SystemContentBlock
    from strands.types.streaming import StreamEvent
    from strands.types.tools import ToolChoice, ToolSpec

    Reply = str | Message
    Script = Callable[[Messages], Reply | Awaitable[Reply]]
    OnCall = Callable[[Messages], Awaitable[None] | None]

T = TypeVar("T")


class ScriptedConfig(TypedDict, total=False):
    """``ScriptedModel``'s configuration."""

    model_id: str


def tool_call(
    name: str, input: dict[str, Any] | None = None, *, id: str | None = None
) -> ContentBlock:
    """A ``toolUse`` content block for a scripted reply (the id is made up when not given)."""
    block: dict[str, Any] = {"name": name, "input": input or {}}
    if id is not None:
        block["toolUseId"] = id
    return {"toolUse": block}  # type: ignore[typeddict-item]


def reply(*parts: str | ContentBlock) -> Message:
    """An assistant message from text parts and content blocks (``tool_call(...)``)."""
    content: list[ContentBlock] = [{"text": p} if isinstance(p, str) else p for p in parts]
    return {"role": "assistant", "content": content}


class ScriptedModel(Model):
    """A model whose reply to a conversation is ``script(messages)`` (sync or async).

    The script returns a string (a text reply) or an assistant message (:func:`reply`), whose
    ``toolUse`` blocks become tool calls; a block without ``toolUseId`` gets
    ``tooluse_<turn>_<index>``, where turn counts the assistant messages so far, so ids are
    the same whenever the conversation is. ``on_call(messages)`` runs before each call (to log
    calls in tests). Token usage is estimated from the text sizes (4 characters a token).
    """

    def __init__(
        self, script: Script, *, model_id: str = "scripted", on_call: OnCall | None = None
    ) -> None:
        self.script = script
        self.on_call = on_call
        self.config: ScriptedConfig = {"model_id": model_id}

    def update_config(self, **model_config: Any) -> None:
        """Update the configuration (only ``model_id`` means anything)."""
        self.config.update(model_config)  # type: ignore[typeddict-item]

    def get_config(self) -> ScriptedConfig:
        """The configuration."""
        return self.config

    def structured_output(
        self,
        output_model: type[T],
        prompt: Messages,
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[dict[str, T | Any], None]:
        """Not supported: the agent's structured output goes through a tool call instead."""
        raise NotImplementedError(
            "ScriptedModel has no native structured output; give the agent a "
            "structured_output_model and script a call of its output tool"
        )

    async def stream(
        self,
        messages: Messages,
        tool_specs: list[ToolSpec] | None = None,
        system_prompt: str | None = None,
        *,
        tool_choice: ToolChoice | None = None,
        system_prompt_content: list[SystemContentBlock] | None = None,
        invocation_state: dict[str, Any] | None = None,
        cancel_signal: threading.Event | None = None,
        agent_metadata: AgentMetadata | None = None,
        structured_output_model: type[BaseModel] | None = None,
        **kwargs: Any,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream the script's reply to ``messages`` as Strands stream events."""
        if self.on_call is not None:
            logged = self.on_call(messages)
            if inspect.isawaitable(logged):
                await logged
        answer = self.script(messages)
        if inspect.isawaitable(answer):
            answer = await answer
        message = reply(answer) if isinstance(answer, str) else answer
        turn = sum(m["role"] == "assistant" for m in messages) + 1
        yield {"messageStart": {"role": "assistant"}}
        stop_reason = "end_turn"
        for index, block in enumerate(message["content"]):
            if "toolUse" in block:
                use = block["toolUse"]
                use_id = use.get("toolUseId") or f"tooluse_{turn}_{index}"
                yield {
                    "contentBlockStart": {
                        "contentBlockIndex": index,
                        "start": {"toolUse": {"toolUseId": use_id, "name": use["name"]}},
                    }
                }
                yield {
                    "contentBlockDelta": {
                        "contentBlockIndex": index,
                        "delta": {"toolUse": {"input": json.dumps(use.get("input") or {})}},
                    }
                }
                stop_reason = "tool_use"
            elif "text" in block:
                yield {"contentBlockStart": {"contentBlockIndex": index, "start": {}}}
                yield {
                    "contentBlockDelta": {
                        "contentBlockIndex": index,
                        "delta": {"text": block["text"]},
                    }
                }
            yield {"contentBlockStop": {"contentBlockIndex": index}}
        yield {"messageStop": {"stopReason": stop_reason}}  # type: ignore[typeddict-item]
        input_tokens = len(json.dumps(_texts(messages), default=str)) // 4
        output_tokens = len(json.dumps(_texts([message]), default=str)) // 4
        yield {
            "metadata": {
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens,
                },
                "metrics": {"latencyMs": 0},
            }
        }


def _texts(messages: Messages) -> list[Any]:
    return [m["content"] for m in messages]
