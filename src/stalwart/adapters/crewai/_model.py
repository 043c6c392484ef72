"""Model calls as durable steps: ``BaseLLM.call`` and ``acall``, wrapped on CrewAI's classes.

Every ``BaseLLM`` subclass's own ``call`` (and ``acall``, which CrewAI uses to summarize an
overflowing context) becomes the step ``<frame>model:<n>``, the n-th model call of its frame
(a crew task, a tool step's body, the root). The request is fingerprinted (model,
conversation, tools offered, output type); the response is journaled with its class (see
``_codec``), and the tokens it used are counted again when it replays.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from crewai.utilities.agent_utils import extract_tool_call_info

from stalwart.actors import StepSpec, Usage
from stalwart.adapters.crewai._codec import encode, model_fp
from stalwart.adapters.crewai._threads import OPAQUE, Frame, _frame, arg, current_run, marked

if TYPE_CHECKING:
    import contextvars
    from collections.abc import Callable

    from crewai.llms.base_llm import BaseLLM

    from stalwart.adapters.crewai._threads import CrewRun

# BaseLLM.call(messages, tools, callbacks, available_functions, from_task, from_agent,
# response_model): positions of the arguments after ``messages``.
_TOOLS, _FROM_TASK, _RESPONSE_MODEL = 0, 3, 5


_USAGE_FIELDS = (
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "successful_requests",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "cache_creation_tokens",
)


def _usage_counters(llm: BaseLLM) -> dict[str, int]:
    counters = getattr(llm, "_token_usage", None)
    return dict(counters) if isinstance(counters, dict) else {}


def _usage_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in _USAGE_FIELDS}
    return {k: v for k, v in delta.items() if v}


def replay_usage(llm: BaseLLM, delta: dict[str, int]) -> None:
    """Count a replayed call's tokens again, so the crew's usage metrics stay whole."""
    counters = getattr(llm, "_token_usage", None)
    if isinstance(counters, dict):
        for k, v in delta.items():
            counters[k] = counters.get(k, 0) + v


def _step_usage(model: str, recorded: Any) -> Usage | None:
    usage = recorded.get("usage") if isinstance(recorded, dict) else None
    if not usage:
        return None
    return Usage(
        model=model,
        input_tokens=int(usage.get("prompt_tokens", 0)),
        output_tokens=int(usage.get("completion_tokens", 0)),
    )


class _ModelCall:
    """One model call made durable: its step, its body (sync or async), its result."""

    def __init__(
        self,
        run: CrewRun,
        frame: Frame,
        llm: BaseLLM,
        messages: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.run, self.llm, self.frame = run, llm, frame
        self.messages, self.args, self.kwargs = messages, args, kwargs
        # Model calls of one frame are sequential, and concurrent ones (CrewAI summarizing
        # chunks with asyncio.gather) take their numbers in the order they are started.
        self.n = frame.next("model")
        self.key = f"{frame.path}model:{self.n}"
        model = str(llm.model)
        self.response_model = arg(args, kwargs, _RESPONSE_MODEL, "response_model")
        tools = arg(args, kwargs, _TOOLS, "tools")
        self.spec = StepSpec(
            key=self.key,
            kind="model",
            name=model,
            fp=model_fp(model, messages, tools, self.response_model),
            usage=functools.partial(_step_usage, model),
        )
        self.ran = False
        self._before: dict[str, int] = {}

    def _start(self) -> contextvars.Token[Frame | None]:
        self.ran = True
        self._before = _usage_counters(self.llm)
        return _frame.set(OPAQUE)  # what the model does inside (tools it runs) is this step

    def _recorded(self, response: Any) -> dict[str, Any]:
        # The response, never the request: replay rebuilds the request (O(N) journal).
        recorded: dict[str, Any] = {"response": encode(response)}
        if usage := _usage_delta(self._before, _usage_counters(self.llm)):
            recorded["usage"] = usage
        return recorded

    def body(self, call: Callable[..., Any]) -> dict[str, Any]:
        token = self._start()
        try:
            response = call(self.llm, self.messages, *self.args, **self.kwargs)
        finally:
            _frame.reset(token)
        return self._recorded(response)

    async def abody(self, acall: Callable[..., Any]) -> dict[str, Any]:
        token = self._start()
        try:
            response = await acall(self.llm, self.messages, *self.args, **self.kwargs)
        finally:
            _frame.reset(token)
        return self._recorded(response)

    def result(self, recorded: dict[str, Any]) -> Any:
        usage = recorded.get("usage")
        if usage:
            if not self.ran:
                replay_usage(self.llm, usage)
            slot = self.run.llm_slot(self.llm)
            if slot is not None:  # a model CrewAI counts: tool steps around it journal it
                self.frame.note_usage(slot, usage)
        response = self.run.decode(recorded["response"], self.response_model)
        if isinstance(response, str):
            self.frame.answer = response
        if isinstance(response, list):
            for i, tool_call in enumerate(response):
                info = extract_tool_call_info(tool_call)
                if info is not None and info[0] == f"call_{id(tool_call)}":
                    self.run.alias(tool_call, f"model{self.n}.{i}")
        return response


def _model_call(
    llm: BaseLLM, messages: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _ModelCall | None:
    """The durable form of this call, or None when it runs as it is (outside a run, nested)."""
    run = current_run()
    if run is None:
        return None
    frame = run.frame(arg(args, kwargs, _FROM_TASK, "from_task"))
    return None if frame.opaque else _ModelCall(run, frame, llm, messages, args, kwargs)


def _durable_call(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def durable_call(self: BaseLLM, messages: Any, *args: Any, **kwargs: Any) -> Any:
        model_call = _model_call(self, messages, args, kwargs)
        if model_call is None:
            return call(self, messages, *args, **kwargs)
        return model_call.result(
            model_call.run.call(model_call.spec, lambda: model_call.body(call))
        )

    return marked(durable_call)


def _durable_acall(acall: Callable[..., Any]) -> Callable[..., Any]:
    # CrewAI calls acall from its own event loops even in a sync kickoff (it summarizes an
    # overflowing context with concurrent acalls).
    @functools.wraps(acall)
    async def durable_acall(self: BaseLLM, messages: Any, *args: Any, **kwargs: Any) -> Any:
        model_call = _model_call(self, messages, args, kwargs)
        if model_call is None:
            return await acall(self, messages, *args, **kwargs)
        recorded = await model_call.run.acall(model_call.spec, lambda: model_call.abody(acall))
        return model_call.result(recorded)

    return marked(durable_acall)
