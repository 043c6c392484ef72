"""Tool calls as durable steps: the tool operation of the Stalwart backend.

The step ``tool:<tool_call_id>`` (:func:`stalwart.kit.tool_key`) runs the tool and journals
its result; ``tool.call`` and ``tool.result`` events come from inside the live step. An
agent run the tool starts (delegation) runs in the frame of the tool step, so its steps are
journaled under the tool call and listed with its result.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import TypeAdapter
from pydantic_ai.durable_exec import durable_unit_scope
from pydantic_ai.usage import RunUsage
from pydantic_core import to_jsonable_python

from stalwart.actors import StepSpec
from stalwart.adapters.pydantic_ai._scope import FRAME, Nested, journaled
from stalwart.errors import NonRetryableError, StepFailed

if TYPE_CHECKING:
    from pydantic_ai.durable_exec import DurableOperation

    from stalwart.adapters.pydantic_ai._scope import Frame

_EVENT_RESULT_LIMIT = 8192


async def tool_call(
    frame: Frame,
    spec: StepSpec,
    call_id: str,
    op: DurableOperation[Any, Any, Any],
    params: Any,
) -> Any:
    """Run a bound tool operation as the step ``spec``; return its decoded result.

    Agent runs the tool starts nest under the step (``<key>/<agent>/...``); when the step
    replays, their journaled steps are asked for again (:func:`_replay_nested`).
    """
    key = spec.key
    head = {"tool": spec.name, "tool_call_id": call_id}
    ran = False

    async def body() -> dict[str, Any]:
        nonlocal ran
        ran = True
        args = to_jsonable_python(params.tool_args, fallback=repr)
        await frame.ctx.emit("tool.call", {**head, "args": args}, step=key)
        nested: Nested = []
        own, usage = own_usage(params)
        before = copy.deepcopy(usage)
        with FRAME.using(frame.in_tool(key, nested)), durable_unit_scope():  # runs nest under key
            result = await op.handler(own)
        payload = encode_result(spec.name, op, result)
        size = len(msgspec.json.encode(payload))
        shown = {"result": payload} if size <= _EVENT_RESULT_LIMIT else {"result_bytes": size}
        await frame.ctx.emit("tool.result", {**head, **shown}, step=key)
        record: dict[str, Any] = {"result": payload}
        if nested:
            record["nested"] = nested
        if usage is not None and before is not None:
            added = usage - before
            if added.has_values() or added.requests or added.tool_calls:
                record["usage"] = _USAGE.dump_python(added, mode="json")
        return record

    recorded = await journaled(frame, spec, body)
    if not ran and recorded.get("nested"):
        await _replay_nested(frame, recorded["nested"])
    shared = getattr(getattr(params, "ctx", None), "usage", None)
    if recorded.get("usage") and isinstance(shared, RunUsage):
        shared.incr(_USAGE.validate_python(recorded["usage"]))  # live and replayed alike
    return op.result_codec.load(recorded["result"])


_USAGE = TypeAdapter(RunUsage)


def own_usage(params: Any) -> tuple[Any, RunUsage | None]:
    """``params`` whose run context has a usage of its own, and that usage.

    A tool that runs an agent with ``usage=ctx.usage`` adds the agent's requests and tokens
    to the run's usage. The tool's body gets a copy, so what it added is known exactly (also
    with parallel tools) and journaled with its result: a replayed tool adds it again, as
    the plain run had it, though its body (and the agent run) does not run.
    """
    ctx: Any = getattr(params, "ctx", None)
    usage = getattr(ctx, "usage", None)
    if not isinstance(usage, RunUsage) or not dataclasses.is_dataclass(ctx):
        return params, None
    own = copy.deepcopy(usage)
    call: Any = params  # ToolsetCallToolParams, a frozen dataclass
    run_ctx: Any = ctx  # PydanticAI's RunContext, a dataclass
    return dataclasses.replace(call, ctx=dataclasses.replace(run_ctx, usage=own)), own


class ToolResultNotSerializable(NonRetryableError):
    """A tool returned a value that cannot be journaled (nor sent to a model as JSON).

    Deterministic, so never retried. The message names the tool, the type and what to
    return instead; ``__cause__`` is PydanticAI's serialization error.
    """


def _returned(result: Any) -> Any:
    """The value a tool returned, out of PydanticAI's recorded-result wrapper."""
    return getattr(result, "result", result)


def encode_result(tool: str, op: DurableOperation[Any, Any, Any], result: Any) -> Any:
    """A tool call's result as journal data, or an error naming the tool and the type."""
    try:
        return op.result_codec.dump(result)
    except NonRetryableError as exc:  # the capability's mapping of a serialization failure
        cause = exc.__cause__ or exc
        value = _returned(result)
        kind = f"{type(value).__module__}.{type(value).__qualname__}"
        raise ToolResultNotSerializable(
            f"tool {tool!r} returned a {kind}, which cannot be journaled ({cause}). A tool's "
            "return value goes to the model as JSON: return plain data (str, numbers, "
            "lists, dicts) or a pydantic model or dataclass of those, e.g. str(value) or "
            "the fields the model needs"
        ) from cause


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
