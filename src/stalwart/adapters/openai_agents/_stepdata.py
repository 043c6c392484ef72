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
  step (:func:`counting_usage`), which keeps it in its record; each inner run then becomes
  a model step ``<step key>/model:<n>`` carrying its tokens (:func:`account_inner_usage`),
  so budgets, costs and metrics count them as they count every model call.
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

from stalwart.actors import StepSpec
from stalwart.actors import Usage as StepUsage
from stalwart.kit import call_step, canonical_fp

if TYPE_CHECKING:
    from collections.abc import Iterator

    from agents.result import RunResult, RunResultStreaming

    from stalwart.actors import RunContext

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


def _inner_usage(result: Any) -> StepUsage | None:
    """``StepSpec.usage`` of an inner-usage step: the tokens of one inner agent run."""
    try:
        return StepUsage(
            model=str(result["model"]),
            input_tokens=int(result["input_tokens"]),
            output_tokens=int(result["output_tokens"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


async def account_inner_usage(ctx: RunContext, key: str, record: Any) -> None:
    """Journal the tokens of the agents a step ran itself as model steps ``<key>/model:<n>``.

    Stalwart counts usage (budgets, costs, history, metrics) on model steps; the step that
    ran those agents is a tool, handoff or guardrail step. So each inner run's usage, kept in
    the step's record, becomes a model step of its own right after it (replayed, like any
    step, on resume; a budget already spent stops the run here, as before a model call).
    """
    usage = record_field(record, "usage")
    if not isinstance(usage, list):
        return
    for n, used in enumerate(usage, 1):
        if not isinstance(used, dict):
            continue
        model = str(used.get("model", ""))
        spec = StepSpec(
            key=f"{key}/model:{n}",
            kind="model",
            name=model,
            fp=canonical_fp("inner-usage", {"model": model}),
            usage=_inner_usage,
        )

        async def body(used: dict[str, Any] = used) -> dict[str, Any]:
            return used

        await call_step(ctx, spec, body)


_RECORD = "stalwart.step"


def step_record(*, context: Any, usage: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """A tool, handoff or guardrail step's journal form (see the module docs)."""
    record: dict[str, Any] = {_RECORD: 1, **fields, "context": context}
    if usage:
        record["usage"] = list(usage)
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
        usage = result.context_wrapper.usage
        # A run that used no tokens (a scripted model) has nothing to count.
        if sink is not None and (usage.input_tokens or usage.output_tokens):
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
