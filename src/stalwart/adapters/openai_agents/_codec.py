"""Pure translations between the SDK's objects and the plain data the journal stores.

Everything here is synchronous and free of I/O: model responses to msgpack-friendly dicts
and back, the parts of a model request that are compared on replay, tool outputs,
guardrail outputs and final outputs.
"""

from __future__ import annotations

import json
import types
import typing
from typing import TYPE_CHECKING, Any

from agents.guardrail import GuardrailFunctionOutput
from agents.items import ModelResponse, TResponseOutputItem
from agents.tool import FunctionTool, Tool, ToolOutputFileContent, ToolOutputImage, ToolOutputText
from agents.usage import Usage
from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_jsonable_python

from stalwart.actors import Usage as StepUsage
from stalwart.errors import DisallowedTypeError
from stalwart.kit import allow_map, text_digest

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from agents.agent_output import AgentOutputSchemaBase
    from agents.handoffs import Handoff

_OUTPUT_ITEM: TypeAdapter[TResponseOutputItem] = TypeAdapter(TResponseOutputItem)
_USAGE: TypeAdapter[Usage] = TypeAdapter(Usage)

# Fields that may differ between two executions of the same conversation without changing
# what the model is asked: item ids (some providers and fake-id policies mint them) and
# clocks. They are left out of model-call fingerprints.
VOLATILE_FIELDS = frozenset({"id", "created_at", "timestamp"})

_STRUCTURED_TOOL_OUTPUTS = (ToolOutputText, ToolOutputImage, ToolOutputFileContent)


# -- model responses ----------------------------------------------------------------------


