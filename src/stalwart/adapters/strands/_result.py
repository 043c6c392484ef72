"""Per-run inputs and results of a Strands agent run, as they cross the process boundary.

A run's wire input is the prompt alone, or ``{"prompt", <options>}`` when the caller gave
per-run options (:func:`encode_request`); the worker reads it back with
:func:`decode_request`. What crosses is plain data: the conversation so far
(``messages``), the agent's state, ``invocation_state``, ``limits``, a structured output
model by name (rebuilt only from an allow-list), a structured output prompt. What cannot
cross (a ``cancel_signal``, an ``idempotency_token``) is refused with what to use instead.

A lone agent's run returns :func:`result_data` (plain data); :func:`rebuild_result` turns
it back into a :class:`DurableAgentResult`, Strands' own ``AgentResult`` plus the
conversation and agent state after the run, for the next turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import msgspec
from pydantic import BaseModel
from strands.agent import AgentResult
from strands.multiagent import MultiAgentResult
from strands.telemetry.metrics import AgentInvocation, EventLoopMetrics

from stalwart.errors import ConfigurationError
from stalwart.kit import type_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from strands import Agent
    from strands.types.content import Message, Messages

OPTIONS = (
    "messages",
    "state",
    "invocation_state",
    "limits",
    "structured_output_model",
    "structured_output_prompt",
)
"""The per-run options a runner of a lone agent accepts (``runner.run(prompt, **options)``)."""

_REFUSED = {
    "cancel_signal": "a threading.Event cannot reach a worker; cancel the run with "
    "handle.cancel() (RunHandle from runner.submit)",
    "idempotency_token": "a durable run is already idempotent by its run id; pass run_id=",
}

_ENVELOPE = "strands_run"


def _plain(name: str, value: Any) -> Any:
    try:
        # Bytes stay bytes (images, documents): msgpack carries them as they are.
        return msgspec.to_builtins(value, builtin_types=(bytes, bytearray))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"per-run option {name!r} must be plain data to reach a worker ({exc}); build "
            "objects inside the agent factory instead"
        ) from None


def encode_request(prompt: Any, options: Mapping[str, Any]) -> Any:
    """The wire input for ``prompt`` and per-run ``options`` (the prompt alone without any)."""
    for name in options:
        if name in _REFUSED:
            raise TypeError(f"per-run option {name!r} is not supported: {_REFUSED[name]}")
        if name not in OPTIONS:
            raise TypeError(
                f"unknown per-run option {name!r}; a Strands runner takes {', '.join(OPTIONS)}"
            )
    prompt = _plain("prompt", prompt)
    if not options:
        return prompt
    wire: dict[str, Any] = {_ENVELOPE: 1, "prompt": prompt}
    for name, value in options.items():
        if value is None:
            continue
        if name == "structured_output_model":
            if not (isinstance(value, type) and issubclass(value, BaseModel)):
                raise TypeError("structured_output_model must be a pydantic BaseModel class")
            wire[name] = type_path(value)
        elif name == "state":
            # Strands' AgentState (a JSON dict behind get()) or a plain dict.
            wire[name] = _plain(name, value if isinstance(value, dict) else value.get())
        else:
            wire[name] = _plain(name, value)
    return wire


@dataclass(frozen=True)
class RunRequest:
    """A run's input as the worker reads it."""

    prompt: Any
    messages: Messages | None = None
    state: dict[str, Any] | None = None
    invocation: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``invoke_async`` (``invocation_state``, ``limits``...)."""


def decode_request(name: str, data: Any, models: Mapping[str, type[BaseModel]]) -> RunRequest:
    """The run input ``data`` of agent ``name``; a structured output model must be in ``models``."""
    if not (isinstance(data, dict) and data.get(_ENVELOPE) == 1):
        return RunRequest(_prompt(name, data))
    invocation: dict[str, Any] = {}
    for key in ("invocation_state", "limits", "structured_output_prompt"):
        if data.get(key) is not None:
            invocation[key] = data[key]
    model_name = data.get("structured_output_model")
    if model_name is not None:
        model = models.get(model_name)
        if model is None:
            raise ConfigurationError(
                f"agent {name!r} was asked for structured output {model_name!r}, which the "
                "runner does not know; list it in DurableAgentRunner(..., output_models=[...])"
            )
        invocation["structured_output_model"] = model
    return RunRequest(
        prompt=_prompt(name, data.get("prompt")),
        messages=data.get("messages"),
        state=data.get("state"),
        invocation=invocation,
    )


def _prompt(name: str, prompt: Any) -> Any:
    if prompt is None or isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(item, dict) for item in prompt):
        return prompt
    raise TypeError(
        f"agent {name!r} takes a prompt string, a list of content blocks or messages, or "
        f"None, not {type(prompt).__name__}"
    )


# -- the result ------------------------------------------------------------------------


def plain_conversation(messages: Messages) -> list[dict[str, Any]]:
    """The conversation as plain data (role and content; Strands' tracking ids stay behind)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def result_data(agent: Agent, result: AgentResult) -> dict[str, Any]:
    """What a lone agent's run returns: the parts of its ``AgentResult`` and the conversation."""
    metrics = result.metrics
    latest = metrics.latest_agent_invocation
    structured = result.structured_output
    text = str(result)
    return {
        "output": structured.model_dump(mode="json") if structured is not None else text.strip(),
        "stop_reason": result.stop_reason,
        "message": {"role": result.message["role"], "content": result.message["content"]},
        "usage": dict(metrics.accumulated_usage),
        "metrics": dict(metrics.accumulated_metrics),
        "cycles": metrics.cycle_count,
        "invocation_usage": dict(latest.usage) if latest is not None else None,
        "structured_output": (
            {"type": type_path(type(structured)), "data": structured.model_dump(mode="json")}
            if structured is not None
            else None
        ),
        "messages": plain_conversation(agent.messages),
        "state": agent.state.get(),
    }


@dataclass
class DurableAgentResult(AgentResult):
    """Strands' ``AgentResult`` of a durable run, rebuilt from the run's result.

    ``stop_reason``, ``message``, ``structured_output``, ``str(result)`` and
    ``metrics.accumulated_usage`` / ``accumulated_metrics`` / ``cycle_count`` /
    ``latest_agent_invocation.usage`` are the plain run's. ``metrics`` holds no traces and
    no per-cycle or per-tool metrics; ``state`` is empty; ``interrupts`` is None (the run
    waited for their answers). Added: ``messages``, the agent's conversation after the run
    (pass it as ``messages=`` to the next run to continue it), and ``agent_state``.
    """

    messages: Messages = field(default_factory=list)
    agent_state: dict[str, Any] = field(default_factory=dict)


def rebuild_result(data: Any, models: Mapping[str, type[BaseModel]]) -> Any:
    """The caller's result from a run's result data.

    A graph's or swarm's is Strands' ``MultiAgentResult.from_dict`` of what it persisted
    (node results as ``AgentResult.from_dict`` makes them: message and stop reason; the
    usage per node and in total).
    """
    if isinstance(data, dict) and isinstance(data.get("result"), dict):
        if data["result"].get("type") == "multiagent_result":
            return MultiAgentResult.from_dict(data["result"])
    if not (isinstance(data, dict) and "stop_reason" in data and "message" in data):
        return data
    metrics = EventLoopMetrics()
    metrics.accumulated_usage = cast("Any", dict(data.get("usage") or {}))
    metrics.accumulated_metrics = cast("Any", dict(data.get("metrics") or {}))
    metrics.cycle_count = int(data.get("cycles") or 0)
    if data.get("invocation_usage") is not None:
        metrics.agent_invocations.append(AgentInvocation(usage=data["invocation_usage"]))
    structured: BaseModel | None = None
    so = data.get("structured_output")
    if so is not None:
        model = models.get(so["type"])
        if model is None:
            raise ConfigurationError(
                f"the run returned structured output {so['type']!r}, which this runner does "
                "not know; list it in DurableAgentRunner(..., output_models=[...])"
            )
        structured = model.model_validate(so["data"])
    message = cast("Message", data["message"])
    return DurableAgentResult(
        stop_reason=data["stop_reason"],
        message=message,
        metrics=metrics,
        state={},
        structured_output=structured,
        messages=cast("Messages", data.get("messages") or []),
        agent_state=dict(data.get("state") or {}),
    )
