"""Pure translations between Strands' events and the plain data the journal stores.

Journal shapes (plain data, msgpack-encodable):

- model step: ``{"stop_reason", "message": {"role", "content"}, "usage", "metrics"}``, the
  fields of the ``ModelStopReason`` that ends the model stream;
- tool step: ``{"result": ToolResult, "error": [type, message] | None}``, the
  ``ToolResultEvent`` that ends the tool call (``error`` is the exception behind an error
  result, rebuilt as a :class:`~stalwart.kit.ToolCallFailed`);
- a model call the provider refused as too long: ``{"overflow": message}``, raised again as
  ``ContextWindowOverflowException`` (Strands' conversation manager then trims the history);
- a model or tool call that stopped on a Strands interrupt instead:
  ``{"interrupts": [{"id", "name", "reason"}], "raised": bool}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic_core import to_jsonable_python
from strands.interrupt import Interrupt
from strands.middleware import ModelStopReason, ToolResultEvent

from stalwart.actors import Usage
from stalwart.kit import ToolCallFailed

if TYPE_CHECKING:
    from collections.abc import Callable

    from strands.middleware import InvokeModelContext
    from strands.models.model import Model
    from strands.types.content import Messages


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
    if isinstance(exc, ToolCallFailed):
        error = [exc.error_type, str(exc)]
    elif exc is not None:
        error = [type(exc).__name__, str(exc)]
    return {"result": dict(event.tool_result), "error": error}


def load_tool_result(data: dict[str, Any], key: str = "") -> ToolResultEvent:
    """The ``ToolResultEvent`` that ends tool step ``key``, from journaled data.

    The exception behind an error result is a :class:`~stalwart.kit.ToolCallFailed`, live and
    on replay alike (hooks must see the same thing both times): the original exception's
    type name as ``error_type``, its message as ``str(exc)``.
    """
    error = data.get("error")
    exc = ToolCallFailed(key, error[0], error[1]) if error else None
    return ToolResultEvent(data["result"], exception=exc)


def delta_text(event: Any) -> str | None:
    """The text of a model stream's text delta event (Strands' ``TextStreamEvent``), else None."""
    delta = event.get("delta") if isinstance(event, dict) else None
    text = delta.get("text") if isinstance(delta, dict) else None
    return text if isinstance(text, str) and text else None


# -- interrupts ----------------------------------------------------------------------------


def dump_interrupts(interrupts: list[Interrupt], *, raised: bool) -> dict[str, Any]:
    """The journal form of a call that stopped on interrupts instead of returning a result.

    ``raised``: the interrupt came as an ``InterruptException`` (a middleware's
    ``context.interrupt()``), not as a tool's interrupt event; replay raises it again.
    A reason that is not plain data is kept as its text.
    """
    return {
        "interrupts": [
            {"id": i.id, "name": i.name, "reason": to_jsonable_python(i.reason, fallback=repr)}
            for i in interrupts
        ],
        "raised": raised,
    }


def is_interrupt(data: Any) -> bool:
    """Whether journaled call data is an interrupt record (see :func:`dump_interrupts`)."""
    return isinstance(data, dict) and "interrupts" in data


def load_interrupts(data: dict[str, Any]) -> list[Interrupt]:
    """The interrupts of an interrupt record, as Strands raised them (without responses)."""
    return [Interrupt(i["id"], i["name"], i.get("reason")) for i in data["interrupts"]]
