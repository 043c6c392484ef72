"""Model calls as durable steps: a ``Model`` wrapper and the ``ModelProvider`` that hands it out.

The SDK's own loop asks the model for a response; the wrapper turns that into the step
``model:<n>`` (the n-th model call of the scope). Live, the real model is called and its
response journaled; on replay the journaled response is returned (or, when streaming,
re-streamed) without calling anything.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from agents.exceptions import ModelBehaviorError
from agents.items import ModelResponse, TResponseStreamEvent
from agents.models.interface import Model, ModelProvider, ModelTracing
from agents.models.multi_provider import MultiProvider
from agents.usage import Usage
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseOutputItemDoneEvent,
    ResponseUsage,
)

from stalwart.actors import StepSpec
from stalwart.adapters.openai_agents._codec import (
    dump_response,
    load_response,
    request_shape,
    usage_extractor,
    without_volatile,
)
from stalwart.adapters.openai_agents._stepdata import mark_replayed
from stalwart.kit import (
    DurableScope,
    ScopeVar,
    call_step,
    canonical_fp,
    model_record,
    model_response,
    model_step,
    stream_step,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from agents.agent_output import AgentOutputSchemaBase
    from agents.handoffs import Handoff
    from agents.items import TResponseInputItem
    from agents.model_settings import ModelSettings
    from agents.retry import ModelRetryAdvice, ModelRetryAdviceRequest
    from agents.tool import Tool
    from openai.types.responses.response_prompt_param import ResponsePromptParam

SCOPE: ScopeVar[DurableScope] = ScopeVar("stalwart_openai_agents_scope")
"""The run scope of the current task: set by the runner around ``Runner.run``, and by an
agent-as-tool wrapper around its nested run (tasks copy it when they are created, so the
nested run's tasks see the nested scope and siblings keep theirs)."""

_TERMINAL_FAILURES = frozenset(
    {"response.failed", "response.incomplete", "error", "response.error"}
)


def model_label(model: Model, requested: str | None = None) -> str:
    """The model's name for fingerprints and the history: the requested name, else its own."""
    if requested:
        return requested
    name = getattr(model, "model", None)
    return name if isinstance(name, str) and name else type(model).__name__


class DurableModel(Model):
    """Wraps a ``Model`` so each call is the durable step ``model:<n>`` of the current run.

    Outside a durable run (or inside a step that is already journaled as a whole, such as a
    guardrail) it simply calls the wrapped model.
    """

    def __init__(self, inner: Model, name: str | None = None) -> None:
        self.inner = inner
        self.name = model_label(inner, name)

    # -- the step ----------------------------------------------------------------------

    def _spec(
        self,
        scope: DurableScope,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
    ) -> tuple[StepSpec, dict[str, Any]]:
        shape = request_shape(self.name, system_instructions, tools, handoffs, output_schema)
        spec = StepSpec(
            key=scope.next_key("model"),
            kind="model",
            name=self.name,
            # The conversation so far, minus ids and clocks. What else the call offers (model,
            # instructions, tools, output type) is stored with the result and compared by
            # _loaded, which can then say what changed.
            fp=canonical_fp("model", without_volatile(input)),
            usage=usage_extractor(self.name),
        )
        return spec, shape

    # -- Model interface ---------------------------------------------------------------

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> ModelResponse:
        """Return the journaled response of this call, or call the model and journal it."""

        def call() -> Any:
            return self.inner.get_response(
                system_instructions,
                input,
                model_settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                previous_response_id=previous_response_id,
                conversation_id=conversation_id,
                prompt=prompt,
            )

        scope = SCOPE.active()
        if scope is None:
            response: ModelResponse = await call()
            return response
        spec, shape = self._spec(scope, system_instructions, input, tools, output_schema, handoffs)
        ran = False

        async def body() -> dict[str, Any]:
            nonlocal ran
            ran = True
            return dump_response(await call())

        response = load_response(await model_step(scope.ctx, spec, shape, body))
        if not ran:
            self._mark_replayed(spec.key, response)
        return response

    async def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: ResponsePromptParam | None,
    ) -> AsyncIterator[TResponseStreamEvent]:
        """Stream live (forwarding deltas to the run's events), or re-stream a journaled response.

        The step journals the final response; the ``response.completed`` event the SDK builds
        its turn from is always made from the journaled data, so a live turn and its replay
        see the same response.
        """

        def stream() -> AsyncIterator[TResponseStreamEvent]:
            return self.inner.stream_response(
                system_instructions,
                input,
                model_settings,
                tools,
                output_schema,
                handoffs,
                tracing,
                previous_response_id=previous_response_id,
                conversation_id=conversation_id,
                prompt=prompt,
            )

        scope = SCOPE.active()
        if scope is None:
            async for event in stream():
                yield event
            return
        spec, shape = self._spec(scope, system_instructions, input, tools, output_schema, handoffs)
        ran_live = False

        async def body(forward: Callable[[Any], None]) -> dict[str, Any]:
            nonlocal ran_live
            ran_live = True
            response = await _consume(stream(), forward, scope, spec.key)
            return model_record(dump_response(response), shape)

        out: list[Any] = []
        async for event in stream_step(partial(call_step, scope.ctx), spec, body, out):
            yield event
        response = load_response(model_response(scope.ctx.run_id, spec, shape, out[0]))
        if not ran_live:
            self._mark_replayed(spec.key, response)
        for event in replay_events(response, self.name, items=not ran_live):
            yield event

    def _mark_replayed(self, key: str, response: ModelResponse) -> None:
        # Nothing was sent, so the wrapped model opened no response span: say what was replayed.
        mark_replayed(
            "model",
            key,
            model=self.name,
            response_id=response.response_id,
            usage={
                "requests": response.usage.requests,
                "input_tokens": response.usage.input_tokens,
                "output_tokens": response.usage.output_tokens,
            },
        )

    def get_retry_advice(self, request: ModelRetryAdviceRequest) -> ModelRetryAdvice | None:
        """The wrapped model's advice (an error replayed from the journal gets none)."""
        return self.inner.get_retry_advice(request)

    async def close(self) -> None:
        """Close the wrapped model."""
        await self.inner.close()

    async def _cleanup_on_run_end(self, owner: object) -> None:
        await self.inner._cleanup_on_run_end(owner)


