"""PydanticAI's own stream events, rebuilt on the client from a durable run's stream parts.

The worker publishes every model stream event inside its model step (``model.part_start``,
``model.delta`` with PydanticAI's ``PartDeltaEvent`` in ``event``, ``model.part_end``,
``model.final_result``) and a tool step's call and result (``tool.call``, ``tool.result``).
:class:`EventRebuilder` turns them back into ``PartStartEvent``, ``PartDeltaEvent``,
``PartEndEvent``, ``FinalResultEvent``, ``FunctionToolCallEvent`` and
``FunctionToolResultEvent``; steps completed before the subscription (a late attach) are
rebuilt from the journal: a model step as the start and end of each part of its response
(PydanticAI replays a completed response the same way), a tool step as its call and result.
A reset of a step is a :class:`~stalwart.adapters.StreamReset` in the same stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import TypeAdapter
from pydantic_ai.exceptions import UserError
from pydantic_ai.messages import (
    AgentStreamEvent,
    FunctionToolCallEvent,
    FunctionToolResultEvent,
    ModelResponse,
    PartEndEvent,
    PartStartEvent,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.run import AgentRunResultEvent
from pydantic_ai.usage import RunUsage

from stalwart.adapters import StreamReset
from stalwart.client import Chunk, Reset, StreamEnd
from stalwart.client import StepDone as PartDone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.run import AgentRunResult

    from stalwart.client import RunHandle, StreamPart

OutputT = TypeVar("OutputT")

_EVENT: TypeAdapter[Any] = TypeAdapter(AgentStreamEvent)
_RESPONSE: TypeAdapter[ModelResponse] = TypeAdapter(ModelResponse)
_MODEL_EVENTS = frozenset({"model.part_start", "model.part_end", "model.final_result"})


def top_level(step: str) -> bool:
    """A step of the runner's own agent (a delegated agent's live under ``tool:<id>/<agent>/``)."""
    return "/" not in step


def tool_result_content(payload: Any) -> Any:
    """What the tool returned, from the journaled (or published) result of a tool step."""
    if isinstance(payload, dict) and payload.get("kind") == "tool_return" and "result" in payload:
        return payload["result"]
    return payload


class EventRebuilder:
    """Turns stream parts into PydanticAI's ``AgentStreamEvent`` objects (and resets)."""

    def __init__(self) -> None:
        self._streamed: set[str] = set()
        """Steps whose events were yielded live (their StepDone adds nothing)."""
        self._calls: dict[str, ToolCallPart] = {}
        """Tool steps' calls by step key, for their result events."""
        self._asked: dict[str, ToolCallPart] = {}
        """Tool calls the model responses made, by tool-call id (the call of a journaled tool step)."""

    def feed(self, part: StreamPart) -> list[Any]:
        """The events one stream part stands for (none for parts of other kinds)."""
        if isinstance(part, Chunk):
            return self._chunk(part)
        if isinstance(part, Reset):
            self._streamed.discard(part.step)
            return [
                StreamReset(
                    step=part.step, epoch=part.epoch, attempt=part.attempt, reason=part.reason
                )
            ]
        if isinstance(part, PartDone) and top_level(part.step):
            return self._done(part)
        return []

    def _chunk(self, chunk: Chunk) -> list[Any]:
        data = chunk.data if isinstance(chunk.data, dict) else {}
        if not top_level(chunk.step):
            return []
        if chunk.type in _MODEL_EVENTS:
            self._streamed.add(chunk.step)
            event = _EVENT.validate_python(data)
            if isinstance(event, PartEndEvent) and isinstance(event.part, ToolCallPart):
                self._asked[event.part.tool_call_id] = event.part
            return [event]
        if chunk.type == "model.delta" and "event" in data:
            self._streamed.add(chunk.step)
            return [_EVENT.validate_python(data["event"])]
        if chunk.type == "tool.call":
            self._streamed.add(chunk.step)
            call_id = str(data.get("tool_call_id") or chunk.step.removeprefix("tool:"))
            call = ToolCallPart(str(data.get("tool", "")), data.get("args"), call_id)
            self._calls[chunk.step] = call
            return [FunctionToolCallEvent(call, args_valid=True)]
        if chunk.type == "tool.result" and "result" in data:
            return [self._result(chunk.step, data.get("tool", ""), data["result"])]
        return []

    def _result(self, step: str, tool: str, payload: Any) -> FunctionToolResultEvent:
        call = self._calls.get(step)
        call_id = call.tool_call_id if call is not None else step.removeprefix("tool:")
        part = ToolReturnPart(tool, tool_result_content(payload), tool_call_id=call_id)
        return FunctionToolResultEvent(part)

    def _done(self, part: PartDone) -> list[Any]:
        if part.step in self._streamed and part.streamed:
            return []
        record = part.result if isinstance(part.result, dict) else {}
        if part.kind == "model" and isinstance(record.get("response"), dict):
            response = _RESPONSE.validate_python(record["response"])
            self._asked.update({c.tool_call_id: c for c in response.tool_calls})
            return self._replayed(response)
        if part.kind == "tool":
            events: list[Any] = []
            if part.step not in self._calls:
                call_id = part.step.removeprefix("tool:")
                call = self._asked.get(call_id) or ToolCallPart(part.name, None, call_id)
                self._calls[part.step] = call
                events.append(FunctionToolCallEvent(call, args_valid=True))
            events.append(self._result(part.step, part.name, record.get("result")))
            return events
        return []

    @staticmethod
    def _replayed(response: ModelResponse) -> list[Any]:
        """A completed response's events, as PydanticAI replays one: start and end per part."""
        events: list[Any] = []
        for index, item in enumerate(response.parts):
            events.append(PartStartEvent(index=index, part=item))
            events.append(PartEndEvent(index=index, part=item))
        return events


