"""CrewAI's streaming, durable: the LLM's own chunks out of the worker, ``StreamChunk``s back in.

Worker side. CrewAI streams through its event bus: an LLM with ``stream=True`` emits an
``LLMStreamChunkEvent`` per chunk while ``call`` runs, and ``Crew(stream=True)`` turns them
into ``StreamChunk``s. A streaming run sets ``stream=True`` on the crew's agents' LLMs (as
``Crew.kickoff`` does for a streaming crew) and :func:`install_relay` adds one bus handler
that publishes each chunk of a durable model step as a live event of the run, from inside
the step's body (CrewAI runs stream-chunk handlers synchronously in the calling thread):
text as ``model.delta`` ``{"text", "agent_role", "agent_id", "task_id", "task_name"}``, a
tool call's argument chunk as ``stream.item`` ``{"mode": "tool_call", "chunk": {...}}``.
Only the completed call is journaled; a replayed call calls nothing and emits nothing.

Client side. :class:`DurableCrewStreamingOutput` is CrewAI's ``CrewStreamingOutput``
(iterate it, then read ``.result``), fed from the run's stream parts: each live chunk a
:class:`DurableStreamChunk` (CrewAI's ``StreamChunk`` plus the step, epoch, attempt and
worker it came from); a model call that completed before the stream attached, or ran
without streaming, one chunk with its whole text; a :class:`~stalwart.adapters.StreamReset`
where chunks already yielded became void (the worker died, or the call is retried).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from crewai.events.event_bus import crewai_event_bus
from crewai.events.types.llm_events import LLMStreamChunkEvent
from crewai.types.streaming import (
    CrewStreamingOutput,
    StreamChunk,
    StreamChunkType,
    ToolCallChunk,
)

from stalwart.actors import current_step
from stalwart.adapters import StreamReset
from stalwart.adapters.crewai._threads import current_run
from stalwart.client import Chunk, Reset, StepDone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from crewai.crews.crew_output import CrewOutput
    from crewai.events.base_events import BaseEvent

    from stalwart.client import StreamPart

_lock = threading.Lock()
_installed = False


def _relay(source: Any, event: BaseEvent) -> None:
    """Publish ``event`` when a durable model step of a streaming run is running here."""
    if not isinstance(event, LLMStreamChunkEvent):
        return
    run = current_run()
    info = current_step()
    if run is None or info is None or not run.streaming:
        return
    if not info.key.rpartition("/")[2].startswith("model:"):
        return  # a model called inside a tool's body without being a step of its own
    head = {
        "agent_role": event.agent_role or "",
        "agent_id": event.agent_id or "",
        "task_id": event.task_id or "",
        "task_name": event.task_name or "",
    }
    if event.tool_call is not None:
        call = event.tool_call
        chunk = {
            **head,
            "content": event.chunk,
            "tool_id": call.id,
            "tool_name": call.function.name,
            "arguments": call.function.arguments,
            "index": call.index,
        }
        run.stream("stream.item", {"mode": "tool_call", "chunk": chunk}, info.key)
    elif event.chunk:
        run.stream("model.delta", {"text": event.chunk, **head}, info.key)


def install_relay() -> None:
    """Register the chunk relay on CrewAI's event bus (once per process; inert outside runs)."""
    global _installed
    with _lock:
        if not _installed:
            crewai_event_bus.register_handler(LLMStreamChunkEvent, _relay)
            _installed = True


# -- the client's side ----------------------------------------------------------------------


class DurableStreamChunk(StreamChunk):
    """CrewAI's ``StreamChunk``, with where it came from in the durable run.

    ``step`` is the model call's step key (``task:<i>/model:<n>``); ``epoch``, ``attempt``
    and ``worker`` name the attempt that streamed it (None for the whole text of a call that
    completed before the stream attached, or ran without streaming).
    """

    step: str = ""
    epoch: int | None = None
    attempt: int | None = None
    worker: str | None = None


def _task_index(step: str) -> int:
    head = step.partition("/")[0]
    if head.startswith("task:") and head[5:].isdigit():
        return int(head[5:])
    return 0


