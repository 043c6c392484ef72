"""``ScriptedLLM``: a CrewAI model whose answers a function computes from the conversation.

For tests and offline demos. The function sees the messages and the names of the tools
offered, and returns text (a final answer) or a list of :func:`tool_call` dicts (native
tool calls, run in parallel by CrewAI when there are several). Keep it a pure function of
the conversation: a crash-test's worker dies, so a counter in the process would restart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crewai.events.types.llm_events import LLMCallType
from crewai.llms.base_llm import BaseLLM, llm_call_context
from pydantic import Field

if TYPE_CHECKING:
    from crewai.agents.agent_builder.base_agent import BaseAgent
    from crewai.task import Task
    from crewai.tools.base_tool import BaseTool
    from pydantic import BaseModel

Message = dict[str, Any]
Script = Callable[[list[Message], list[str]], "str | list[dict[str, Any]]"]


def tool_call(name: str, arguments: dict[str, Any], call_id: str) -> dict[str, Any]:
    """A native tool call as an OpenAI-style model response carries it."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments, sort_keys=True)},
    }


def tool_results(messages: list[Message]) -> list[str]:
    """The contents of the tool results in ``messages``, in order."""
    return [str(m.get("content", "")) for m in messages if m.get("role") == "tool"]


def text(messages: list[Message]) -> str:
    """All message contents joined: what a script searches for its instructions."""
    return "\n".join(str(m.get("content") or "") for m in messages)


class ScriptedLLM(BaseLLM):
    """A ``BaseLLM`` answering with ``script(messages, tool_names)``; no network.

    It reports token usage as a provider would (about four characters a token), so usage
    metrics and token budgets can be exercised offline. With ``stream=True`` (set by a
    streaming crew) it streams as a provider does, through CrewAI's event bus: a text reply
    a word at a time, each tool call's arguments in one chunk.
    """

    script: Script = Field(exclude=True)
    function_calling: bool = True
    """Offer tools natively (False: CrewAI's text ReAct format, tools parsed from text)."""
    context_window: int = 1_000_000
    """Tokens; small ones make CrewAI summarize the conversation (with concurrent acalls)."""

    def __init__(self, script: Script, *, model: str = "scripted", **kwargs: Any) -> None:
        super().__init__(**{"script": script, "model": model, **kwargs})

    def call(
        self,
        messages: str | list[Any],
        tools: list[dict[str, BaseTool]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Task | None = None,
        from_agent: BaseAgent | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        """Ask the script; parse its text into ``response_model`` when one is asked for."""
        msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
        offered: list[Any] = list(tools or [])
        names = [str(t.get("function", {}).get("name", "")) for t in offered]
        reply = self.script(list(msgs), names)
        if self.stream and response_model is None:
            self._stream_reply(reply, from_task, from_agent)
        # Usage as a provider would report it (about four characters a token).
        prompt = sum(len(str(m.get("content") or "")) for m in msgs)
        self._track_token_usage_internal(
            {"prompt_tokens": prompt // 4 + 1, "completion_tokens": len(str(reply)) // 4 + 1}
        )
        if response_model is not None and isinstance(reply, str):
            return response_model.model_validate_json(reply)
        return reply

    async def acall(
        self,
        messages: str | list[Any],
        tools: list[dict[str, BaseTool]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Task | None = None,
        from_agent: BaseAgent | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> str | Any:
        """:meth:`call`, for CrewAI's async paths."""
        return self.call(
            messages, tools, callbacks, available_functions, from_task, from_agent, response_model
        )

    def _stream_reply(self, reply: Any, from_task: Any, from_agent: Any) -> None:
        with llm_call_context() as call_id:
            if isinstance(reply, str):
                for word in re.findall(r"\S+\s*", reply):
                    self._emit_stream_chunk_event(
                        word,
                        from_task=from_task,
                        from_agent=from_agent,
                        call_type=LLMCallType.LLM_CALL,
                        response_id=call_id,
                    )
                return
            for index, call in enumerate(reply):
                self._emit_stream_chunk_event(
                    call["function"]["arguments"],
                    from_task=from_task,
                    from_agent=from_agent,
                    tool_call={**call, "index": index},
                    call_type=LLMCallType.TOOL_CALL,
                    response_id=call_id,
                )

    def supports_function_calling(self) -> bool:
        """Whether tools are offered natively (``function_calling``)."""
        return self.function_calling

    def supports_stop_words(self) -> bool:
        """Stop words do not apply to a script."""
        return False

    def get_input_tokens_count(
        self,
        messages: str | list[Any],
        tools: list[dict[str, BaseTool]] | None = None,
        response_model: type[BaseModel] | None = None,
    ) -> int:
        """About four characters a token (CrewAI's own estimate, without its warning)."""
        if isinstance(messages, str):
            return len(messages) // 4 + 1
        return sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1

    def get_context_window_size(self) -> int:
        """``context_window``: large by default, so CrewAI does not summarize."""
        return self.context_window
