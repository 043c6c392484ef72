"""Tool calls as durable steps: ``BaseTool._run``, wrapped on CrewAI's classes.

Every ``BaseTool`` subclass's own ``_run`` becomes the step ``<frame>tool:<id>``
(:func:`stalwart.kit.tool_key`); ``Tool.run`` (the ``@tool`` decorator) is routed through
``_run`` inside a run. The id is the call id of the native tool call CrewAI's executor is
running (it comes from the journaled model response), else the tool's name and a digest of
its arguments (text tool calling). The body of a tool step is a frame ``<tool key>/``: a
delegated coworker's model and tool calls are steps inside it and replay with it. A failed
tool is :class:`~stalwart.kit.ToolCallFailed`, which CrewAI shows the model as the tool's
error; an error that ends the run passes CrewAI's handlers (see ``_threads._Stop``).
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
from crewai.tools.base_tool import BaseTool, Tool
from crewai.tools.tool_failure import (
    ToolFailureRecord,
    active_tool_failures,
    tool_failure_collector,
)
from crewai.utilities.agent_utils import extract_tool_call_info
from crewai.utilities.string_utils import sanitize_tool_name

from stalwart.actors import StepSpec
from stalwart.adapters.crewai._codec import encode, tool_args, tool_fp
from stalwart.adapters.crewai._model import replay_usage
from stalwart.adapters.crewai._threads import (
    Frame,
    _frame,
    _native_call,
    _Stop,
    current_run,
    marked,
)
from stalwart.errors import StepFailed
from stalwart.kit import ToolCallFailed, failure_outcome, tool_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from crewai.agents.agent_executor import AgentExecutor

    from stalwart.adapters.crewai._threads import CrewRun

_EVENT_RESULT_LIMIT = 8192


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
    # Text tool calling gives no id: the call is known by its tool and arguments.
    call_id = native[0] if native is not None and native[1] == sanitize_tool_name(name) else None
    key = frame.key(tool_key(call_id, sanitize_tool_name(name), plain_args))
    spec = StepSpec(key=key, kind="tool", name=name, fp=tool_fp(name, plain_args))
    head = {"tool": name, "call_id": native[0] if native else None}
    positional, named = plain_args
    shown_args = {"args": positional, **named} if positional else named

    inner = Frame(f"{key}/", owner=tool, parent=frame, usage=[])
    ran = False

    def body() -> Any:
        nonlocal ran
        ran = True
        run.emit("tool.call", {**head, "args": shown_args}, key)
        # Calls the tool makes (a delegated coworker's model and tool calls) are steps
        # under this one, keyed by their place in it.
        f_token = _frame.set(inner)
        n_token = _native_call.set(None)
        outer = active_tool_failures()
        try:
            with tool_failure_collector() as failures:
                value = run_tool(tool, *args, **kwargs)
                if inspect.iscoroutine(value):
                    value = _run_coroutine(value)
        finally:
            if outer is not None:  # where CrewAI put them: the task's own collector
                outer.extend(failures)
            _native_call.reset(n_token)
            _frame.reset(f_token)
        try:
            recorded = encode(value)
        except TypeError:
            # Neither plain data nor a pydantic model (a dataclass, a datetime): journaled as
            # the text CrewAI shows the model for it (``str(value)``), live and replayed.
            recorded = str(value)
        size = len(msgspec.json.encode(recorded))
        shown = {"result": recorded} if size <= _EVENT_RESULT_LIMIT else {"result_bytes": size}
        run.emit("tool.result", {**head, **shown}, key)
        return _envelope(recorded, inner, failures)

    try:
        recorded = run.call(spec, body)
    except StepFailed as exc:
        if failure_outcome(exc) == "stop":
            # An at-most-once tool that may have run: CrewAI would show the model an error
            # and let it call the tool again under a new id. The run stops instead.
            raise _Stop(run.fail(exc)) from None
        raise tool_error(exc) from exc
    value, usage, failures = _unwrap(recorded)
    if not ran:
        _replay_nested(run, frame, usage, failures)
    return run.decode(value)


# A tool step whose body ran model calls (a delegation) journals what CrewAI keeps of them
# outside the tool's return value: the tokens each model used, the tool failures recorded
# for the task. Replayed whole, the step brings them back; nothing inside it runs again.
_ENVELOPE = "__crewai_tool__"


def _envelope(value: Any, inner: Frame, failures: list[ToolFailureRecord]) -> Any:
    if not inner.usage and not failures:
        return value
    return {
        _ENVELOPE: value,
        "usage": [[slot, delta] for slot, delta in inner.usage or []],
        "failures": [f.model_dump(mode="json") for f in failures],
    }


def _unwrap(recorded: Any) -> tuple[Any, list[Any], list[Any]]:
    if isinstance(recorded, dict) and _ENVELOPE in recorded:
        return recorded[_ENVELOPE], recorded.get("usage") or [], recorded.get("failures") or []
    return recorded, [], []


def _replay_nested(run: CrewRun, frame: Frame, usage: list[Any], failures: list[Any]) -> None:
    for slot, delta in usage:
        llm = run.llm_at(int(slot))
        if llm is not None:
            replay_usage(llm, delta)
            frame.note_usage(int(slot), delta)
    records = active_tool_failures()
    if records is not None:
        records.extend(ToolFailureRecord.model_validate(f) for f in failures)


_ERROR_TYPES: dict[str, type[ToolCallFailed]] = {}
_ERROR_TYPES_LOCK = threading.Lock()


def tool_error(failed: StepFailed) -> ToolCallFailed:
    """The error CrewAI gets for a failed tool step, live or replayed.

    A :class:`~stalwart.kit.ToolCallFailed` whose class is named as the tool's own
    exception was (``ConnectionError``): CrewAI shows the model ``str(error)`` and records
    the class name as the failure's ``code`` (``TaskOutput.tool_failures``), so both read
    as they would without Stalwart.
    """
    name = failed.error_type if failed.error_type.isidentifier() else ToolCallFailed.__name__
    with _ERROR_TYPES_LOCK:
        cls = _ERROR_TYPES.get(name)
        if cls is None:
            cls = type(name, (ToolCallFailed,), {"__module__": __name__, "__qualname__": name})
            _ERROR_TYPES[name] = cls
    return cls(failed.step_key, failed.error_type, failed.message)


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

    return marked(durable_run)


def _routed_tool_run(tool_run: Callable[..., Any]) -> Callable[..., Any]:
    # Tool.run calls its function directly; inside a run it goes through BaseTool.run, which
    # validates, counts usage and calls _run (the durable step) exactly as Tool.run would.
    @functools.wraps(tool_run)
    def run(self: Tool[Any, Any], *args: Any, **kwargs: Any) -> Any:
        if current_run() is None:
            return tool_run(self, *args, **kwargs)
        return BaseTool.run(self, *args, **kwargs)

    return marked(run)


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

    return marked(execute_one)