def _members(tp: Any) -> list[type]:
    """The classes of a (possibly annotated) union type."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [cls for arg in typing.get_args(tp) for cls in _members(arg)]
    return [tp] if isinstance(tp, type) else []


# Output items are rebuilt with their own class, chosen by name among the classes of the
# output item union only: the journal never makes a worker import anything. A name from the
# SDK's packages that is not a member (a class renamed by another SDK version) is rebuilt
# from its data by the union's discriminator; any other name is refused.
_ITEM_CLASSES = allow_map(_members(TResponseOutputItem))
_SDK_PACKAGES = ("openai.", "agents.")


def _item_class(path: str) -> type[BaseModel] | None:
    cls = _ITEM_CLASSES.get(path)
    if cls is not None and issubclass(cls, BaseModel):
        return cls
    if path.startswith(_SDK_PACKAGES):
        return None
    raise DisallowedTypeError(
        path,
        "model output items are OpenAI's output item types only: this journal entry was not "
        "written by Stalwart",
    )


def dump_item(item: Any) -> dict[str, Any]:
    """An output item as ``{"t": "<module>:<class>", "d": <fields that were set>}``.

    Only fields that were set are kept (``exclude_unset``), so the rebuilt item turns into
    exactly the same next-turn input as the original: the SDK derives it with the same
    ``exclude_unset`` dump.
    """
    if isinstance(item, BaseModel):
        cls = type(item)
        return {
            "t": f"{cls.__module__}:{cls.__qualname__}",
            "d": item.model_dump(mode="json", exclude_unset=True),
        }
    return {"t": "", "d": to_jsonable_python(item)}


def load_item(raw: Mapping[str, Any]) -> TResponseOutputItem:
    """Rebuild an output item recorded by :func:`dump_item`."""
    path = raw.get("t")
    cls = _item_class(str(path)) if path else None
    if cls is not None:
        return cls.model_validate(raw["d"])  # type: ignore[return-value]
    return _OUTPUT_ITEM.validate_python(raw["d"])


def dump_response(response: ModelResponse) -> dict[str, Any]:
    """A :class:`ModelResponse` as plain data (output items, usage, ids)."""
    return {
        "output": [dump_item(item) for item in response.output],
        "usage": _USAGE.dump_python(response.usage, mode="json"),
        "response_id": response.response_id,
        "request_id": response.request_id,
        "raw_usage": response.raw_usage,
    }


def load_response(data: Mapping[str, Any]) -> ModelResponse:
    """Rebuild the :class:`ModelResponse` recorded by :func:`dump_response`."""
    return ModelResponse(
        output=[load_item(item) for item in data["output"]],
        usage=_USAGE.validate_python(data["usage"]),
        response_id=data.get("response_id"),
        request_id=data.get("request_id"),
        raw_usage=data.get("raw_usage"),
    )


def usage_extractor(model_name: str) -> Callable[[Any], StepUsage | None]:
    """``StepSpec.usage`` for model steps: token counts from a journaled model step result."""

    def extract(result: Any) -> StepUsage | None:
        try:
            usage = result["response"]["usage"]
            return StepUsage(
                model=model_name,
                input_tokens=int(usage.get("input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            )
        except (KeyError, TypeError, AttributeError, ValueError):
            return None

    return extract


# -- model requests -----------------------------------------------------------------------


def tool_label(tool: Tool) -> str:
    """The name a tool is offered to the model under."""
    if isinstance(tool, FunctionTool):
        return tool.qualified_name
    name = getattr(tool, "name", None)
    return name if isinstance(name, str) else type(tool).__name__


def request_shape(
    model_name: str,
    system_instructions: str | None,
    tools: Sequence[Tool],
    handoffs: Sequence[Handoff[Any, Any]],
    output_schema: AgentOutputSchemaBase | None,
) -> dict[str, Any]:
    """What a model call offers the model, apart from the conversation itself.

    Stored with the model step's result (a few names, not the conversation), compared on
    replay by :func:`stalwart.kit.model_step`, so a changed agent fails with a message that says what
    changed.
    """
    return {
        "model": model_name,
        "instructions": text_digest(system_instructions or ""),
        "tools": sorted(tool_label(t) for t in tools),
        "handoffs": sorted(h.tool_name for h in handoffs),
        "output": output_schema.name() if output_schema is not None else "str",
    }


def without_volatile(value: Any) -> Any:
    """``value`` as plain data with :data:`VOLATILE_FIELDS` removed at every depth."""
    plain = to_jsonable_python(value, fallback=_opaque)
    return _strip(plain)


def _opaque(obj: Any) -> str:
    # By type only: a repr often carries a memory address, different on every replay.
    return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_FIELDS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


# -- tools --------------------------------------------------------------------------------


def canonical_args(arguments: str) -> Any:
    """Tool-call arguments for fingerprinting: parsed JSON (key order then does not matter)."""
    try:
        return json.loads(arguments) if arguments else None
    except ValueError:
        return arguments


def _is_structured(value: Any) -> bool:
    return isinstance(value, _STRUCTURED_TOOL_OUTPUTS)


def dump_tool_output(output: Any, *, typed: bool) -> Any:
    """A tool's return value as plain data that the SDK turns into the same model input.

    Strings and numbers pass; the SDK's structured outputs (text, image, file) become their
    ``{"type": ...}`` dict form, which the SDK accepts as the same thing; tools with a
    declared output schema keep their JSON form (the SDK validates it again); anything else
    becomes ``str(output)``, which is what the SDK would have sent the model anyway.
    """
    if output is None or isinstance(output, str | bool | int | float):
        return output
    if _is_structured(output):
        return output.model_dump(mode="json")
    if isinstance(output, list | tuple) and output and all(_is_structured(o) for o in output):
        return [o.model_dump(mode="json") for o in output]
    if typed:
        return to_jsonable_python(output, fallback=str)
    if isinstance(output, dict | list):
        try:
            plain = to_jsonable_python(output)
        except Exception:  # values JSON cannot hold: the model sees str(output) anyway
            return str(output)
        if plain == output:
            return plain
    return str(output)


# -- guardrails and final output ----------------------------------------------------------


def dump_guardrail_output(output: GuardrailFunctionOutput) -> dict[str, Any]:
    """A guardrail's verdict; ``output_info`` becomes plain data (a pydantic model a dict)."""
    return {
        "tripwire_triggered": bool(output.tripwire_triggered),
        "output_info": to_jsonable_python(output.output_info, fallback=str),
    }


def load_guardrail_output(data: Mapping[str, Any]) -> GuardrailFunctionOutput:
    """Rebuild the verdict recorded by :func:`dump_guardrail_output`."""
    return GuardrailFunctionOutput(
        output_info=data.get("output_info"),
        tripwire_triggered=bool(data.get("tripwire_triggered")),
    )


def plain_output(value: Any) -> Any:
    """A run's final output as msgpack-encodable data (a pydantic model becomes a dict)."""
    return to_jsonable_python(value, fallback=str)
