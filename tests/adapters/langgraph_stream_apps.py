"""A streaming LangGraph chat graph for the streaming and conversation tests.

Served as ``tests.adapters.langgraph_stream_apps:app``. :class:`StreamingScript` is a chat
model that streams its answer word by word through LangChain's own ``_astream`` (so it
streams only when LangGraph's streaming handler, or the durable runner's, is attached),
records every request it gets (the messages it saw) in Redis, and holds mid-stream on a
Redis gate when the test marked it gated, which is where the tests SIGKILL the worker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langgraph.config import get_config, get_stream_writer
from langgraph.graph import END, START, MessagesState, StateGraph

from stalwart import App
from stalwart.adapters.langgraph import DurableGraphRunner
from tests.helpers import counters, wait_if_gated

app = App("langgraph-stream-tests")

HOLD_AFTER = 3
"""Tokens the model streams before it waits on its gate (when gated)."""


def run_key() -> str:
    """The durable run's id (the thread id in a plain run): what the test's keys use."""
    configurable = get_config()["configurable"]
    return str(configurable.get("stalwart_run_id") or configurable["thread_id"])


def seen_key(key: str) -> str:
    return f"test:lgstream:{key}:seen"


def answer(messages: list[BaseMessage]) -> str:
    """The scripted answer: it names every user message it saw, so history shows in it."""
    said = [str(m.content) for m in messages if m.type == "human"]
    return f"turn {len(said)}: you said " + " then ".join(said)


class StreamingScript(BaseChatModel):
    """Answers :func:`answer`, streamed one word at a time when streaming is asked for."""

    @property
    def _llm_type(self) -> str:
        return "streaming-script"

    async def _record(self, messages: list[BaseMessage]) -> str:
        key = run_key()
        await counters().rpush(seen_key(key), json.dumps([str(m.content) for m in messages]))
        return key

    def _generate(self, messages: list[BaseMessage], stop: Any = None, **kw: Any) -> ChatResult:
        raise NotImplementedError("the graph calls the model asynchronously")

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        await self._record(messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(answer(messages)))])

    async def _astream(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> AsyncIterator[ChatGenerationChunk]:
        key = await self._record(messages)
        words = answer(messages).split(" ")
        for i, word in enumerate(words):
            if i == HOLD_AFTER:
                await wait_if_gated(key, "model")
            token = word if i == 0 else " " + word
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=token))
            if run_manager is not None:
                await run_manager.on_llm_new_token(token, chunk=chunk)
            yield chunk


async def chat(state: MessagesState) -> dict[str, Any]:
    get_stream_writer()({"phase": "thinking"})
    reply = await StreamingScript().ainvoke(state["messages"])
    get_stream_writer()({"phase": "answered"})
    return {"messages": [reply]}


def chat_graph(checkpointer: Any = None) -> Any:
    g = StateGraph(MessagesState)
    g.add_node("chat", chat)
    g.add_edge(START, "chat")
    g.add_edge("chat", END)
    return g.compile(checkpointer=checkpointer)


DurableGraphRunner("lg-chat", chat_graph(), app=app)
DurableGraphRunner("lg-chat-always", chat_graph(), app=app, stream=True)
