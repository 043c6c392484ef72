"""A streamed run's live items: each LangGraph task streams inside its own step's attempt.

Plain LangGraph streams tokens because ``stream_mode="messages"`` attaches a streaming
callback handler, which makes every chat model call go through the model's own ``_astream``;
``get_stream_writer()`` writes reach the ``custom`` mode. A durable run asked to stream does
the same on the worker: :class:`LiveTasks` is such a handler, and it is the graph's custom
stream writer.

Chunks must carry the attempt that produced them (a consumer drops a dead attempt's text),
and only a step body has one. So, for a streamed run, each LangGraph task opens its mirror
step ``lg:<node>:<task id>`` when it starts (the step LangGraph's stored writes close, as
before, see ``_tools``) and the step's body relays the task's live items from inside the
attempt: model token deltas as ``model.delta`` (``{"text", "chunk", "metadata", "ns"}``,
``chunk`` the ``AIMessageChunk`` as plain data) and custom writes as ``stream.item``
(``{"mode": "custom", "chunk", "ns"}``). A task that fails or is interrupted gives its step
up without journaling anything (its next run opens it again); the core publishes
``step.reset`` before the step's attempt in a new epoch, so what a dead worker streamed of
the task is void for the consumer.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langgraph.config import get_config

from stalwart.actors import StepSpec
from stalwart.adapters.langgraph._model import task_of
from stalwart.adapters.langgraph._tools import KIND_NODE, TaskNames, task_key, to_builtins
from stalwart.kit import canonical_fp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from uuid import UUID

    from stalwart.actors import RunContext

DELTA = "model.delta"
ITEM = "stream.item"

# Callback metadata worth sending with a token (what LangGraph's messages mode yields as
# the chunk's metadata): LangGraph's and LangSmith's keys, tags, and the caller's own.
_SKIP_META = frozenset({"checkpoint_ns", "langgraph_checkpoint_ns"})


def graph_ns(checkpoint_ns: str) -> list[str]:
    """The namespace of the graph a task runs in (its checkpoint namespace minus the task)."""
    return checkpoint_ns.split("|")[:-1] if checkpoint_ns else []


@dataclass
class _Relay:
    """One task's open step: its body emits what the queue receives until ``close``."""

    key: str
    queue: asyncio.Queue[tuple[str, Any] | None] = field(default_factory=asyncio.Queue)
    summary: dict[str, Any] | None = None
    call: asyncio.Future[Any] | None = None


class LiveTasks(BaseCallbackHandler, _StreamingCallbackHandler[Any]):
    """Opens a step per journaled task and relays its token deltas and custom writes.

    Being a streaming handler, it makes chat models stream (``_astream``), as LangGraph's
    ``messages`` mode does. ``run_inline``: callbacks run in the order LangChain calls them.
    """

    run_inline = True

    def __init__(self, ctx: RunContext, names: TaskNames) -> None:
        self.ctx = ctx
        self.names = names
        self.loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self.relays: dict[str, _Relay] = {}
        """Open steps by task id."""
        self._roots: dict[UUID, str] = {}
        """The task each task's outermost LangChain run belongs to."""
        self._models: dict[UUID, tuple[str, dict[str, Any]]] = {}
        """A chat model call's task and metadata, by its run id."""

    # -- LangChain callbacks (maybe on a worker thread: a sync node) ---------------------

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[Any]) -> AsyncIterator[Any]:
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[Any]) -> Iterator[Any]:
        return output

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        ns = (metadata or {}).get("langgraph_checkpoint_ns")
        if not isinstance(ns, str) or not ns:
            return
        name, _, task_id = ns.rpartition("|")[2].rpartition(":")
        if not task_id or task_id in self.relays or name.startswith("__"):
            return  # not a task, a nested run of an open one, or LangGraph's own
        self._roots[run_id] = task_id
        self._post(self._open, task_id, name)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        task_id = self._roots.pop(run_id, None)
        if task_id is not None:  # failed or interrupted: the task runs again, from its start
            self._post(self._give_up, task_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._roots.pop(run_id, None)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: Any,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        task_id = task_of(metadata)
        if task_id is None:
            return
        meta = {k: v for k, v in (metadata or {}).items() if k not in _SKIP_META}
        if tags:
            meta["tags"] = list(tags)
        meta["ns"] = graph_ns(str((metadata or {}).get("langgraph_checkpoint_ns", "")))
        self._models[run_id] = (task_id, to_builtins(meta))

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        found = self._models.get(run_id)
        if found is None or not isinstance(chunk, ChatGenerationChunk):
            return
        task_id, meta = found
        data = {
            "text": token if isinstance(token, str) else chunk.text,
            "chunk": to_builtins(chunk.message),
            "metadata": meta,
            "ns": meta["ns"],
        }
        self._post(self._put, task_id, (DELTA, data))

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._models.pop(run_id, None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._models.pop(run_id, None)

    def write(self, chunk: Any) -> None:
        """The graph's custom stream writer (``get_stream_writer()`` in a node)."""
        ns = str(get_config().get("configurable", {}).get("checkpoint_ns", ""))
        task_id = ns.rpartition("|")[2].rpartition(":")[2]
        data = {"mode": "custom", "chunk": to_builtins(chunk), "ns": graph_ns(ns)}
        self._post(self._put, task_id, (ITEM, data))

    # -- on the run's event loop --------------------------------------------------------

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def _open(self, task_id: str, name: str) -> None:
        relay = _Relay(task_key(name, task_id))
        self.relays[task_id] = relay
        spec = StepSpec(
            key=relay.key,
            kind=KIND_NODE,
            name=name,
            fp=canonical_fp("langgraph.task", task_id),
        )

        async def body() -> dict[str, Any]:
            while (item := await relay.queue.get()) is not None:
                await self.ctx.emit(item[0], item[1])
            assert relay.summary is not None
            return relay.summary

        relay.call = asyncio.ensure_future(self.ctx.call(spec, body))

    def _put(self, task_id: str, item: tuple[str, Any]) -> None:
        relay = self.relays.get(task_id)
        if relay is not None and relay.summary is None:
            relay.queue.put_nowait(item)

    def _give_up(self, task_id: str) -> None:
        relay = self.relays.pop(task_id, None)
        if relay is not None and relay.call is not None and relay.summary is None:
            relay.call.cancel()  # a cancelled body journals nothing

    async def close(self, task_id: str, summary: dict[str, Any]) -> bool:
        """Journal the task's step with ``summary`` (its writes are stored); False if the
        task has no open step (it was not streamed: the caller journals it)."""
        relay = self.relays.pop(task_id, None)
        if relay is None or relay.call is None:
            return False
        relay.summary = summary
        relay.queue.put_nowait(None)
        await relay.call
        return True

    async def give_up_all(self) -> None:
        """The graph returned: steps of tasks that did not finish are given up."""
        relays, self.relays = list(self.relays.values()), {}
        for relay in relays:
            if relay.call is not None and not relay.call.done():
                relay.call.cancel()
        calls = [relay.call for relay in relays if relay.call is not None]
        await asyncio.gather(*calls, return_exceptions=True)  # given up: outcomes are moot
