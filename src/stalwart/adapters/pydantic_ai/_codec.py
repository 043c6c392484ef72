"""What a model request is compared by on replay, as pure functions over plain data.

Two checks guard a replayed model step. The step fingerprint covers the model and the
conversation (without timestamps, random ids and provider bookkeeping); the request shape
(model, tools, output type, instructions) is journaled with the response and compared by
:func:`stalwart.kit.model_step`, so a changed agent fails with a message that says what
changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from pydantic_ai.messages import ModelMessagesTypeAdapter

from stalwart.actors import Usage
from stalwart.kit import text_digest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pydantic_ai.messages import ModelMessage
    from pydantic_ai.models import ModelRequestParameters

_VOLATILE_MESSAGE_KEYS = frozenset(
    {
        "timestamp",
        "run_id",
        "conversation_id",
        "provider_response_id",
        "provider_details",
        "provider_url",
        "usage",
        "instructions",  # in the request shape, with its own message
    }
)
_VOLATILE_PART_KEYS = frozenset({"timestamp", "tool_call_id", "id", "provider_details"})


def conversation(messages: Sequence[ModelMessage]) -> list[Any]:
    """``messages`` as plain data without timestamps, random ids and provider bookkeeping.

    Only message- and part-level fields are dropped: tool arguments and contents are kept
    whole, even where they have keys named ``id`` or ``timestamp``.
    """
    out: list[Any] = []
    for message in ModelMessagesTypeAdapter.dump_python(list(messages), mode="json"):
        kept = {k: v for k, v in message.items() if k not in _VOLATILE_MESSAGE_KEYS}
        kept["parts"] = [
            {k: v for k, v in part.items() if k not in _VOLATILE_PART_KEYS}
            for part in message.get("parts", [])
        ]
        out.append(kept)
    return out


def _digest(value: Any) -> str:
    return text_digest(msgspec.json.encode(value, order="deterministic").decode())


def request_shape(
    model_name: str, params: ModelRequestParameters, messages: Sequence[ModelMessage]
) -> dict[str, Any]:
    """What a model request says about the agent: its model, tools, output and instructions."""
    instructions = next((m.instructions for m in reversed(messages) if m.kind == "request"), None)
    output_object = params.output_object
    return {
        "model": model_name,
        "tools": {t.name: _digest(t.parameters_json_schema) for t in params.function_tools},
        "output": {t.name: _digest(t.parameters_json_schema) for t in params.output_tools},
        "output_mode": params.output_mode,
        "output_object": _digest(output_object.json_schema) if output_object else "",
        "text_output": params.allow_text_output,
        "instructions": text_digest(instructions) if instructions else "",
    }


def model_usage(result: Any) -> Usage | None:
    """The tokens a journaled model step reported (``StepSpec.usage``)."""
    try:
        usage = result["response"].get("usage") or {}
        return Usage(
            model=str(result["request"]["model"]),
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
        )
    except (KeyError, TypeError, AttributeError):
        return None


def response_summary(payload: Any) -> dict[str, Any]:
    """A journaled response, shortened for the ``model.response`` event."""
    parts = payload.get("parts", []) if isinstance(payload, dict) else []
    calls = [
        {"tool": p.get("tool_name"), "tool_call_id": p.get("tool_call_id")}
        for p in parts
        if p.get("part_kind") == "tool-call"
    ]
    text = "".join(p.get("content", "") for p in parts if p.get("part_kind") == "text")
    return {"model": payload.get("model_name"), "tool_calls": calls, "text": text[:4096]}
