"""The operation backend: each pydantic-ai durable operation becomes one Stalwart step.

PydanticAI binds every operation it wants durable (model request, tool call, argument
validation, discovery, capability operation) through the backend once, and calls the bound
operation with typed parameters. Inside a run the call becomes ``ctx.call(spec, body)``:
the step key and fingerprint come from those parameters, ``body`` runs the operation's own
handler and encodes its result with the operation's codec (JSON-mode data, which msgpack
journals), and the result is decoded with the same codec, live and on replay alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from pydantic_ai.durable_exec import (
    BoundDurableOperation,
    CapabilityOperationId,
    DurableOperation,
    DurableOperationBackend,
    EventStreamHandlerId,
    ModelCancelSuspendedResponseId,
    ModelCompactMessagesId,
    ModelCompactMessagesParams,
    ModelRequestId,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
    durable_unit_scope,
)
from pydantic_core import to_jsonable_python

from stalwart.actors import StepSpec
from stalwart.adapters.pydantic_ai import _scope
from stalwart.adapters.pydantic_ai._shape import (
    conversation,
    model_usage,
    request_shape,
    response_summary,
    shape_difference,
)
from stalwart.errors import NonDeterminismError, StepFailed
from stalwart.kit import canonical_fp, text_digest

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from stalwart.adapters.pydantic_ai._scope import Frame

_EVENT_RESULT_LIMIT = 8192


@dataclass(frozen=True)
class Step:
    """The step a bound operation call becomes."""

    spec: StepSpec
    model: dict[str, Any] | None = None
    """Model requests: the request shape, journaled with the response."""
    tool_call_id: str | None = None
    """Tool calls: the call's id (its body opens a frame, for agent runs it starts)."""


def _counted(frame: Frame, base: str, kind: str, name: str, fp_parts: list[Any]) -> Step:
    """A step keyed ``<base>:<n>`` by call order: for calls that are sequential in a frame."""
    key = frame.ctx.next_key(f"{base}:{frame.next(base)}")
    return Step(StepSpec(key=key, kind=kind, name=name, fp=canonical_fp(base, fp_parts)))


def plan(operation_id: Any, params: Any, frame: Frame) -> Step | None:
    """The step an operation call becomes in ``frame``; None if it is not journaled."""
    match operation_id:
        case ModelRequestId(model_name=model) | ModelCompactMessagesId(model_name=model):
            context = (
                params.request_context if isinstance(params, ModelCompactMessagesParams) else params
            )
            messages, mrp = context.messages, context.model_request_parameters
            return Step(
                StepSpec(
                    key=frame.ctx.next_key(f"model:{frame.next('model')}"),
                    kind="model",
                    name=model,
                    fp=canonical_fp("pydantic_ai.model", [model, conversation(messages)]),
                    usage=model_usage,
                ),
                model=request_shape(model, mrp, messages),
            )
        case ToolsetCallToolId() | ToolsetValidateToolArgumentsId():
            calling = isinstance(operation_id, ToolsetCallToolId)
            args = to_jsonable_python(params.tool_args, fallback=repr)
            call_id = params.ctx.tool_call_id
            # Without an id from the model, the call is identified by its arguments.
            ident = call_id if call_id is not None else f"{params.name}:{text_digest(repr(args))}"
            return Step(
                StepSpec(
                    key=frame.ctx.next_key(f"{'tool' if calling else 'validate'}:{ident}"),
                    kind="tool" if calling else "validate",
                    name=params.name,
                    fp=canonical_fp("pydantic_ai.tool", [params.name, args]),
                ),
                tool_call_id=ident if calling else None,
            )
        case ToolsetGetToolsId(toolset_id=toolset) | ToolsetGetInstructionsId(toolset_id=toolset):
            what = "tools" if isinstance(operation_id, ToolsetGetToolsId) else "instructions"
            return _counted(frame, f"{what}:{toolset}", "discovery", toolset, [what, toolset])
        case CapabilityOperationId(capability_id=capability, operation=operation):
            args = to_jsonable_python(getattr(params, "arguments", None), fallback=repr)
            name = f"{capability}.{operation}"
            return _counted(frame, f"capability:{name}", "capability", name, [args])
        case ModelCancelSuspendedResponseId(model_name=model):
            return _counted(frame, "model-cancel", "model_cancel", model, [model])
        case EventStreamHandlerId():
            # Events are published live from inside the steps that produce them, so a
            # resumed run does not publish its history again.
            return None
        case _:  # an operation kind newer than this adapter: journaled in call order
            kind = type(operation_id).__name__
            return _counted(frame, f"op:{kind}", "operation", kind, [])


