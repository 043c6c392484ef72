"""What crosses the process boundary: a run's per-run inputs in, PydanticAI's result out.

A caller passes ``agent.run``'s own per-run inputs (``deps``, ``message_history``,
``deferred_tool_results``, ``model_settings``, ``usage_limits``, ``metadata``); they travel
to the worker as plain data in an :class:`AgentRequest` and are rebuilt there as the types
``agent.run`` takes. The worker returns the run's ``AgentRunResult`` in PydanticAI's own
serialized shape (``messages``, ``new_message_index``, ``usage``, ``output``...), which the
client validates back into an ``AgentRunResult``: ``all_messages()``, ``new_messages()``,
``usage``, ``output`` as the plain run has them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Union

import msgspec
from pydantic import BaseModel, TypeAdapter

# The types an output spec produces: the helper PydanticAI's own `output_json_schema` uses.
from pydantic_ai._output import types_from_output_spec
from pydantic_ai.messages import ModelMessagesTypeAdapter
from pydantic_ai.run import AgentRunResult
from pydantic_ai.tools import DeferredToolResults
from pydantic_ai.usage import UsageLimits
from pydantic_core import PydanticSerializationError, to_jsonable_python

from stalwart.errors import NonRetryableError

if TYPE_CHECKING:
    from collections.abc import Mapping


class AgentRequest(msgspec.Struct, omit_defaults=True):
    """The input of a :class:`DurableAgentRunner` run (a plain prompt string also works).

    Every field is plain data; :meth:`DurableAgentRunner.request` builds it from the keyword
    arguments ``agent.run`` takes.
    """

    prompt: str | None = None
    deps: Any = None
    """Plain data the worker turns into the agent's deps (a factory, else ``deps_type``)."""
    message_history: list[Any] | None = None
    """Earlier messages, as ``ModelMessagesTypeAdapter`` dumps them in JSON mode."""
    deferred_tool_results: Any = None
    """Approvals and results of deferred tool calls (``DeferredToolResults`` as JSON data)."""
    model_settings: dict[str, Any] | None = None
    usage_limits: dict[str, Any] | None = None
    """``UsageLimits`` fields; they replace the runner's limits for this run."""
    metadata: dict[str, Any] | None = None


OPTIONS = (
    "deps",
    "message_history",
    "deferred_tool_results",
    "model_settings",
    "usage_limits",
    "metadata",
)
"""The per-run keyword arguments of ``agent.run`` that can travel to a worker."""

_STAY_HOME = {
    "toolsets": "add them to the agent",
    "capabilities": "add them to the agent",
    "event_stream_handler": "follow the run's events (handle.events())",
    "model": "build the agent with it (or pass a factory building the agent)",
    "output_type": "build the agent with it (or pass a factory building the agent)",
    "instructions": "build the agent with them, or make them depend on deps",
}


_DEPS_PLAIN = (
    "deps travel to the worker as plain data (JSON: str, numbers, lists, dicts, or a "
    "dataclass / pydantic model of those). "
)
_DEPS_FACTORY = (
    "Pass the plain data the run needs (ids, settings): this runner's deps factory "
    "receives it in the worker and builds clients and connections there"
)
_DEPS_NO_FACTORY = (
    "Pass the plain data the run needs (ids, settings) and build clients and connections "
    "in the worker with a factory: DurableAgentRunner(..., deps=lambda data: "
    "MyDeps(customer_id=data['customer_id'], db=connect()))"
)