class DurableRunEvents(Generic[OutputT]):
    """What :meth:`DurableAgentRunner.run_stream_events` yields: ``agent.run_stream_events``'s
    iterator for a durable run.

    ``async for event in events`` gives PydanticAI's own events (model stream events, tool
    call and result events) as the worker produces them, then one ``AgentRunResultEvent``
    with the run's ``AgentRunResult``; a :class:`~stalwart.adapters.StreamReset` where the
    events of a model call already yielded became void (a crash or retry of that call: drop
    what was shown of the response being streamed; its events come again). ``result``,
    ``all_messages()``, ``new_messages()`` and ``usage`` are the run's once it ended.
    """

    def __init__(self, runner: Any, handle: RunHandle, parts: AsyncIterator[StreamPart]) -> None:
        self._runner = runner
        self.handle = handle
        self._parts = parts
        self._rebuild = EventRebuilder()
        self._pending: list[Any] = []
        self._result: AgentRunResult[OutputT] | None = None
        self._ended = False
        self.resets: list[StreamReset] = []
        """Every reset the stream saw, in order."""

    def __aiter__(self) -> DurableRunEvents[OutputT]:
        return self

    async def __anext__(self) -> Any:
        while not self._pending:
            if self._ended:
                raise StopAsyncIteration
            try:
                part = await anext(self._parts)
            except StopAsyncIteration:
                part = None
            if part is None or isinstance(part, StreamEnd):
                await self._end(part)
                continue
            events = self._rebuild.feed(part)
            self.resets.extend(e for e in events if isinstance(e, StreamReset))
            self._pending.extend(events)
        return self._pending.pop(0)

    async def _end(self, part: StreamEnd | None) -> None:
        self._ended = True
        if part is not None and part.status == "completed":
            data = part.result
        else:  # the run's own outcome: raises its error if it failed
            data = await self.handle.result()
        self._result = self._runner.decode_result(data)
        self._pending.append(AgentRunResultEvent(self._result))

    @property
    def result(self) -> AgentRunResult[OutputT] | None:
        """The run's result once the run ended, else None."""
        return self._result

    def _settled(self) -> AgentRunResult[OutputT]:
        if self._result is None:
            raise UserError("The run has not ended yet: iterate the events to the end first.")
        return self._result

    def all_messages(self) -> list[ModelMessage]:
        """The run's messages, once it ended."""
        return self._settled().all_messages()

    def new_messages(self) -> list[ModelMessage]:
        """The messages the run added, once it ended."""
        return self._settled().new_messages()

    @property
    def usage(self) -> RunUsage:
        """The run's usage, once it ended (empty before)."""
        return self._result.usage if self._result is not None else RunUsage()
