"""``runner.astream(...)``: LangGraph's ``stream_mode="values"`` for a durable run.

``graph.stream(input, config, stream_mode="values")`` yields the state after every superstep:
one value per checkpoint the invocation writes (the state it resumes from first, for a
``Command``), and, when the graph stops at an interrupt, the state with ``__interrupt__``.
A durable run writes the same checkpoints to Redis, each marked with the run's id; this
follows the run's events and yields each new checkpoint's values, read back with the graph's
own serializer (so messages are message objects), as the run stores them. A value is
yielded once its superstep's checkpoint is stored (a little after the live graph would).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.runnables import RunnableConfig

from stalwart.adapters.langgraph._request import rebuild

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from langgraph.checkpoint.base import CheckpointTuple

    from stalwart.adapters.langgraph._saver import StalwartSaver
    from stalwart.client import RunHandle


class _Checkpoints:
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


async def values(
    handle: RunHandle,
    saver: StalwartSaver,
    thread_id: str,
    run_key: str,
    *,
    resumes: bool,
    keys: list[str],
) -> AsyncIterator[dict[str, Any]]:
    """The run's states, as ``stream_mode="values"`` yields them; raises as the run does.

    ``resumes``: the run's input is a ``Command``, whose stream starts with the state the
    thread is in (the parent of the run's first checkpoint). ``keys``: the graph's output
    channels (its state keys).
    """
    checkpoints = _Checkpoints(saver, thread_id, run_key, handle.run_id)

    def visible(state: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in state.items() if k in keys}

    async for ev in handle.events():
        if ev.type == "step.completed":
            for state in await checkpoints.states(resumes=resumes):
                yield visible(state)
    result = await handle.result()
    for state in await checkpoints.states(resumes=resumes):
        yield visible(state)
    if isinstance(result, dict) and result.get("__interrupt__"):
        interrupts = tuple(rebuild({"__interrupt__": result["__interrupt__"]})["__interrupt__"])
        yield {**visible(await checkpoints.head()), "__interrupt__": interrupts}
