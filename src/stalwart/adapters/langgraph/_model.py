"""Model calls in LangGraph: their usage, journaled as model steps of the task that made them.

LangGraph runs a model call inside a task (the chatbot node, ``create_react_agent``'s
``agent`` node, a ``@task``), stores the task's writes before going on (``durability=
"sync"``) and skips it on resume; the stored task is the durable step, mirrored into the
journal by :class:`~stalwart.adapters.langgraph._tools.TaskJournal`. The adapter wraps no
model. What a task does not carry is what its model calls cost, which the run's budgets
(``Limits(max_tokens=..., max_cost_usd=..., max_iterations=...)``) count: so
:class:`ModelCalls`, a LangChain callback handler, collects each chat model call's reported
usage per task, and the journal writes one step of kind ``model`` per call, beside the task's
own step, when the task's writes are stored. A budget already spent stops the next model call
before it is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler

from stalwart.actors import StepSpec, Usage
from stalwart.kit import canonical_fp
from stalwart.policies import RunUsage

if TYPE_CHECKING:
    from uuid import UUID

    from langchain_core.outputs import LLMResult

    from stalwart.policies import Limits

KIND_MODEL = "model"


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One finished chat model call: the model that answered and the tokens it reported."""

    model: str
    input_tokens: int
    output_tokens: int

    def data(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


def task_of(metadata: dict[str, Any] | None) -> str | None:
    """The LangGraph task id a callback's run belongs to (from ``langgraph_checkpoint_ns``)."""
    ns = (metadata or {}).get("langgraph_checkpoint_ns")
    if not isinstance(ns, str) or not ns:
        return None
    return ns.rpartition("|")[2].rpartition(":")[2] or None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def call_of(response: LLMResult, fallback_model: str) -> ModelCall:
    """The usage a chat model reported: the message's ``usage_metadata`` (what the plain
    run's messages show), else the provider's ``token_usage`` in ``llm_output``."""
    output = response.llm_output or {}
    model = str(output.get("model_name") or output.get("model") or "")
    tokens_in = tokens_out = 0
    for generations in response.generations:
        for gen in generations:
            message = getattr(gen, "message", None)
            usage = getattr(message, "usage_metadata", None)
            meta = getattr(message, "response_metadata", None) or {}
            model = model or str(meta.get("model_name") or meta.get("model") or "")
            if usage:
                tokens_in += _int(usage.get("input_tokens"))
                tokens_out += _int(usage.get("output_tokens"))
    if not (tokens_in or tokens_out):
        raw = output.get("token_usage") or output.get("usage") or {}
        if isinstance(raw, dict):
            tokens_in = _int(raw.get("prompt_tokens", raw.get("input_tokens")))
            tokens_out = _int(raw.get("completion_tokens", raw.get("output_tokens")))
    return ModelCall(model or fallback_model, tokens_in, tokens_out)


class ModelCalls(BaseCallbackHandler):
    """Collects chat model calls per LangGraph task; refuses a call the budgets forbid.

    ``raise_error``: a spent budget raised from ``on_chat_model_start`` must stop the call.
    """

    run_inline = True
    raise_error = True

    def __init__(self, limits: Limits | None) -> None:
        self.limits = limits
        self.usage = RunUsage()
        """The run's model usage so far, as journaled (replayed steps included)."""
        self._tasks: dict[UUID, tuple[str, str]] = {}
        self.done: dict[str, list[ModelCall]] = {}
        """Finished calls by task id, until the task's writes are stored."""

    def _start(self, run_id: UUID, metadata: dict[str, Any] | None, model: str) -> None:
        task_id = task_of(metadata)
        if task_id is None:
            return  # not in a graph task: nothing would journal it
        if self.limits is not None:
            self.usage.before_model(self.limits)  # BudgetExceeded: the call is not sent
        self._tasks[run_id] = (task_id, model)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: Any,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, metadata, _model_name(serialized, kwargs))

    def on_llm_start(
        self,
        serialized: dict[str, Any] | None,
        prompts: list[str],
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._start(run_id, metadata, _model_name(serialized, kwargs))

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        started = self._tasks.pop(run_id, None)
        if started is not None:
            task_id, model = started
            self.done.setdefault(task_id, []).append(call_of(response, model))

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tasks.pop(run_id, None)

    def count(self, call: ModelCall) -> None:
        """Count a journaled model step (live or replayed) toward the budgets' pre-check."""
        if self.limits is not None:
            self.usage.add_model(self.limits, call.model, call.input_tokens, call.output_tokens)
        else:
            self.usage.model_calls += 1


def _model_name(serialized: dict[str, Any] | None, kwargs: dict[str, Any]) -> str:
    params = kwargs.get("invocation_params") or {}
    name = params.get("model_name") or params.get("model")
    if name:
        return str(name)
    return str(((serialized or {}).get("kwargs") or {}).get("model_name") or "")


def model_spec(key: str, task_id: str, n: int, call: ModelCall) -> StepSpec:
    """The step of the n-th model call of a task (its usage counts toward the budgets)."""
    return StepSpec(
        key=key,
        kind=KIND_MODEL,
        name=call.model or "model",
        fp=canonical_fp("langgraph.model", [task_id, n]),
        usage=lambda data: Usage(
            str(data["model"]), int(data["input_tokens"]), int(data["output_tokens"])
        ),
    )
