"""Model and tool calls as durable steps: Strands ``InvokeModelStage`` / ``ExecuteToolStage`` middleware.

Both are Wrap handlers. In a durable run each call becomes one step; live, the handler calls
``next_fn`` (the model or tool, and any middleware registered after it) inside the step and
forwards the intermediate events as they come; on replay it yields the journaled result event
without calling anything. Either way the result event Strands receives is rebuilt from the
journaled data, so a live call and its replay hand the agent loop the same values.

Journal shapes (plain data, msgpack-encodable):

- model step: ``{"stop_reason", "message": {"role", "content"}, "usage", "metrics"}``, the
  fields of the ``ModelStopReason`` that ends the model stream;
- tool step: ``{"result": ToolResult, "error": [type, message] | None}``, the
  ``ToolResultEvent`` that ends the tool call (``error`` is the exception behind an error
  result, rebuilt as a :class:`ToolError`).
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any

from strands.interrupt import InterruptException
from strands.middleware import ModelStopReason, ToolResultEvent
from strands.tools.structured_output.structured_output_tool import StructuredOutputTool

from stalwart.actors import StepSpec, Usage
from stalwart.adapters._base import canonical_fp
from stalwart.adapters.strands._scope import RunScope, active, stream_step
from stalwart.errors import ConfigurationError
from stalwart.policies import options_of

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from strands.middleware import (
        ExecuteToolContext,
        InvokeModelContext,
        MiddlewareHandler,
        MiddlewareNext,
        TypedEvent,
    )
    from strands.models.model import Model
    from strands.types.content import Messages

    from stalwart.policies import StepOptions

    ModelNext = MiddlewareNext[InvokeModelContext, TypedEvent]
    ToolNext = MiddlewareNext[ExecuteToolContext, TypedEvent]


class ToolError(Exception):
    """The exception behind a journaled tool error result, as Strands hooks receive it.

    Live and on replay alike (hooks must see the same thing both times), the original
    exception is represented by its type name, :attr:`error_type`, and its message.
    """

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


# -- request and result shapes --------------------------------------------------------------


def model_label(model: Model) -> str:
    """The model's name for the history: its configured ``model_id``, else its class name."""
    try:
        config = model.get_config()
    except Exception:  # a provider whose config cannot be read: fall back to the class
        config = None
    model_id = config.get("model_id") if isinstance(config, dict) else None
    return model_id if isinstance(model_id, str) and model_id else type(model).__name__


def plain_messages(messages: Messages) -> list[dict[str, Any]]:
    """Messages as the model receives them: role and content only.

    Strands gives every message a random ``tracking_id`` and attaches ``metadata`` (usage,
    latency) to assistant messages; neither reaches the model, and both would differ on
    replay, so both stay out of fingerprints.
    """
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def request_shape(context: InvokeModelContext) -> dict[str, Any]:
    """What a model call is asked, for its fingerprint."""
    return {
        "model": model_label(context.model),
        "system": context.system_prompt,
        "messages": plain_messages(context.messages),
        "tools": sorted(spec["name"] for spec in context.tool_specs),
        "tool_choice": context.tool_choice,
    }


def dump_stop(event: ModelStopReason) -> dict[str, Any]:
    """The journal form of a model call's result event."""
    message = event.message
    return {
        "stop_reason": event.stop_reason,
        "message": {"role": message["role"], "content": message["content"]},
        "usage": dict(event.usage),
        "metrics": dict(event.metrics),
    }


def load_stop(data: dict[str, Any]) -> ModelStopReason:
    """The ``ModelStopReason`` Strands builds its turn from, from journaled data."""
    return ModelStopReason(
        stop_reason=data["stop_reason"],
        message=data["message"],
        usage=data["usage"],
        metrics=data["metrics"],
    )


def usage_extractor(label: str) -> Callable[[Any], Usage | None]:
    """``StepSpec.usage`` for a model step: the tokens its journaled result reports."""

    def extract(result: Any) -> Usage | None:
        usage = result.get("usage") if isinstance(result, dict) else None
        if not isinstance(usage, dict):
            return None
        return Usage(
            model=label,
            input_tokens=int(usage.get("inputTokens", 0)),
            output_tokens=int(usage.get("outputTokens", 0)),
        )

    return extract


def dump_tool_result(event: ToolResultEvent) -> dict[str, Any]:
    """The journal form of a tool call's result event."""
    exc = event.exception
    error: list[str] | None = None
    if isinstance(exc, ToolError):
        error = [exc.error_type, str(exc)]
    elif exc is not None:
        error = [type(exc).__name__, str(exc)]
    return {"result": dict(event.tool_result), "error": error}


def load_tool_result(data: dict[str, Any]) -> ToolResultEvent:
    """The ``ToolResultEvent`` that ends a tool call, from journaled data."""
    error = data.get("error")
    exc = ToolError(error[0], error[1]) if error else None
    return ToolResultEvent(data["result"], exception=exc)


def _delta_text(event: Any) -> str | None:
    """The text of a model stream's text delta event (Strands' ``TextStreamEvent``), else None."""
    delta = event.get("delta") if isinstance(event, dict) else None
    text = delta.get("text") if isinstance(delta, dict) else None
    return text if isinstance(text, str) and text else None


