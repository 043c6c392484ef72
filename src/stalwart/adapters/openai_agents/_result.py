"""The SDK's ``RunResult`` across the process boundary: sent as data, rebuilt by the caller.

The worker sends the run's final output as plain data, the SDK's own serialization of the
run (``RunResult.to_state().to_json()``: input, generated items, model responses, usage,
guardrail results, last agent) and the final context's state. The caller rebuilds the
``RunState`` with the SDK's ``RunState.from_json`` on its own agent graph (agents are found
by name) and makes the ``RunResult`` the SDK would have returned from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any, TypeVar

from agents.agent_output import AgentOutputSchemaBase
from agents.exceptions import AgentsException, MaxTurnsExceeded, ModelBehaviorError, UserError
from agents.result import RunResult
from agents.run_state import RunState
from pydantic import TypeAdapter

from stalwart.adapters.openai_agents._codec import plain_output
from stalwart.adapters.openai_agents._context import NotPlainData, dump_context, load_context
from stalwart.errors import RunFailed

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from agents import Agent
    from agents.result import RunResultStreaming

T = TypeVar("T")


def result_data(result: RunResult | RunResultStreaming) -> dict[str, Any]:
    """What a finished run returns: final output, the SDK's run state, the context's state."""
    context = result.context_wrapper.context
    try:
        context_data = dump_context(context)
    except NotPlainData:
        context_data = None  # stays on the worker (a factory's dependencies)
    # The context travels on its own (with this adapter's rules); the SDK's copy of it in
    # the state is emptied, so a context that is not plain data cannot break the encoding.
    state = result.to_state().to_json(context_serializer=lambda _: {})
    if isinstance(state.get("context"), dict):
        state["context"]["context"] = {}
    return {
        "final_output": plain_output(result.final_output),
        "state": state,
        "context": context_data,
    }


def rebuild_result(agent: Agent[Any], data: dict[str, Any], context_type: type | None) -> Any:
    """The ``RunResult`` of a run whose :func:`result_data` is ``data``."""
    state = _resolve(lambda: RunState.from_json(agent, data["state"], context_override={}))
    wrapper = state._context
    assert wrapper is not None  # from_json always builds one
    wrapper.context = load_context(context_type, data.get("context"))
    last = state._current_agent or agent
    return RunResult(
        input=state._original_input,
        new_items=_new_items(state),
        raw_responses=list(state._model_responses),
        final_output=_final_output(last, data.get("final_output")),
        input_guardrail_results=list(state._input_guardrail_results),
        output_guardrail_results=list(state._output_guardrail_results),
        tool_input_guardrail_results=list(state._tool_input_guardrail_results),
        tool_output_guardrail_results=list(state._tool_output_guardrail_results),
        context_wrapper=wrapper,
        _last_agent=last,
        max_turns=state._max_turns,
    )


def _new_items(state: RunState[Any]) -> list[Any]:
    """The result's ``new_items``: the state's session items when it has them.

    The state's generated items leave out tool approval items, which a plain result of a run
    resumed after approvals keeps in ``new_items``; its session items are that list.
    """
    session = list(getattr(state, "_session_items", None) or [])
    generated = list(state._generated_items)
    return session if len(session) >= len(generated) else generated


def _final_output(agent: Agent[Any], value: Any) -> Any:
    """The final output as the last agent's ``output_type`` (plain data when it has none)."""
    output_type = agent.output_type
    if value is None or output_type is None or output_type is str:
        return value
    if isinstance(output_type, AgentOutputSchemaBase):  # a custom schema: its plain data
        return value
    try:
        return TypeAdapter(output_type).validate_python(value)
    except Exception:  # an output type pydantic cannot rebuild: the plain data, documented
        return value


def _resolve(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run an SDK coroutine from synchronous code (``decode_result`` is synchronous).

    ``RunState.from_json`` awaits nothing for a finished run's state, so it is driven to
    its end in place; if it ever does wait, it is run on an event loop of its own in a
    helper thread (this code may itself be running inside an event loop).
    """
    coro = make()
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, make()).result()


# -- the SDK's errors --------------------------------------------------------------------

_SDK_ERRORS: dict[str, type[AgentsException]] = {
    cls.__name__: cls for cls in (UserError, ModelBehaviorError, MaxTurnsExceeded)
}
_RAISED: dict[str, type[Exception]] = {}


def sdk_error(failed: RunFailed) -> Exception:
    """The SDK's own exception for a run that failed with one (else ``failed`` itself).

    A plain ``Runner.run`` raises ``UserError``, ``ModelBehaviorError`` or
    ``MaxTurnsExceeded`` with a message; a durable run that failed with one of them raises an
    exception that is both that SDK type (same message) and a :class:`~stalwart.RunFailed`
    (with the run id), so code written for either catches it.
    """
    base = _SDK_ERRORS.get(failed.error_type)
    if base is None:
        return failed
    cls = _RAISED.get(failed.error_type)
    if cls is None:

        def __init__(self: Any, source: RunFailed) -> None:
            Exception.__init__(self, source.message)
            self.message = source.message
            self.run_id = source.run_id
            self.error_type = source.error_type
            self.run_data = None

        def __str__(self: Any) -> str:
            return str(self.message)

        cls = type(base.__name__, (base, RunFailed), {"__init__": __init__, "__str__": __str__})
        cls.__module__ = __name__
        _RAISED[failed.error_type] = cls
    return cls(failed)
