"""The interception points: ``BaseLLM.call`` and ``BaseTool._run``, made durable steps.

CrewAI creates models and tools on its own during a run (a hierarchical crew's manager, the
delegation tools, copies of agents), so wrapping instances would miss calls. The wrappers go
on the classes instead, once per process, and do nothing outside a durable run (no
:func:`~stalwart.adapters.crewai._scope.current_run` in the calling context): a crew kicked
off directly behaves exactly as before.

- Every ``BaseLLM`` subclass's own ``call`` (and ``acall``, which CrewAI uses to summarize an
  overflowing context) becomes a ``model`` step ``<frame>model:<n>``.
- Every ``BaseTool`` subclass's own ``_run`` becomes a ``tool`` step ``<frame>tool:<id>``;
  ``Tool.run`` (the ``@tool`` decorator) is routed through ``_run`` inside a run. The id is
  the call id of the native tool call CrewAI's executor is running (it comes from the
  journaled model response), else ``<name>:<digest of the arguments>`` (text tool calling).
- The body of a tool step is a frame ``<tool key>/``: a delegated coworker's model and tool
  calls are steps inside it and replay with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import threading
from typing import TYPE_CHECKING, Any

import msgspec
from crewai.agents.agent_executor import AgentExecutor
from crewai.llms.base_llm import BaseLLM
from crewai.tools.base_tool import BaseTool, Tool
from crewai.utilities.agent_utils import extract_tool_call_info
from crewai.utilities.string_utils import sanitize_tool_name

from stalwart.actors import StepSpec, Usage
from stalwart.adapters.crewai._codec import (
    canonical_json,
    encode,
    model_fp,
    tool_args,
    tool_fp,
)
from stalwart.adapters.crewai._scope import (
    OPAQUE,
    Frame,
    _frame,
    _native_call,
    _Stop,
    current_run,
)
from stalwart.errors import StepFailed
from stalwart.kit import text_digest

if TYPE_CHECKING:
    from collections.abc import Callable

    from stalwart.adapters.crewai._scope import CrewRun

_MARK = "__stalwart_crewai__"
_EVENT_RESULT_LIMIT = 8192
_install_lock = threading.Lock()

# BaseLLM.call(messages, tools, callbacks, available_functions, from_task, from_agent,
# response_model): positions of the arguments after ``messages``.
_TOOLS, _FROM_TASK, _RESPONSE_MODEL = 0, 3, 5


class ToolCallFailed(StepFailed):
    """A tool step failed, live or replayed from the journal.

    It reads as the tool's own error message, which is what CrewAI shows the model
    (``Error executing tool: <message>``), so the conversation is the same as without
    Stalwart, and the same on every replay.
    """

    def __str__(self) -> str:
        return self.message


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _marked(fn: Callable[..., Any]) -> Callable[..., Any]:
    setattr(fn, _MARK, True)
    return fn


# -- model calls ----------------------------------------------------------------------------

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


def _replay_usage(llm: BaseLLM, delta: dict[str, int]) -> None:
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
        self.run, self.llm = run, llm
        self.messages, self.args, self.kwargs = messages, args, kwargs
        # Model calls of one frame are sequential, and concurrent ones (CrewAI summarizing
        # chunks with asyncio.gather) take their numbers in the order they are started.
        self.n = frame.next("model")
        self.key = f"{frame.path}model:{self.n}"
        model = str(llm.model)
        self.response_model = _arg(args, kwargs, _RESPONSE_MODEL, "response_model")
        tools = _arg(args, kwargs, _TOOLS, "tools")
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
        if not self.ran and recorded.get("usage"):
            _replay_usage(self.llm, recorded["usage"])
        response = self.run.decode(recorded["response"], self.response_model)
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
    frame = run.frame(_arg(args, kwargs, _FROM_TASK, "from_task"))
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

    return _marked(durable_call)


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

    return _marked(durable_acall)


# -- tool calls ----------------------------------------------------------------------------


def _run_coroutine(value: Any) -> Any:
    """Await a coroutine an async tool returned, as ``BaseTool.run`` would."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(value)
    # This thread already runs a loop (CrewAI's): finish the coroutine on a thread of its own.
    with concurrent.futures.ThreadPoolExecutor(1, "stalwart-crewai-coroutine") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run, value).result()


