"""What a tool, handoff or guardrail step journals besides its own result, and replay marks.

- **The record.** Such a step journals ``{"stalwart.step": 1, <its result fields>,
  "context": <the run context's state when it finished>, "usage": <its inner runs' tokens>}``
  (:func:`step_record`); an entry without the marker (journaled by an older version) is the
  bare result (:func:`record_field`).

- **Inner usage.** A guardrail (or a tool) may run an agent of its own with ``Runner.run``
  (the customer-service example's relevance guardrail does). Those model calls run inside the
  step, not as steps of their own, so their tokens are counted into the step: the SDK's
  default agent runner is wrapped once (:func:`install_usage_counter`) so that a
  ``Runner.run`` finishing inside a step body reports its ``context_wrapper.usage`` to that
  step (:func:`counting_usage`), and the step's usage extractor reads it back from the
  journal, so usage limits and costs apply to them, live and replayed.
- **Replay marks.** The SDK opens a function span around every tool call, replayed or not; a
  replayed model call opens no response span (nothing is sent). :func:`mark_replayed` adds a
  ``stalwart.replayed`` custom span under the current span, so a trace shows which work was
  replayed from the journal rather than executed.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from agents.models.interface import Model
from agents.run import AgentRunner, get_default_agent_runner, set_default_agent_runner
from agents.tracing import custom_span, get_current_trace

from stalwart.actors import Usage as StepUsage

if TYPE_CHECKING:
    from collections.abc import Iterator

    from agents.result import RunResult, RunResultStreaming

REPLAYED_SPAN = "stalwart.replayed"
"""Name of the custom span that marks work replayed from the journal in the SDK's trace."""

_SINK: ContextVar[list[dict[str, Any]] | None] = ContextVar("stalwart_openai_usage", default=None)


@contextlib.contextmanager
def counting_usage() -> Iterator[list[dict[str, Any]]]:
    """Collect the usage of every ``Runner.run`` that finishes inside this block."""
    sink: list[dict[str, Any]] = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def merged_usage(sink: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The usage a step journals for the runs counted in ``sink`` (None when there were none)."""
    if not sink:
        return None
    return {
        "model": sink[0]["model"],
        "requests": sum(int(u["requests"]) for u in sink),
        "input_tokens": sum(int(u["input_tokens"]) for u in sink),
        "output_tokens": sum(int(u["output_tokens"]) for u in sink),
    }


def inner_usage(record: Any) -> StepUsage | None:
    """``StepSpec.usage`` for tool, handoff and guardrail steps: their inner runs' tokens."""
    usage = record.get("usage") if isinstance(record, dict) else None
    if not isinstance(usage, dict):
        return None
    return StepUsage(
        model=str(usage.get("model", "")),
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
    )


_RECORD = "stalwart.step"


def step_record(*, context: Any, usage: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A tool, handoff or guardrail step's journal form (see the module docs)."""
    record: dict[str, Any] = {_RECORD: 1, **fields, "context": context}
    merged = merged_usage(usage)
    if merged is not None:
        record["usage"] = merged
    return record


def record_field(record: Any, name: str, bare: Any = None) -> Any:
    """Field ``name`` of a :func:`step_record`; ``bare`` for an entry of the older bare form."""
    if isinstance(record, dict) and record.get(_RECORD) == 1:
        return record.get(name)
    return bare


def _model_name(result: RunResult) -> str:
    model = getattr(result.last_agent, "model", None)
    if isinstance(model, str) and model:
        return model
    if isinstance(model, Model):
        name = getattr(model, "model", None)
        return name if isinstance(name, str) and name else type(model).__name__
    return "default"


class _UsageCountingRunner(AgentRunner):
    """The SDK's default agent runner, reporting finished runs' usage to the current step."""

    def __init__(self, inner: AgentRunner) -> None:
        self.inner = inner

    async def run(self, starting_agent: Any, input: Any, **kwargs: Any) -> RunResult:
        result = await self.inner.run(starting_agent, input, **kwargs)
        sink = _SINK.get()
        if sink is not None:
            usage = result.context_wrapper.usage
            sink.append(
                {
                    "model": _model_name(result),
                    "requests": usage.requests,
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                }
            )
        return result

    def run_sync(self, starting_agent: Any, input: Any, **kwargs: Any) -> RunResult:
        return self.inner.run_sync(starting_agent, input, **kwargs)

    def run_streamed(self, starting_agent: Any, input: Any, **kwargs: Any) -> RunResultStreaming:
        return self.inner.run_streamed(starting_agent, input, **kwargs)


def install_usage_counter() -> None:
    """Wrap the SDK's default agent runner once per process (see the module docs)."""
    current = get_default_agent_runner()
    if not isinstance(current, _UsageCountingRunner):
        set_default_agent_runner(_UsageCountingRunner(current))


def mark_replayed(kind: str, key: str, **data: Any) -> None:
    """Add a ``stalwart.replayed`` span for a step replayed from the journal (if tracing)."""
    if get_current_trace() is None:
        return
    with custom_span(REPLAYED_SPAN, {"stalwart.replayed": True, "kind": kind, "step": key, **data}):
        pass
