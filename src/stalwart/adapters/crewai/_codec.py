"""Journaling CrewAI values: model responses, tool results, and request fingerprints.

A model call returns text, a list of provider tool-call objects (OpenAI, Anthropic, Gemini
pydantic models, or dicts), or a pydantic model (structured output); a tool returns anything.
They are journaled as plain data, pydantic models tagged with their class so that a replay
(and the live path, which returns what was journaled) gets the same types back.

The tag is only a choice among trusted classes (see ``stalwart.kit``): the
model class the call expects, the runner's ``allowed_types``, and the pydantic data types of
the model providers' SDKs that are already imported. Any other name fails the run with
:class:`~stalwart.errors.DisallowedTypeError`; nothing is imported because the journal names it.
"""

from __future__ import annotations

import json
import typing
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from stalwart.errors import DisallowedTypeError
from stalwart.kit import canonical_fp, canonical_json, loaded_class, text_digest, type_path

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

_MODEL_TAG = "__pydantic__"

# Provider SDK packages whose pydantic data types (tool calls in model responses) a
# journaled value may name, once the provider has imported them. Data classes only.
PROVIDER_PACKAGES = ("openai.types.", "anthropic.types.", "google.genai.types.")

_ALLOW_HOW = (
    "if the type is yours and the data genuine, pass it to the runner: DurableCrewRunner(..., allowed_types=[YourModel]) "
    "(or DurableAgentRunner)"
)


def encode(value: Any) -> Any:
    """``value`` as msgpack-encodable plain data; pydantic models keep their class."""
    if value is None or isinstance(value, str | bool | int | float | bytes):
        return value
    if isinstance(value, BaseModel):
        return {
            _MODEL_TAG: type_path(type(value)),
            "data": value.model_dump(mode="json"),
        }
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: encode(v) for k, v in value.items()}
    raise TypeError(
        f"a {type(value).__module__}.{type(value).__qualname__} cannot be journaled; "
        "return text, plain data or a pydantic model from models and tools"
    )


def _model_class(path: str, hint: Any, allowed: Mapping[str, type]) -> type[BaseModel]:
    _, _, qualname = path.partition(":")
    if isinstance(hint, type) and issubclass(hint, BaseModel) and hint.__qualname__ == qualname:
        return hint  # dynamically created models (a task's output model) are not importable
    target = allowed.get(path) or loaded_class(path, PROVIDER_PACKAGES)
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise DisallowedTypeError(path, _ALLOW_HOW)
    return target


def returned_models(tools: Iterable[Any]) -> list[type[BaseModel]]:
    """The pydantic models that ``tools`` declare they return (``-> Model``, ``-> list[Model]``).

    A tool's result is journaled with its class; the classes its code declares are allowed
    to be rebuilt without being listed in ``allowed_types``.
    """
    found: list[type[BaseModel]] = []
    for tool in tools:
        for fn in (getattr(tool, "func", None), getattr(type(tool), "_run", None)):
            if fn is None:
                continue
            try:
                returned = typing.get_type_hints(fn).get("return")
            except Exception:  # unresolvable annotations: nothing declared that we can use
                continue
            _models_in(returned, found)
    return found


def _models_in(tp: Any, found: list[type[BaseModel]]) -> None:
    for arg in typing.get_args(tp):
        _models_in(arg, found)
    if isinstance(tp, type) and issubclass(tp, BaseModel) and tp not in found:
        found.append(tp)


def decode(data: Any, hint: Any = None, allowed: Mapping[str, type] | None = None) -> Any:
    """The value :func:`encode` turned into ``data``; ``hint`` is the expected model class.

    ``allowed``: further model classes a tagged value may be rebuilt as, by
    :func:`~stalwart.kit.type_path`. Raises
    :class:`~stalwart.errors.DisallowedTypeError` for a tag naming any other class.
    """
    if isinstance(data, list):
        return [decode(v, hint, allowed) for v in data]
    if isinstance(data, dict):
        path = data.get(_MODEL_TAG)
        if isinstance(path, str) and len(data) == 2 and "data" in data:
            return _model_class(path, hint, allowed or {}).model_validate(data["data"])
        return {k: decode(v, hint, allowed) for k, v in data.items()}
    return data


def _opaque(obj: Any) -> str:
    # Files, raw provider parts: they take part by type, never by repr (memory addresses).
    return f"<{type(obj).__qualname__}>"


def conversation(messages: Any) -> list[Any]:
    """Messages reduced to what is stable across executions, for fingerprints.

    Tool-call ids are renumbered in order of appearance: some providers' ids are the
    memory address of the call object (``call_<id()>``), new on every execution.
    """
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    ids: dict[str, str] = {}

    def renumber(call_id: Any) -> str:
        return ids.setdefault(str(call_id), f"#{len(ids) + 1}")

    out: list[Any] = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(_opaque(message))
            continue
        m = {k: v for k, v in message.items() if k not in ("raw_tool_call_parts", "files")}
        if isinstance(m.get("tool_calls"), list):
            m["tool_calls"] = [
                {**tc, "id": renumber(tc.get("id"))} if isinstance(tc, dict) else _opaque(tc)
                for tc in m["tool_calls"]
            ]
        if "tool_call_id" in m:
            m["tool_call_id"] = renumber(m["tool_call_id"])
        out.append(m)
    return out


def model_fp(model: str, messages: Any, tools: Any, response_model: Any) -> str:
    """Fingerprint of a model request: model, conversation, offered tools, output type."""
    names = sorted(
        str(t.get("function", {}).get("name", t.get("name", "")))
        for t in tools or []
        if isinstance(t, dict)
    )
    output = getattr(response_model, "__qualname__", None) if response_model else None
    digest = text_digest(canonical_json(conversation(messages)))
    return canonical_fp("crewai.model", [model, digest, names, output])


def tool_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A tool call's arguments as JSON-compatible data (for fingerprints and keys)."""
    return json.loads(canonical_json([list(args), kwargs]))


def tool_fp(name: str, args: Any) -> str:
    """Fingerprint of a tool call: its name and canonical arguments."""
    return canonical_fp("crewai.tool", [name, args])
