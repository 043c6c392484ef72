"""Tool calls as durable steps: a Strands ``ExecuteToolStage`` middleware.

A Wrap handler. In a durable run each tool call becomes the step ``<prefix>tool:<toolUseId>``
(``#2``... when a hook retries the same call); live, the handler calls ``next_fn`` inside the
step and forwards the tool's events; on replay it yields the journaled ``ToolResultEvent``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from typing import TYPE_CHECKING, Any

from strands import Agent
from strands.interrupt import InterruptException
from strands.middleware import ToolResultEvent
from strands.tools.structured_output.structured_output_tool import StructuredOutputTool

# Not exported publicly; the tool executor itself recognises a tool's interrupt by this class.
from strands.types._events import ToolInterruptEvent

from stalwart.actors import StepSpec, current_step, options_of
from stalwart.adapters.strands._codec import (
    dump_interrupts,
    dump_tool_result,
    is_interrupt,
    load_interrupts,
    load_tool_result,
)
from stalwart.adapters.strands._model import POLICIES, SCOPE
from stalwart.kit import DurableScope, ToolCallFailed, canonical_fp, stream_step, tool_key
from stalwart.policies import classify

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from strands.middleware import (
        ExecuteToolContext,
        MiddlewareHandler,
        MiddlewareNext,
        TypedEvent,
    )

    from stalwart.actors import StepOptions

    ToolNext = MiddlewareNext[ExecuteToolContext, TypedEvent]

ToolError = ToolCallFailed
"""The exception behind a journaled tool error result, as Strands hooks receive it: the one
tool-failure error of every adapter, :class:`stalwart.kit.ToolCallFailed` (this name is kept
for code that imports it from ``stalwart.adapters.strands``)."""


MARK = "_stalwart_scope"
"""The attribute an instrumented agent carries (the key prefix it was instrumented with)."""


def agent_of_tool(tool: object) -> Agent | None:
    """The agent behind an agent-as-tool (``agent.as_tool()``, or an agent in ``tools=``)."""
    inner = getattr(tool, "agent", None) if getattr(tool, "tool_type", None) == "agent" else None
    return inner if isinstance(inner, Agent) else None


def tool_middleware(
    prefix: str, local: Callable[[ExecuteToolContext], bool] | None = None
) -> MiddlewareHandler[ExecuteToolContext, TypedEvent]:
    """An ``ExecuteToolStage`` handler: each tool call is the step ``<prefix>tool:<toolUseId>``.

    Calls for which ``local(context)`` is true are not journaled and run again on every
    replay: tools whose only effect is on in-process state that replay must rebuild (a
    swarm's ``handoff_to_agent`` sets who runs next). Strands' structured output tool, which
    hands the validated output to the agent loop, is always local.
    """

    async def durable_tool(
        context: ExecuteToolContext, next_fn: ToolNext
    ) -> AsyncGenerator[TypedEvent, None]:
        run = SCOPE.active()
        inner = agent_of_tool(context.tool)
        nested = inner is not None and getattr(inner, MARK, None) is not None
        if run is None or (
            not nested
            and (
                isinstance(context.tool, StructuredOutputTool)
                or (local is not None and local(context))
            )
        ):
            async for event in next_fn(context):
                yield event
            return
        tool_use = context.tool_use
        name = str(tool_use["name"])
        key = run.next_named(prefix + tool_key(str(tool_use["toolUseId"]), name, None))
        if nested:
            # No step of its own: the nested agent's calls are journaled one by one under
            # this call's key (local_tools or not), so a crash inside it resumes inside it.
            async for event in _nested(run, key, context, next_fn):
                yield event
            return
        opts = options_of(getattr(context.tool, "_tool_func", context.tool))
        spec = StepSpec(
            key=key,
            kind="tool",
            name=name,
            fp=canonical_fp(name, tool_use.get("input")),
            options=opts,
            reconcile=_reconciler(run, key, tool_use, opts),
        )
        out: list[Any] = []
        async for event in stream_step(
            run.step, spec, _tool_body(run, spec.key, context, next_fn), out
        ):
            yield event
        if is_interrupt(out[0]):
            interrupts = load_interrupts(out[0])
            if out[0].get("raised"):
                raise InterruptException(interrupts[0])
            yield ToolInterruptEvent(tool_use, interrupts)
            return
        yield load_tool_result(out[0], key)

    return durable_tool


async def _nested(
    run: DurableScope, key: str, context: ExecuteToolContext, next_fn: ToolNext
) -> AsyncGenerator[TypedEvent, None]:
    token = SCOPE.enter(run.child(key[len(run.prefix) :]))
    try:
        async with contextlib.aclosing(next_fn(context)) as events:
            async for event in events:
                yield event
    finally:
        with contextlib.suppress(ValueError):  # closed from another context: nothing to undo
            SCOPE.leave(token)


def _reconciler(
    run: DurableScope, key: str, tool_use: Any, opts: StepOptions | None
) -> Callable[[], Awaitable[Any]] | None:
    """For an at-most-once tool with a ``reconcile`` hook: its answer as a tool step result.

    ``durable(reconcile=fn)`` on a tool's function: after a crash in the middle of the call,
    ``fn(idempotency_key, **tool_input)`` says what the call did; its return value becomes
    the successful result the model sees (an exception, the error result).
    """
    if opts is None or opts.reconcile is None:
        return None
    hook = opts.reconcile
    use_id = str(tool_use["toolUseId"])
    arguments = tool_use.get("input") or {}

    async def reconcile() -> dict[str, Any]:
        value = hook(f"{run.ctx.run_id}:{key}", **arguments)
        if inspect.isawaitable(value):
            value = await value
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        return {
            "result": {"toolUseId": use_id, "status": "success", "content": [{"text": text}]},
            "error": None,
        }

    return reconcile


def _tool_body(run: DurableScope, key: str, context: ExecuteToolContext, next_fn: ToolNext) -> Any:
    async def body(forward: Callable[[Any], None]) -> dict[str, Any]:
        result: ToolResultEvent | None = None
        try:
            async with contextlib.aclosing(next_fn(context)) as events:
                async for event in events:
                    if isinstance(event, ToolResultEvent):
                        result = event
                        continue
                    if isinstance(event, ToolInterruptEvent):
                        # The tool asked a human (tool_context.interrupt): journaled, so a
                        # replay stops at the same point without running the tool again.
                        return dump_interrupts(event.interrupts, raised=False)
                    forward(event)
        except InterruptException as exc:  # a middleware registered after ours asked
            return dump_interrupts([exc.interrupt], raised=True)
        if result is None:
            raise RuntimeError(f"step {key!r}: the tool call ended without a ToolResultEvent")
        _raise_to_retry(context, result)
        return dump_tool_result(result)

    return body


def _raise_to_retry(context: ExecuteToolContext, result: ToolResultEvent) -> None:
    """Raise the tool's exception when the step's retry policy would retry it.

    Strands turns a tool's exception into an error result inside the chain, so the step
    would never see it fail. A tool whose policy allows another attempt (``@durable(retry=
    ...)``, ``retry_by_name``, ``Policies(retry={"tool": ...})``) gets it raised to the
    step, which retries; the last attempt journals the error result the model then sees,
    exactly as Strands made it. Without a retry policy (the default) nothing is raised.
    """
    exc = result.exception
    info = current_step()
    policies = POLICIES.get()
    if exc is None or info is None or policies is None or isinstance(exc, ToolCallFailed):
        return
    name = str(context.tool_use["name"])
    opts = options_of(getattr(context.tool, "_tool_func", context.tool))
    once = (opts is not None and opts.at_most_once) or name in policies.at_most_once
    policy = policies.retry_for("tool", name, opts, at_most_once=once)
    retryable, _ = classify(exc, policy)
    if retryable and info.attempt < policy.max_attempts:
        raise exc
