"""``runner.astream(...)``: LangGraph's stream modes for a durable run, rebuilt on the client.

``graph.astream(input, config, stream_mode=...)`` yields, per mode: ``values`` (the state
after every superstep), ``updates`` (``{node: update}`` per finished task), ``messages``
(``(message chunk, metadata)`` per token, and the whole messages a node wrote that were not
streamed) and ``custom`` (what nodes wrote with ``get_stream_writer()``). One mode yields its
items; a list of modes yields ``(mode, item)``; ``subgraphs=True`` puts the namespace first.

A durable run's stream is built from the run's stream parts (``stream_handle``, resets
applied) and its stored checkpoints:

- ``messages`` tokens and ``custom`` items are the live chunks the worker relays from inside
  each task's step (``_live``), rebuilt as ``AIMessageChunk`` / plain data; a task's other
  messages (tool results, a model that did not stream) come from its stored writes when its
  step completes, deduplicated by message id as LangGraph does;
- ``updates`` are each finished task's stored writes, read when its step completes;
- ``values`` are the run's stored checkpoints, read back with the graph's own serializer.

Where an attempt died (a crash, a retry) a :class:`~stalwart.adapters.StreamReset` is
yielded in the stream, as the item of the ``"stalwart.reset"`` mode: what was shown of that
task (``reset.step``, its ``lg:<node>:<task id>`` key) is void and streams again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.runnables import RunnableConfig

from stalwart.adapters.langgraph._request import rebuild
from stalwart.adapters.langgraph._tools import KIND_NODE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from langgraph.checkpoint.base import CheckpointTuple

    from stalwart.adapters.langgraph._saver import StalwartSaver
    from stalwart.client import RunHandle, StreamPart

RESET_MODE = "stalwart.reset"
"""The mode a :class:`~stalwart.adapters.StreamReset` is yielded under (list of modes)."""
MODES = frozenset({"values", "updates", "messages", "custom"})


def check_modes(stream_mode: str | Sequence[str]) -> tuple[list[str], bool]:
    """The modes asked for and whether one mode was given as a string (items unwrapped)."""
    single = isinstance(stream_mode, str)
    modes = [stream_mode] if isinstance(stream_mode, str) else list(stream_mode)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(
            f"stream_mode={stream_mode!r}: a durable run streams "
            f"{', '.join(sorted(MODES))} (one, or a list); "
            f"{', '.join(map(repr, unknown)) or 'no mode'} is not offered"
        )
    return modes, single


class Checkpoints:
    """The root graph's checkpoints one run wrote, each handed out once, oldest first."""

    def __init__(self, saver: StalwartSaver, thread_id: str, run_key: str, run_id: str) -> None:
        self.saver = saver
        self.config = RunnableConfig(configurable={"thread_id": thread_id, "checkpoint_ns": ""})
        self.filter = {run_key: run_id}
        self.seen: set[str] = set()
        self.started = False

    async def new(self) -> list[CheckpointTuple]:
        found = [c async for c in self.saver.alist(self.config, filter=self.filter)]
        out = []
        for tup in reversed(found):
            cid = tup.config["configurable"]["checkpoint_id"]
            if cid not in self.seen:
                self.seen.add(cid)
                out.append(tup)
        return out

    async def states(self, *, resumes: bool) -> list[dict[str, Any]]:
        """The states of the new checkpoints (the one resumed from first, the first time)."""
        out: list[dict[str, Any]] = []
        for tup in await self.new():
            if resumes and not self.started and tup.parent_config is not None:
                parent = await self.saver.aget_tuple(tup.parent_config)
                if parent is not None:
                    out.append(dict(parent.checkpoint["channel_values"]))
            self.started = True
            if tup.metadata.get("source") != "input":  # the stream starts after the input
                out.append(dict(tup.checkpoint["channel_values"]))
        return out

    async def head(self) -> dict[str, Any]:
        last = await self.saver.aget_tuple(self.config)
        return dict(last.checkpoint["channel_values"]) if last is not None else {}

    async def task_writes(self, ns: str, checkpoint_id: str, task_id: str) -> dict[str, Any]:
        """What one stored task wrote, ``{channel: value}`` (LangGraph's own channels aside)."""
        thread_id = self.config["configurable"]["thread_id"]
        config = RunnableConfig(
            configurable={
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint_id,
            }
        )
        tup = await self.saver.aget_tuple(config)
        out: dict[str, Any] = {}
        for tid, channel, value in (tup.pending_writes or []) if tup is not None else []:
            if tid == task_id and not channel.startswith(("__", "branch:")):
                out[channel] = value
        return out


def _messages_in(value: Any) -> list[BaseMessage]:
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, BaseMessage)]
    return []


def _origin(part: Any) -> dict[str, Any]:
    """Where a streamed token came from, added to its metadata: the step (what a
    :class:`~stalwart.adapters.StreamReset` names), the worker, its epoch and attempt."""
    return {
        "stalwart_step": part.step,
        "stalwart_worker": part.worker,
        "stalwart_epoch": part.epoch,
        "stalwart_attempt": part.attempt,
    }