def _tool_step(
    run: CrewRun,
    frame: Frame,
    tool: BaseTool,
    run_tool: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    name = str(tool.name)
    plain_args = tool_args(args, kwargs)
    native = _native_call.get()
    if native is not None and native[1] == sanitize_tool_name(name):
        ident = native[0].replace("/", "_")
    else:
        # Text tool calling gives no id: the call is known by its tool and arguments.
        ident = f"{sanitize_tool_name(name)}:{text_digest(canonical_json(plain_args))}"
    key = frame.key(f"tool:{ident}")
    spec = StepSpec(key=key, kind="tool", name=name, fp=tool_fp(name, plain_args))
    head = {"tool": name, "call_id": native[0] if native else None}
    positional, named = plain_args
    shown_args = {"args": positional, **named} if positional else named

    def body() -> Any:
        run.emit("tool.call", {**head, "args": shown_args}, key)
        # Calls the tool makes (a delegated coworker's model and tool calls) are steps
        # under this one, keyed by their place in it.
        f_token = _frame.set(Frame(f"{key}/", owner=tool))
        n_token = _native_call.set(None)
        try:
            value = run_tool(tool, *args, **kwargs)
            if inspect.iscoroutine(value):
                value = _run_coroutine(value)
        finally:
            _native_call.reset(n_token)
            _frame.reset(f_token)
        recorded = encode(value)
        size = len(msgspec.json.encode(recorded))
        shown = {"result": recorded} if size <= _EVENT_RESULT_LIMIT else {"result_bytes": size}
        run.emit("tool.result", {**head, **shown}, key)
        return recorded

    try:
        return run.decode(run.call(spec, body))
    except StepFailed as exc:
        if exc.error_type == "ToolOutcomeUnknown":
            # An at-most-once tool that may have run: CrewAI would show the model an error
            # and let it call the tool again under a new id. The run stops instead.
            raise _Stop(run.fail(exc)) from None
        raise ToolCallFailed(exc.step_key, exc.error_type, exc.message) from exc


def _durable_run(run_tool: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run_tool)
    def durable_run(self: BaseTool, *args: Any, **kwargs: Any) -> Any:
        run = current_run()
        if run is None:
            return run_tool(self, *args, **kwargs)
        frame = run.frame()
        if frame.opaque or frame.owner is self:  # inside a model step, or super()._run
            return run_tool(self, *args, **kwargs)
        return _tool_step(run, frame, self, run_tool, args, kwargs)

    return _marked(durable_run)


def _routed_tool_run(tool_run: Callable[..., Any]) -> Callable[..., Any]:
    # Tool.run calls its function directly; inside a run it goes through BaseTool.run, which
    # validates, counts usage and calls _run (the durable step) exactly as Tool.run would.
    @functools.wraps(tool_run)
    def run(self: Tool[Any, Any], *args: Any, **kwargs: Any) -> Any:
        if current_run() is None:
            return tool_run(self, *args, **kwargs)
        return BaseTool.run(self, *args, **kwargs)

    return _marked(run)


def _native_tool_call(execute: Callable[..., Any]) -> Callable[..., Any]:
    # CrewAI's executor knows the call id of each native tool call it runs; the tool does not.
    @functools.wraps(execute)
    def execute_one(self: AgentExecutor, tool_call: Any) -> Any:
        run = current_run()
        info = extract_tool_call_info(tool_call) if run is not None else None
        if run is None or info is None:
            return execute(self, tool_call)
        call_id, name, _ = info
        if call_id == f"call_{id(tool_call)}":
            call_id = run.alias_of(tool_call) or call_id
        token = _native_call.set((str(call_id), name))
        try:
            return execute(self, tool_call)
        finally:
            _native_call.reset(token)

    return _marked(execute_one)


# -- installation ----------------------------------------------------------------------------


def _subclasses(cls: type) -> list[type]:
    seen: list[type] = []
    stack = [cls]
    while stack:
        subs: list[type] = stack.pop().__subclasses__()
        for sub in subs:
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen


def _wrap(
    cls: type, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> None:
    own = cls.__dict__.get(name)
    if (
        own is None
        or not callable(own)
        or getattr(own, _MARK, False)
        or getattr(own, "__isabstractmethod__", False)
    ):
        return
    setattr(cls, name, wrapper(own))


def _wrap_model(cls: type) -> None:
    _wrap(cls, "call", _durable_call)
    _wrap(cls, "acall", _durable_acall)


def _wrap_tool(cls: type) -> None:
    _wrap(cls, "_run", _durable_run)


def _chain_init_subclass(base: type, wrap: Callable[[type], None]) -> None:
    """Wrap the subclasses of ``base`` created from now on too, as they are created."""
    original = base.__dict__["__init_subclass__"]
    if getattr(original, _MARK, False):
        return

    def init_subclass(cls: type, /, **kwargs: Any) -> None:
        original.__func__(cls, **kwargs)  # CrewAI's own: registries, its retry wrapper
        wrap(cls)

    setattr(init_subclass, _MARK, True)
    setattr(base, "__init_subclass__", classmethod(init_subclass))  # noqa: B010


_installed = False


def install() -> None:
    """Put the durable wrappers on CrewAI's model and tool classes, once per process.

    Classes already imported are wrapped now, later ones as they are defined (CrewAI
    imports provider classes lazily, a hierarchical crew's manager model at kickoff).
    Runners call it when they are created; calling it again does nothing.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        _wrap(AgentExecutor, "_execute_single_native_tool_call", _native_tool_call)
        _wrap(Tool, "run", _routed_tool_run)
        _chain_init_subclass(BaseLLM, _wrap_model)
        _chain_init_subclass(BaseTool, _wrap_tool)
        for cls in _subclasses(BaseLLM):
            _wrap_model(cls)
        for cls in _subclasses(BaseTool):
            _wrap_tool(cls)
        _installed = True
