"""``StalwartDurability``: the agent-facing half of the engine, a durability capability."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    conversation_id_from_run_id,
)
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent
from pydantic_core import to_jsonable_python

from stalwart.actors import current_step
from stalwart.adapters.pydantic_ai import _scope
from stalwart.adapters.pydantic_ai._backend import StalwartOperationBackend
from stalwart.errors import NonRetryableError

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from pydantic_ai.capabilities.abstract import WrapRunHandler
    from pydantic_ai.durable_exec import DurableOperationBackend
    from pydantic_ai.messages import AgentStreamEvent
    from pydantic_ai.run import AgentRunResult
    from pydantic_ai.tools import RunContext as AgentRunContext


def _serialization_failure(exc: Exception) -> BaseException:
    # Encoding is deterministic: another attempt of the step would fail the same way.
    return NonRetryableError(f"a step result cannot be journaled: {exc}")


class StalwartDurability(BaseDurabilityCapability[Any]):
    """Makes an agent's model requests and tool calls Stalwart steps inside a Stalwart run.

    :class:`~stalwart.adapters.pydantic_ai.DurableAgentRunner` adds it to its agent's runs.
    Attach it yourself (``Agent(..., name="research", capabilities=[StalwartDurability()])``)
    to an agent that another agent runs from a tool: the delegated run's steps are then
    journaled under the tool call and replay inside it after a crash, instead of running
    again with the tool. Outside a Stalwart run the capability does nothing.

    With ``stream`` (the default) model requests are streamed inside their step and every
    model event is published live to the run's events (``model.part_start``,
    ``model.delta``, ``model.part_end``, ...); the model must then support streaming
    (``FunctionModel`` needs a ``stream_function``). Events are live only; the final
    response is journaled.
    """

    engine_spec = DurabilityEngineSpec(
        engine_name="Stalwart",
        durable_unit_noun="step",
        durable_container_noun="run",
        codec=JSON_CODEC,
        serialization_failure=_serialization_failure,
        unsupported_runtime_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        wrapped_toolset_kinds=frozenset({"function", "mcp", "dynamic"}),
        toolset_lifecycles={
            "function": "enter-always",
            "mcp": "enter-in-durable-unit",
            "dynamic": "enter-never",
        },
        journal_discovery=True,
        # Tool steps are keyed by tool-call id, so parallel calls replay in any order.
        sequential_tools_in_durable_context=False,
        tool_config_key="stalwart",
    )

    def __init__(self, *, name: str | None = None, stream: bool = True) -> None:
        super().__init__(name=name, event_stream_handler=publish_model_events if stream else None)
        self._backend = StalwartOperationBackend()

    @property
    def in_durable_context(self) -> bool:
        return _scope.FRAME.get() is not None

    @property
    def has_wrap_run_event_stream(self) -> bool:
        # Only stream (which needs a streaming model) inside a Stalwart run.
        return super().has_wrap_run_event_stream and self.in_durable_context

    def get_durable_operation_backend(self) -> DurableOperationBackend[Any]:
        return self._backend

    def get_default_run_id(self) -> str | None:
        frame = _scope.FRAME.get()
        if frame is not None and frame.kind == "root" and not frame.claimed:
            return frame.root.run_id  # the runner's agent run is the Stalwart run
        return None

    def get_default_conversation_id(self, run_id: str) -> str | None:
        return conversation_id_from_run_id(run_id) if self.in_durable_context else None

    async def wrap_run(
        self, ctx: AgentRunContext[Any], *, handler: WrapRunHandler
    ) -> AgentRunResult[Any]:
        parent = _scope.FRAME.get()
        if parent is None:
            return await super().wrap_run(ctx, handler=handler)
        # Set here, the frame reaches the run's body and tasks through the run lifecycle.
        token = _scope.FRAME.enter(parent.nested_run(self.name or "agent"))
        try:
            return await super().wrap_run(ctx, handler=handler)
        finally:
            _scope.FRAME.leave(token)


def event_data(event: AgentStreamEvent) -> list[tuple[str, Any]]:
    """The run events (type, data) that publish one model stream event.

    A chunk of text, thinking or tool arguments is a ``model.delta`` (as the other adapters
    publish them), including the first chunk, which pydantic-ai puts in the part's start
    event. Its data: ``text`` (the chunk of answer text; "" for thinking and tool arguments),
    ``type`` (the part kind), ``index``, ``delta`` (the chunk of any kind), ``event``
    (PydanticAI's ``PartDeltaEvent`` as JSON data) or ``start`` (the chunk came in the part's
    start event). Other events keep pydantic-ai's kind and are the event as JSON data:
    ``model.part_start``, ``model.part_end``, ``model.final_result``.
    """
    if isinstance(event, PartDeltaEvent):
        delta = event.delta
        chunk = getattr(delta, "content_delta", None) or getattr(delta, "args_delta", None)
        data = _delta(delta.part_delta_kind, event.index, chunk)
        if tool_name := getattr(delta, "tool_name_delta", None):
            data["tool_name"] = tool_name
        # PydanticAI's own event, for a client that rebuilds it (``run_stream_events``).
        data["event"] = to_jsonable_python(event, fallback=repr)
        return [("model.delta", data)]
    out: list[tuple[str, Any]] = [
        (f"model.{event.event_kind}", to_jsonable_python(event, fallback=repr))
    ]
    if isinstance(event, PartStartEvent):
        kind = event.part.part_kind.replace("-", "_")
        attr = {"text": "content", "thinking": "content", "tool_call": "args"}.get(kind)
        if attr and (chunk := getattr(event.part, attr, None)):
            # Marked: a client rebuilding PydanticAI's events finds this chunk in the start.
            out.append(("model.delta", {**_delta(kind, event.index, chunk), "start": True}))
    return out


def _delta(kind: str, index: int, chunk: Any) -> dict[str, Any]:
    # "text" is the answer text of the chunk (the stream contract: every model.delta has it),
    # "" for thinking and tool-call arguments, which "delta" carries for every kind.
    data: dict[str, Any] = {"type": kind, "index": index, "text": ""}
    if chunk:
        data["delta"] = chunk if isinstance(chunk, str) else json.dumps(to_jsonable_python(chunk))
        if kind == "text":
            data["text"] = data["delta"]
    return data


async def publish_model_events(
    ctx: AgentRunContext[Any], events: AsyncIterable[AgentStreamEvent]
) -> None:
    """Publish a model stream to the run's events; runs live, inside its model step."""
    frame, step = _scope.FRAME.get(), current_step()
    async for event in events:
        if frame is not None and step is not None:
            for type_, data in event_data(event):
                await frame.ctx.emit(type_, data, step=step.key)