# -- the middleware --------------------------------------------------------------------------


def model_middleware(prefix: str) -> MiddlewareHandler[InvokeModelContext, TypedEvent]:
    """An ``InvokeModelStage`` handler: each model call of the agent is the step ``<prefix>model:<n>``."""

    async def durable_model(
        context: InvokeModelContext, next_fn: ModelNext
    ) -> AsyncGenerator[TypedEvent, None]:
        run = active()
        if run is None:
            async for event in next_fn(context):
                yield event
            return
        label = model_label(context.model)
        spec = StepSpec(
            key=run.model_key(prefix),
            kind="model",
            name=label,
            fp=canonical_fp("model", request_shape(context)),
            usage=usage_extractor(label),
        )
        out: list[Any] = []
        async for event in stream_step(
            run, spec, _model_body(run, spec.key, context, next_fn), out
        ):
            yield event
        yield load_stop(out[0])

    return durable_model


def _model_body(run: RunScope, key: str, context: InvokeModelContext, next_fn: ModelNext) -> Any:
    async def body(forward: Callable[[Any], None]) -> dict[str, Any]:
        stop: ModelStopReason | None = None
        async for event in next_fn(context):
            if isinstance(event, ModelStopReason):
                stop = event  # the last one wins, as in Strands' own chain
                continue
            text = _delta_text(event)
            if text is not None:
                # Live only: a replayed response does not emit its deltas again.
                await run.ctx.emit("model.delta", {"text": text}, step=key)
            forward(event)
        if stop is None:
            raise RuntimeError(f"step {key!r}: the model stream ended without a ModelStopReason")
        return dump_stop(stop)

    return body


def tool_middleware(
    prefix: str, local: Callable[[ExecuteToolContext], bool] | None = None
) -> MiddlewareHandler[ExecuteToolContext, TypedEvent]:
    """An ``ExecuteToolStage`` handler: each tool call is the step ``<prefix>tool:<toolUseId>``.

    Calls for which ``local(context)`` is true are not journaled and run again on every
    replay: tools whose only effect is on in-process state that replay must rebuild (a
    swarm's ``handoff_to_agent`` sets who runs next). Strands' structured output tool, which
    hands the validated output to the agent loop, is always local.
    """

    async def durable_tool(
        context: ExecuteToolContext, next_fn: ToolNext
    ) -> AsyncGenerator[TypedEvent, None]:
        run = active()
        if (
            run is None
            or isinstance(context.tool, StructuredOutputTool)
            or (local is not None and local(context))
        ):
            async for event in next_fn(context):
                yield event
            return
        tool_use = context.tool_use
        name = str(tool_use["name"])
        key = run.tool_key(prefix, str(tool_use["toolUseId"]))
        opts = options_of(getattr(context.tool, "_tool_func", context.tool))
        spec = StepSpec(
            key=key,
            kind="tool",
            name=name,
            fp=canonical_fp(name, tool_use.get("input")),
            options=opts,
            reconcile=_reconciler(run, key, tool_use, opts),
        )
        out: list[Any] = []
        async for event in stream_step(run, spec, _tool_body(run, spec.key, context, next_fn), out):
            yield event
        yield load_tool_result(out[0])

    return durable_tool


def _reconciler(
    run: RunScope, key: str, tool_use: Any, opts: StepOptions | None
) -> Callable[[], Awaitable[Any]] | None:
    """For an at-most-once tool with a ``reconcile`` hook: its answer as a tool step result.

    ``durable(reconcile=fn)`` on a tool's function: after a crash in the middle of the call,
    ``fn(idempotency_key, **tool_input)`` says what the call did; its return value becomes
    the successful result the model sees (an exception, the error result).
    """
    if opts is None or opts.reconcile is None:
        return None
    hook = opts.reconcile
    use_id = str(tool_use["toolUseId"])
    arguments = tool_use.get("input") or {}

    async def reconcile() -> dict[str, Any]:
        value = hook(f"{run.ctx.run_id}:{key}", **arguments)
        if inspect.isawaitable(value):
            value = await value
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return {
            "result": {"toolUseId": use_id, "status": "success", "content": [{"text": text}]},
            "error": None,
        }

    return reconcile


def _tool_body(run: RunScope, key: str, context: ExecuteToolContext, next_fn: ToolNext) -> Any:
    def refuse() -> ConfigurationError:
        error = ConfigurationError(
            f"step {key!r}: tool {context.tool_use['name']!r} raised a Strands interrupt; "
            "interrupts are not supported in durable runs yet"
        )
        run.fatal = run.fatal or error
        return error

    async def body(forward: Callable[[Any], None]) -> dict[str, Any]:
        result: ToolResultEvent | None = None
        try:
            async for event in next_fn(context):
                if isinstance(event, ToolResultEvent):
                    result = event
                    continue
                if isinstance(event, dict) and "tool_interrupt_event" in event:
                    raise refuse()
                forward(event)
        except InterruptException as exc:
            raise refuse() from exc
        if result is None:
            raise RuntimeError(f"step {key!r}: the tool call ended without a ToolResultEvent")
        return dump_tool_result(result)

    return body