class BoundStep(BoundDurableOperation[Any, Any, Any]):
    """A bound pydantic-ai operation: a Stalwart step when called inside a run."""

    def __init__(self, operation: DurableOperation[Any, Any, Any]) -> None:
        self._operation = operation

    @property
    def operation(self) -> DurableOperation[Any, Any, Any]:
        return self._operation

    async def __call__(self, params: Any, *, config: object | None = None) -> Any:
        op = self._operation
        frame = _scope.current()
        if frame is None or frame.kind == "tool":
            # Outside a run, or inside a tool step's body, whose own result is journaled.
            with durable_unit_scope():
                return await op.handler(params)
        step = plan(op.operation_id, params, frame)
        if step is None:
            return None
        if step.model is not None:
            return await self._model(frame, step, params)
        if step.tool_call_id is not None:
            return await self._tool(frame, step, params)

        async def body() -> Any:
            with durable_unit_scope():
                return op.result_codec.dump(await op.handler(params))

        return op.result_codec.load(await _journaled(frame, step.spec, body))

    async def _model(self, frame: Frame, step: Step, params: Any) -> Any:
        op, shape, key = self._operation, step.model, step.spec.key
        assert shape is not None

        async def body() -> dict[str, Any]:
            with durable_unit_scope():
                response = await op.handler(params)
            payload = op.result_codec.dump(response)
            await frame.ctx.emit("model.response", response_summary(payload), step=key)
            # The response, not the request: replay rebuilds the request (O(N) journal).
            return {"response": payload, "request": shape}

        result = await _journaled(frame, step.spec, body)
        if (diff := shape_difference(result["request"], shape)) is not None:
            raise NonDeterminismError(
                f"run {frame.root.run_id!r}, step {key!r} (model {shape['model']!r}): the agent "
                f"changed since this run started: {diff}. Deploy the change for new runs only, "
                "or fork the run from an earlier step."
            )
        return op.result_codec.load(result["response"])

    async def _tool(self, frame: Frame, step: Step, params: Any) -> Any:
        op, key = self._operation, step.spec.key
        head = {"tool": step.spec.name, "tool_call_id": step.tool_call_id}
        ran = False

        async def body() -> dict[str, Any]:
            nonlocal ran
            ran = True
            args = to_jsonable_python(params.tool_args, fallback=repr)
            await frame.ctx.emit("tool.call", {**head, "args": args}, step=key)
            nested: _scope.Nested = []
            token = _scope.enter(frame.in_tool(key, nested))  # agent runs nest under `key`
            try:
                with durable_unit_scope():
                    payload = op.result_codec.dump(await op.handler(params))
            finally:
                _scope.leave(token)
            size = len(msgspec.json.encode(payload))
            shown = {"result": payload} if size <= _EVENT_RESULT_LIMIT else {"result_bytes": size}
            await frame.ctx.emit("tool.result", {**head, **shown}, step=key)
            return {"result": payload, "nested": nested} if nested else {"result": payload}

        recorded = await _journaled(frame, step.spec, body)
        if not ran and recorded.get("nested"):
            await _replay_nested(frame, recorded["nested"])
        return op.result_codec.load(recorded["result"])


async def _journaled(frame: Frame, spec: StepSpec, body: Callable[[], Awaitable[Any]]) -> Any:
    """``ctx.call``, noting the step in the tool steps this frame is nested in."""
    try:
        result = await frame.ctx.call(spec, body)
    except StepFailed:
        frame.record(spec)  # journaled as a failure: still nested in the tool step
        raise
    frame.record(spec)
    return result


async def _never() -> Any:
    raise AssertionError("a nested step of a journaled tool call is not in the journal")


async def _replay_nested(frame: Frame, nested: list[list[str]]) -> None:
    """Replay the steps journaled inside a tool call that itself replayed from the journal.

    Its body did not run, so neither did the agent runs it started; their steps are asked
    for here, as a full replay would have, so the run's check that every journaled step
    was asked for again holds (and their usage counts against the run's budgets again).
    """
    for key, kind, name, fp in nested:
        spec = StepSpec(key=key, kind=kind, name=name, fp=fp)
        with contextlib.suppress(StepFailed):
            await frame.root.call(spec, _never)
        frame.record(spec)  # a tool call around this one lists them too


class StalwartOperationBackend(DurableOperationBackend[Any]):
    """Runs bound operations as Stalwart steps, in the run's own process.

    Tool metadata ``{"stalwart": False}`` runs that tool inline, outside any step.
    """

    def bind(
        self, operation: DurableOperation[Any, Any, Any]
    ) -> BoundDurableOperation[Any, Any, Any]:
        return BoundStep(operation)

    def config_for_tool(
        self, operation: DurableOperation[Any, Any, Any], *, tool: object | None, tool_name: str
    ) -> Mapping[str, Any] | Literal[False]:
        metadata = getattr(getattr(tool, "tool_def", None), "metadata", None) or {}
        return False if metadata.get("stalwart") is False else {}

    def registrations(self) -> Sequence[Callable[..., object]]:
        return ()