class GraphStream:
    """Turns one run's stream parts into what ``graph.astream`` yields for ``modes``."""

    def __init__(
        self,
        checkpoints: Checkpoints,
        *,
        modes: list[str],
        single: bool,
        subgraphs: bool,
        keys: list[str],
        resumes: bool,
    ) -> None:
        self.checkpoints = checkpoints
        self.modes = modes
        self.single = single
        self.subgraphs = subgraphs
        self.keys = keys
        self.resumes = resumes
        self.shown: dict[str, set[str]] = {}
        """Message ids streamed per step (forgotten when the step is reset)."""

    def _item(self, mode: str, ns: Sequence[str], item: Any) -> list[Any]:
        if mode != RESET_MODE and (mode not in self.modes or (ns and not self.subgraphs)):
            return []
        if self.subgraphs:
            return [(tuple(ns), item) if self.single else (tuple(ns), mode, item)]
        return [item if self.single else (mode, item)]

    def _visible(self, state: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in state.items() if k in self.keys}

    async def take(self, part: StreamPart) -> list[Any]:
        """The stream items ``part`` gives (possibly none)."""
        from stalwart.adapters import StreamReset
        from stalwart.client import Chunk, Reset, StepDone

        if isinstance(part, Chunk):
            return self._chunk(part)
        if isinstance(part, Reset):
            self.shown.pop(part.step, None)
            return self._item(RESET_MODE, (), StreamReset.of(part))
        if isinstance(part, StepDone):
            out = await self._task(part) if part.kind == KIND_NODE and not part.error else []
            if "values" in self.modes:
                for state in await self.checkpoints.states(resumes=self.resumes):
                    out += self._item("values", (), self._visible(state))
            return out
        return []

    def _chunk(self, part: Any) -> list[Any]:
        data = part.data if isinstance(part.data, Mapping) else {}
        ns = [str(s) for s in data.get("ns") or ()]
        if part.type == "model.delta" and isinstance(data.get("chunk"), Mapping):
            fields = {k: v for k, v in data["chunk"].items() if k != "type"}
            message = AIMessageChunk(**fields)
            if message.id:
                self.shown.setdefault(part.step, set()).add(message.id)
            meta = {**(data.get("metadata") or {}), **_origin(part)}
            return self._item("messages", ns, (message, meta))
        if part.type == "stream.item" and data.get("mode") == "custom":
            return self._item("custom", ns, data.get("chunk"))
        return []

    async def _task(self, part: Any) -> list[Any]:
        if not ({"updates", "messages"} & set(self.modes)) or not isinstance(part.result, dict):
            return []
        summary = part.result
        node, ns, checkpoint_id = summary.get("node"), summary.get("ns", ""), summary.get("cp")
        if not (isinstance(node, str) and isinstance(checkpoint_id, str)):
            return []
        task_id = part.step.rpartition(":")[2]
        writes = await self.checkpoints.task_writes(str(ns), checkpoint_id, task_id)
        graph_ns = str(ns).split("|") if ns else []
        out: list[Any] = []
        if "messages" in self.modes:
            streamed = self.shown.pop(part.step, set())
            meta = {
                "langgraph_node": node,
                "langgraph_checkpoint_ns": f"{ns}|{node}:{task_id}" if ns else f"{node}:{task_id}",
                "stalwart_step": part.step,
            }
            for value in writes.values():
                for message in _messages_in(value):
                    if message.id is None or message.id not in streamed:
                        out += self._item("messages", graph_ns, (message, dict(meta)))
        if "updates" in self.modes:
            out += self._item("updates", graph_ns, {node: writes or None})
        return out

    async def end(self, handle: RunHandle) -> list[Any]:
        """The items after the run ended: the last states, the interrupt (raises as the
        run does)."""
        result = await handle.result()
        out: list[Any] = []
        if "values" in self.modes:
            for state in await self.checkpoints.states(resumes=self.resumes):
                out += self._item("values", (), self._visible(state))
        if isinstance(result, dict) and result.get("__interrupt__"):
            interrupts = tuple(rebuild({"__interrupt__": result["__interrupt__"]})["__interrupt__"])
            if "values" in self.modes:
                head = self._visible(await self.checkpoints.head())
                out += self._item("values", (), {**head, "__interrupt__": interrupts})
            if "updates" in self.modes:
                out += self._item("updates", (), {"__interrupt__": interrupts})
        return out


async def stream(
    handle: RunHandle, parts: AsyncIterator[StreamPart], view: GraphStream
) -> AsyncIterator[Any]:
    """The run's stream items, as ``graph.astream`` yields them; raises as the run does."""
    from stalwart.client import StreamEnd

    async for part in parts:
        if isinstance(part, StreamEnd):
            break
        for item in await view.take(part):
            yield item
    for item in await view.end(handle):
        yield item