def _offending(value: Any, path: str = "deps") -> tuple[str, Any]:
    """The innermost part of ``value`` JSON cannot hold, and where it is (``deps.db``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        items: Mapping[Any, Any] = {
            f.name: getattr(value, f.name) for f in dataclasses.fields(value)
        }
    elif isinstance(value, BaseModel):
        items = dict(value)
    elif isinstance(value, dict):
        items = value
    elif isinstance(value, list | tuple | set | frozenset):
        items = dict(enumerate(value))
    else:
        return path, value
    for key, item in items.items():
        try:
            to_jsonable_python(item)
        except (PydanticSerializationError, TypeError, ValueError):
            sub = f"{path}[{key!r}]" if isinstance(value, dict | list | tuple) else f"{path}.{key}"
            return _offending(item, sub)
    return path, value


def plain_deps(deps: Any, *, factory: bool = False) -> Any:
    """``deps`` as JSON-mode data, or a ``TypeError`` that says what cannot travel and why.

    ``factory``: the runner has a deps factory (the error then says it gets the data).
    """
    try:
        return to_jsonable_python(deps)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        where, what = _offending(deps)
        kind = f"{type(what).__module__}.{type(what).__qualname__}"
        raise TypeError(
            f"{where} is a {kind}, which cannot be sent to a worker: {_DEPS_PLAIN}"
            f"{_DEPS_FACTORY if factory else _DEPS_NO_FACTORY}"
        ) from exc


def encode_request(prompt: Any, options: Mapping[str, Any], *, factory: bool = False) -> Any:
    """The run input for ``prompt`` and ``agent.run`` keyword arguments ``options``.

    ``factory``: the runner builds deps with a factory (for the error about deps).
    """
    unknown = [name for name in options if name not in OPTIONS]
    if unknown:
        hints = "; ".join(
            f"{name}: {_STAY_HOME[name]}" if name in _STAY_HOME else name for name in unknown
        )
        raise TypeError(
            f"DurableAgentRunner takes the per-run inputs {', '.join(OPTIONS)}; not these ({hints})"
        )
    values = {name: value for name, value in options.items() if value is not None}
    if not values:
        return prompt
    history = values.get("message_history")
    deferred = values.get("deferred_tool_results")
    limits = values.get("usage_limits")
    request = AgentRequest(
        prompt=prompt,
        deps=plain_deps(values["deps"], factory=factory) if "deps" in values else None,
        message_history=(
            ModelMessagesTypeAdapter.dump_python(list(history), mode="json") if history else None
        ),
        deferred_tool_results=(
            adapter(DeferredToolResults).dump_python(deferred, mode="json")
            if deferred is not None
            else None
        ),
        model_settings=to_jsonable_python(values["model_settings"])
        if "model_settings" in values
        else None,
        usage_limits=(
            adapter(UsageLimits).dump_python(limits, mode="json") if limits is not None else None
        ),
        metadata=to_jsonable_python(values["metadata"]) if "metadata" in values else None,
    )
    return msgspec.to_builtins(request)


def decode_request(data: Any) -> AgentRequest:
    """The request a run input holds (a prompt string is a request with only a prompt)."""
    if data is None or isinstance(data, str):
        return AgentRequest(prompt=data)
    return msgspec.convert(data, AgentRequest)


def run_options(request: AgentRequest, limits: UsageLimits) -> dict[str, Any]:
    """``agent.run`` keyword arguments (besides deps) rebuilt from ``request``."""
    return {
        "message_history": (
            ModelMessagesTypeAdapter.validate_python(request.message_history)
            if request.message_history
            else None
        ),
        "deferred_tool_results": (
            adapter(DeferredToolResults).validate_python(request.deferred_tool_results)
            if request.deferred_tool_results is not None
            else None
        ),
        "model_settings": request.model_settings,
        "usage_limits": (
            adapter(UsageLimits).validate_python(request.usage_limits)
            if request.usage_limits is not None
            else limits
        ),
        "metadata": request.metadata,
    }


class OutputNotSerializable(NonRetryableError, TypeError):
    """The agent's output cannot be sent back to the caller as data."""


@functools.lru_cache(maxsize=64)
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def adapter(tp: Any) -> TypeAdapter[Any]:
    """A type adapter for ``tp``, built once per type (building one can take 0.2 s)."""
    try:
        return _cached_adapter(tp)
    except TypeError:  # an unhashable type form: built every time
        return TypeAdapter(tp)


def _result_adapter(output_type: Any) -> TypeAdapter[Any]:
    generic: Any = AgentRunResult  # parameterized with a type known at run time only
    return adapter(generic[output_type])


def result_data(result: AgentRunResult[Any]) -> Any:
    """An ``AgentRunResult`` as PydanticAI serializes it (JSON mode), for the run's result."""
    try:
        return _result_adapter(Any).dump_python(result, mode="json")
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        kind = f"{type(result.output).__module__}.{type(result.output).__qualname__}"
        raise OutputNotSerializable(
            f"the agent's output is a {kind}, which cannot be sent back to the caller ({exc}): "
            "give the agent an output_type of plain data (str, a pydantic model, a dataclass "
            "or TypedDict of plain values), or have the output function return one"
        ) from exc


def is_result_data(data: Any) -> bool:
    """Whether ``data`` is a serialized ``AgentRunResult`` (earlier versions returned the output)."""
    return isinstance(data, dict) and {"messages", "new_message_index", "usage"} <= data.keys()


def output_type_of(output_spec: Any) -> Any:
    """The Python type of an agent's output, from its output spec (``Any`` if unknown)."""
    try:
        types = list(dict.fromkeys(types_from_output_spec(output_spec)))
    except Exception:  # an output spec PydanticAI's helper cannot read: keep the data
        return Any
    if not types:
        return Any
    return types[0] if len(types) == 1 else Union[tuple(types)]  # noqa: UP007 - built at runtime


def decode_result(data: Any, output_spec: Any) -> AgentRunResult[Any]:
    """Rebuild the ``AgentRunResult`` a worker serialized, its output as the agent's type."""
    result: AgentRunResult[Any] = _result_adapter(output_type_of(output_spec)).validate_python(data)
    return result
