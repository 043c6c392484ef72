"""The SDK's own stream events, rebuilt in the caller's process from a run's stream parts.

Pure translation, no I/O: :class:`EventRebuilder` turns each part of
``RunHandle.stream()`` into the events ``RunResultStreaming.stream_events()`` yields for
the same run without Stalwart:

- a model call's raw events, sent live by the worker (``model.delta`` for answer text,
  ``stream.item`` with mode ``raw_response_event`` for the others), become
  :class:`RawResponsesStreamEvent` (with ``step``, the model call's step key);
- a journaled model call (``StepDone``) gives its ``response.completed`` event, rebuilt
  from the journaled response, then the run items the SDK makes of it
  (``message_output_created``, ``tool_called``, ``handoff_requested``,
  ``reasoning_item_created``); a call that streamed nothing to this consumer (completed
  before it attached, or on a runner that does not stream) first gives each message's full
  text as one ``response.output_text.delta`` and each item's ``response.output_item.done``;
- a journaled tool call gives ``tool_output``; a handoff ``handoff_occured`` and an
  :class:`AgentUpdatedStreamEvent` for the new agent (the first event is one for the
  starting agent, as in the SDK);
- a reset gives a :class:`~stalwart.adapters.StreamReset`.

Steps of nested runs (an agent used as a tool: keys under ``tool:<id>/``) are left out, as
the SDK leaves the nested run's events out of the outer stream.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, cast

from agents import Agent
from agents.handoffs import Handoff
from agents.items import (
    HandoffCallItem,
    HandoffOutputItem,
    MessageOutputItem,
    ModelResponse,
    ReasoningItem,
    RunItem,
    ToolCallItem,
    ToolCallOutputItem,
    TResponseInputItem,
)
from agents.stream_events import (
    AgentUpdatedStreamEvent,
    RawResponsesStreamEvent,
    RunItemStreamEvent,
)
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from pydantic import TypeAdapter

from stalwart.adapters import StreamReset
from stalwart.adapters.openai_agents._codec import load_response
from stalwart.adapters.openai_agents._model import replay_events
from stalwart.adapters.openai_agents._stepdata import record_field
from stalwart.client import Chunk, Reset, StepDone

if TYPE_CHECKING:
    from stalwart.client import StreamPart

_RAW_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


@dataclasses.dataclass
class StepRawResponsesStreamEvent(RawResponsesStreamEvent):
    """The SDK's ``RawResponsesStreamEvent``, with where in the durable run it comes from.

    ``isinstance(event, RawResponsesStreamEvent)`` and ``event.type`` are the SDK's. ``step``
    is the model call's step key (it tells a consumer which text a
    :class:`~stalwart.adapters.StreamReset` voids); ``worker``, ``epoch`` and ``attempt``
    say which worker streamed it in which attempt (empty and 0 for an event rebuilt from the
    journaled call).
    """

    step: str = ""
    worker: str = ""
    epoch: int = 0
    attempt: int = 0


def agents_by_name(start: Agent[Any]) -> dict[str, Agent[Any]]:
    """Every agent reachable from ``start`` through handoffs, by name."""
    found: dict[str, Agent[Any]] = {}
    todo: list[Agent[Any]] = [start]
    while todo:
        agent = todo.pop()
        if agent.name in found:
            continue
        found[agent.name] = agent
        for h in agent.handoffs:
            if isinstance(h, Agent):
                todo.append(h)
            elif isinstance(h, Handoff):
                ref = getattr(h, "_agent_ref", None)
                target = ref() if callable(ref) else None
                if isinstance(target, Agent):
                    todo.append(target)
    return found


def _handoff_names(agent: Agent[Any]) -> set[str]:
    return {
        h.tool_name if isinstance(h, Handoff) else Handoff.default_tool_name(h)
        for h in agent.handoffs
        if isinstance(h, Handoff | Agent)
    }


def _nested(step: str) -> bool:
    return "/" in step


class EventRebuilder:
    """Turns stream parts into the SDK's stream events (see the module docs)."""

    def __init__(self, agent: Agent[Any]) -> None:
        self.agent = agent
        self._agents = agents_by_name(agent)
        self._started = False
        self._opened: set[str] = set()  # model steps whose response.created was yielded
        self._shown: set[str] = set()  # model steps with raw events yielded
        self._handoff_call = ""  # the call id of the last handoff the model asked for

    def apply(self, part: StreamPart) -> list[Any]:
        """The events ``part`` gives, in order (often none or one)."""
        events: list[Any] = []
        if not self._started:
            self._started = True
            events.append(AgentUpdatedStreamEvent(new_agent=self.agent))
        if isinstance(part, Chunk):
            event = self._raw(part)
            if event is not None:
                events.append(event)
        elif isinstance(part, Reset):
            self._opened.discard(part.step)
            self._shown.discard(part.step)
            events.append(
                StreamReset(
                    step=part.step, epoch=part.epoch, attempt=part.attempt, reason=part.reason
                )
            )
        elif isinstance(part, StepDone) and not _nested(part.step):
            events.extend(self._done(part))
        return events

    def _raw(self, chunk: Chunk) -> RawResponsesStreamEvent | None:
        if _nested(chunk.step):
            return None
        data = chunk.data if isinstance(chunk.data, dict) else {}
        if chunk.type == "model.delta":
            raw = {k: v for k, v in data.items() if k != "text"}
        elif chunk.type == "stream.item" and data.get("mode") == "raw_response_event":
            raw = data.get("chunk") or {}
        else:
            return None  # another kind of live event: not part of the SDK's stream
        try:
            event = _RAW_EVENT.validate_python(raw)
        except ValueError:
            return None  # a raw event this SDK version does not know: left out
        if getattr(event, "type", "") == "response.created":
            self._opened.add(chunk.step)
        self._shown.add(chunk.step)
        return StepRawResponsesStreamEvent(
            data=event,
            step=chunk.step,
            worker=chunk.worker,
            epoch=chunk.epoch,
            attempt=chunk.attempt,
        )

    def _done(self, part: StepDone) -> list[Any]:
        if part.kind == "model":
            return self._model_done(part)
        if part.kind == "tool":
            return self._tool_done(part)
        if part.kind == "handoff":
            return self._handoff_done(part)
        return []

    def _model_done(self, part: StepDone) -> list[Any]:
        record = part.result
        if not (isinstance(record, dict) and isinstance(record.get("response"), dict)):
            return []
        response = load_response(record["response"])
        name = str(record.get("request", {}).get("model") or part.name or "")
        events: list[Any] = []
        whole = part.step in self._opened and part.streamed
        if part.step in self._shown and not whole:
            # Attached in the middle of this call: the text shown so far is its tail only.
            # Void it; the call's whole text follows.
            events.append(StreamReset(step=part.step, epoch=0, attempt=0, reason="attach"))
        if not whole:
            events.extend(self._step_event(e, part.step) for e in _whole_text(response))
        replayed = replay_events(response, name, items=not whole)
        events.extend(self._step_event(e, part.step) for e in replayed)
        events.extend(RunItemStreamEvent(name=n, item=i) for n, i in self._items(response))
        self._opened.discard(part.step)
        self._shown.discard(part.step)
        return events

    @staticmethod
    def _step_event(event: Any, step: str) -> StepRawResponsesStreamEvent:
        return StepRawResponsesStreamEvent(data=event, step=step)

    def _items(self, response: ModelResponse) -> list[tuple[Any, RunItem]]:
        agent = self.agent
        handoffs = _handoff_names(agent)
        items: list[tuple[Any, RunItem]] = []
        for item in response.output:
            if isinstance(item, ResponseOutputMessage):
                items.append(("message_output_created", MessageOutputItem(agent, item)))
            elif isinstance(item, ResponseFunctionToolCall) and item.name in handoffs:
                self._handoff_call = item.call_id
                items.append(("handoff_requested", HandoffCallItem(agent, item)))
            elif isinstance(item, ResponseFunctionToolCall):
                items.append(("tool_called", ToolCallItem(agent, item)))
            elif isinstance(item, ResponseReasoningItem):
                items.append(("reasoning_item_created", ReasoningItem(agent, item)))
        return items

    def _tool_done(self, part: StepDone) -> list[Any]:
        call_id = part.step.removeprefix("tool:")
        output = record_field(part.result, "output", part.result)
        raw = {"call_id": call_id, "output": _as_text(output), "type": "function_call_output"}
        item = ToolCallOutputItem(agent=self.agent, raw_item=raw, output=output)
        return [RunItemStreamEvent(name="tool_output", item=item)]

    def _handoff_done(self, part: StepDone) -> list[Any]:
        target = self._agents.get(str(record_field(part.result, "target") or ""))
        if target is None:
            return []
        source, self.agent = self.agent, target
        raw = cast(
            "TResponseInputItem",
            {
                "call_id": self._handoff_call,
                "output": f'{{"assistant": "{target.name}"}}',
                "type": "function_call_output",
            },
        )
        item = HandoffOutputItem(
            agent=source, raw_item=raw, source_agent=source, target_agent=target
        )
        return [
            RunItemStreamEvent(name="handoff_occured", item=item),
            AgentUpdatedStreamEvent(new_agent=target),
        ]


def _as_text(output: Any) -> str:
    return output if isinstance(output, str) else str(output)


def _whole_text(response: ModelResponse) -> list[Any]:
    """Each message's whole text as one text delta (its item-done events come after)."""
    events: list[Any] = []
    for index, item in enumerate(response.output):
        if isinstance(item, ResponseOutputMessage):
            for part_index, content in enumerate(item.content):
                text = getattr(content, "text", None)
                if isinstance(text, str) and text:
                    events.append(
                        ResponseTextDeltaEvent(
                            type="response.output_text.delta",
                            item_id=item.id,
                            output_index=index,
                            content_index=part_index,
                            delta=text,
                            logprobs=[],
                            sequence_number=len(events),
                        )
                    )
    return events
