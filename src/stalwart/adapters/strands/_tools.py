"""Tool calls as durable steps: a Strands ``ExecuteToolStage`` middleware.

A Wrap handler. In a durable run each tool call becomes the step ``<prefix>tool:<toolUseId>``
(``#2``... when a hook retries the same call); live, the handler calls ``next_fn`` inside the
step and forwards the tool's events; on replay it yields the journaled ``ToolResultEvent``.
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any

from strands.interrupt import InterruptException
from strands.middleware import ToolResultEvent
from strands.tools.structured_output.structured_output_tool import StructuredOutputTool

from stalwart.actors import StepSpec, options_of
from stalwart.adapters.strands._codec import dump_tool_result, load_tool_result
from stalwart.adapters.strands._model import SCOPE
from stalwart.errors import ConfigurationError
from stalwart.kit import DurableScope, ToolCallFailed, canonical_fp, stream_step, tool_key

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
        if (
            run is None
            or isinstance(context.tool, StructuredOutputTool)
            or (local is not None and local(context))
        ):
            async for event in next_fn(context):
                yield event
            return
        tool_use = context.tool_use
        name = str(tool_use["name"])
        key = run.next_named(prefix + tool_key(str(tool_use["toolUseId"]), name, None))
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
        yield load_tool_result(out[0], key)

    return durable_tool


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
    def refuse() -> ConfigurationError:
        error = ConfigurationError(
            f"step {key!r}: tool {context.tool_use['name']!r} raised a Strands interrupt; "
            "interrupts are not supported in durable runs yet"
        )
        run.fail(error)
        return error

    async def body(forward: Callable[[Any], None]) -> dict[str, Any]:
        result: ToolResultEvent | None = None
        try:
            async for event in next_fn(context):
                if isinstance(event, ToolResultEvent):
                    result = event
                    continue
                if isinstance(event, dict) and "tool_interrupt_event" in event:
                    raise refuse()
                forward(event)
        except InterruptException as exc:
            raise refuse() from exc
        if result is None:
            raise RuntimeError(f"step {key!r}: the tool call ended without a ToolResultEvent")
        return dump_tool_result(result)

    return body