async def _consume(
    events: AsyncIterator[TResponseStreamEvent],
    forward: Callable[[TResponseStreamEvent], None],
    scope: DurableScope,
    key: str,
) -> ModelResponse:
    """Forward a live model stream's events and return its final response."""
    final: Response | None = None
    done_items: list[Any] = []
    try:
        async for event in events:
            kind = str(getattr(event, "type", ""))
            if isinstance(event, ResponseCompletedEvent):
                final = event.response  # re-issued from the journaled data after the step
                continue
            if kind in _TERMINAL_FAILURES:
                raise ModelBehaviorError(f"the model stream ended with {kind!r}")
            if isinstance(event, ResponseOutputItemDoneEvent):
                done_items.append(event.item)
            # Live only: a replayed response does not emit its events again.
            await scope.ctx.emit(*live_event(event), step=key)
            forward(event)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if final is None:
        raise ModelBehaviorError("the model stream ended without a response.completed event")
    usage = (
        Usage(
            requests=1,
            input_tokens=final.usage.input_tokens,
            output_tokens=final.usage.output_tokens,
            total_tokens=final.usage.total_tokens,
            input_tokens_details=final.usage.input_tokens_details,
            output_tokens_details=final.usage.output_tokens_details,
        )
        if final.usage is not None
        else Usage(requests=1)
    )
    return ModelResponse(
        output=list(final.output) or done_items,
        usage=usage,
        response_id=final.id,
        request_id=getattr(final, "_request_id", None),
    )


TEXT_DELTA = "response.output_text.delta"
"""The one raw event kind whose ``delta`` is text of the answer (``model.delta``)."""


def live_event(event: TResponseStreamEvent) -> tuple[str, dict[str, Any]]:
    """The run event that carries one raw model stream event to stream consumers.

    An answer's text delta is ``model.delta`` with ``text`` (the delta) next to the SDK
    event's own fields; every other raw event (item added, argument deltas, part done...)
    is ``stream.item`` with ``mode`` ``raw_response_event`` and the event's fields as the
    chunk. A streaming client rebuilds the SDK's own event from either. The
    ``response.completed`` event is not sent: the journaled response makes it.
    """
    raw = event.model_dump(mode="json", exclude_unset=True)
    if raw.get("type") == TEXT_DELTA:
        return "model.delta", {"text": str(raw.get("delta") or ""), **raw}
    return "stream.item", {"mode": "raw_response_event", "chunk": raw}


def replay_events(
    response: ModelResponse, model_name: str, *, items: bool
) -> list[TResponseStreamEvent]:
    """The stream events that make the SDK rebuild ``response``: item-done events, completed."""
    events: list[TResponseStreamEvent] = []
    if items:
        for index, item in enumerate(response.output):
            events.append(
                ResponseOutputItemDoneEvent(
                    type="response.output_item.done",
                    item=item,
                    output_index=index,
                    sequence_number=index,
                )
            )
    usage = response.usage
    completed = Response(
        id=response.response_id or "",
        created_at=0,
        model=model_name,
        object="response",
        output=list(response.output),
        tool_choice="auto",
        tools=[],
        top_p=None,
        parallel_tool_calls=True,
        status="completed",
        usage=ResponseUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            input_tokens_details=usage.input_tokens_details,
            output_tokens_details=usage.output_tokens_details,
        ),
    )
    if response.response_id is None:
        # The Model boundary allows a response without an id; Response's validation does not.
        object.__setattr__(completed, "id", None)
    events.append(
        ResponseCompletedEvent(
            type="response.completed", response=completed, sequence_number=len(events)
        )
    )
    return events


class DurableModelProvider(ModelProvider):
    """A ``ModelProvider`` whose models are :class:`DurableModel` wrappers of ``inner``'s.

    Put in ``RunConfig(model_provider=...)``, it reaches every agent of the run that names
    its model by string (or not at all), handoff targets included.
    """

    def __init__(self, inner: ModelProvider | None = None) -> None:
        self.inner = inner if inner is not None else MultiProvider()
        self._models: dict[str | None, DurableModel] = {}

    def get_model(self, model_name: str | None) -> Model:
        """The durable wrapper of ``inner.get_model(model_name)`` (one per name)."""
        model = self._models.get(model_name)
        if model is None:
            inner = self.inner.get_model(model_name)
            model = inner if isinstance(inner, DurableModel) else DurableModel(inner, model_name)
            self._models[model_name] = model
        return model

    async def aclose(self) -> None:
        """Close the wrapped provider."""
        await self.inner.aclose()