def chunk_of(part: Chunk) -> DurableStreamChunk | None:
    """The ``StreamChunk`` a live chunk stands for (None: not one CrewAI streams)."""
    data = part.data if isinstance(part.data, dict) else {}
    if part.type == "model.delta" and isinstance(data.get("text"), str):
        return DurableStreamChunk(
            content=data["text"],
            task_index=_task_index(part.step),
            task_name=str(data.get("task_name") or ""),
            task_id=str(data.get("task_id") or ""),
            agent_role=str(data.get("agent_role") or ""),
            agent_id=str(data.get("agent_id") or ""),
            step=part.step,
            epoch=part.epoch,
            attempt=part.attempt,
            worker=part.worker,
        )
    chunk = data.get("chunk")
    if part.type == "stream.item" and data.get("mode") == "tool_call" and isinstance(chunk, dict):
        return DurableStreamChunk(
            content=str(chunk.get("content") or ""),
            chunk_type=StreamChunkType.TOOL_CALL,
            task_index=_task_index(part.step),
            task_name=str(chunk.get("task_name") or ""),
            task_id=str(chunk.get("task_id") or ""),
            agent_role=str(chunk.get("agent_role") or ""),
            agent_id=str(chunk.get("agent_id") or ""),
            tool_call=ToolCallChunk(
                tool_id=chunk.get("tool_id"),
                tool_name=chunk.get("tool_name"),
                arguments=str(chunk.get("arguments") or ""),
                index=int(chunk.get("index") or 0),
            ),
            step=part.step,
            epoch=part.epoch,
            attempt=part.attempt,
            worker=part.worker,
        )
    return None


def whole_text(part: StepDone) -> DurableStreamChunk | None:
    """A completed model call's text as one chunk, when none of it was streamed to us."""
    if part.kind != "model" or part.streamed or not isinstance(part.result, dict):
        return None
    response = part.result.get("response")
    if not isinstance(response, str) or not response:
        return None  # tool calls, structured output: CrewAI streams no text for them
    return DurableStreamChunk(content=response, task_index=_task_index(part.step), step=part.step)


def crew_chunks(part: StreamPart) -> DurableStreamChunk | StreamReset | None:
    """What a ``CrewStreamingOutput`` yields for ``part`` (None: nothing)."""
    if isinstance(part, Chunk):
        return chunk_of(part)
    if isinstance(part, Reset):
        return StreamReset(
            step=part.step, epoch=part.epoch, attempt=part.attempt, reason=part.reason
        )
    if isinstance(part, StepDone):
        return whole_text(part)
    return None


class DurableCrewStreamingOutput(CrewStreamingOutput):
    """CrewAI's ``CrewStreamingOutput`` of a durable run.

    ``async for chunk in streaming`` yields :class:`DurableStreamChunk` (a ``StreamChunk``)
    and, where chunks already yielded became void, a :class:`~stalwart.adapters.StreamReset`
    (``chunk.step``: drop what was shown of that step). ``result`` is the ``CrewOutput``
    once the iteration ended (a failed run raises its error there, as CrewAI does), and
    :meth:`get_full_text` is the streamed text with resets applied: each call's text once.
    """

    def __init__(self, async_iterator: AsyncIterator[Any]) -> None:
        super().__init__(async_iterator=async_iterator)

    def finish(self, result: CrewOutput) -> None:
        """Set the run's output (the iterator calls it before it ends; a failed run's error
        is raised by the iteration itself, which CrewAI keeps for ``result``)."""
        self._set_result(result)

    def get_full_text(self) -> str:
        """The text chunks, each model call's once: chunks before a reset of their step dropped."""
        kept: list[StreamChunk] = []
        for chunk in self._chunks:
            if isinstance(chunk, StreamReset):
                kept = [c for c in kept if getattr(c, "step", None) != chunk.step]
            elif chunk.chunk_type == StreamChunkType.TEXT:
                kept.append(chunk)
        return "".join(c.content for c in kept)
