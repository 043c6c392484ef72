"""The operation backend: each pydantic-ai durable operation becomes one Stalwart step.

PydanticAI binds every operation it wants durable (model request, tool call, argument
validation, discovery, capability operation) through the backend once, and calls the bound
operation with typed parameters. Inside a run the call becomes ``ctx.call(spec, body)``:
the step key and fingerprint come from those parameters, ``body`` runs the operation's own
handler and encodes its result with the operation's codec (JSON-mode data, which msgpack
journals), and the result is decoded with the same codec, live and on replay alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

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
from stalwart.adapters.pydantic_ai._codec import conversation, model_usage, request_shape
from stalwart.adapters.pydantic_ai._model import model_call
from stalwart.adapters.pydantic_ai._scope import FRAME, journaled
from stalwart.adapters.pydantic_ai._tools import tool_call
from stalwart.kit import canonical_fp, tool_key

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from stalwart.adapters.pydantic_ai._scope import Frame


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
            # Without an id from the model, the call is identified by its arguments.
            ident = tool_key(params.ctx.tool_call_id, params.name, args).removeprefix("tool:")
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
        frame = FRAME.get()
        if frame is None or frame.kind == "tool":
            # Outside a run, or inside a tool step's body, whose own result is journaled.
            with durable_unit_scope():
                return await op.handler(params)
        step = plan(op.operation_id, params, frame)
        if step is None:
            return None
        if step.model is not None:
            return await model_call(frame, step.spec, step.model, op, params)
        if step.tool_call_id is not None:
            return await tool_call(frame, step.spec, step.tool_call_id, op, params)

        async def body() -> Any:
            with durable_unit_scope():
                return op.result_codec.dump(await op.handler(params))

        return op.result_codec.load(await journaled(frame, step.spec, body))


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
