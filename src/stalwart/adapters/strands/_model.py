"""Model calls as durable steps: a Strands ``InvokeModelStage`` middleware.

A Wrap handler. In a durable run each model call becomes the step ``<prefix>model:<n>``;
live, the handler calls ``next_fn`` (the model, and any middleware registered after it)
inside the step and forwards the stream events as they come; on replay it yields the
journaled ``ModelStopReason`` without calling anything. Either way the result event Strands
receives is rebuilt from the journaled data, so a live call and its replay hand the agent
loop the same values. Strands fingerprints the whole request (model, system prompt,
conversation, tools), so a changed agent fails as a fingerprint mismatch.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from strands.interrupt import InterruptException
from strands.middleware import ModelStopReason
from strands.types.exceptions import ContextWindowOverflowException

from stalwart.actors import StepSpec
from stalwart.adapters.strands._codec import (
    delta_text,
    dump_interrupts,
    dump_stop,
    is_interrupt,
    load_interrupts,
    load_stop,
    model_label,
    request_shape,
    usage_extractor,
)
from stalwart.kit import DurableScope, ScopeVar, canonical_fp, stream_step

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable

    from strands.middleware import (
        InvokeModelContext,
        MiddlewareHandler,
        MiddlewareNext,
        TypedEvent,
    )

    from stalwart.policies import Policies

    ModelNext = MiddlewareNext[InvokeModelContext, TypedEvent]

SCOPE: ScopeVar[DurableScope] = ScopeVar("stalwart_strands_run")
"""The run of the current task: the runner sets it around the agent's invocation, and every
task Strands creates from there (the concurrent tool executor's, a graph's nodes) copies it.

One scope per run; an agent's keys live under the prefix its middleware was made with. Its
fatal error is a run-level stop a step raised: Strands turns exceptions in tools into error
results, and a swarm turns a failing node into a failed result; the runner raises it after
the framework returns, so a run that must stop does stop."""

STREAM: ScopeVar[bool] = ScopeVar("stalwart_strands_stream")
"""Whether the run publishes its models' text deltas live (the runner's ``stream``)."""

POLICIES: ScopeVar[Policies] = ScopeVar("stalwart_strands_policies")
"""The run's policies: the tool middleware asks them whether a tool's error is retried."""


def model_middleware(prefix: str) -> MiddlewareHandler[InvokeModelContext, TypedEvent]:
    """An ``InvokeModelStage`` handler: each model call of the agent is the step ``<prefix>model:<n>``."""

    async def durable_model(
        context: InvokeModelContext, next_fn: ModelNext
    ) -> AsyncGenerator[TypedEvent, None]:
        run = SCOPE.active()
        if run is None:
            async for event in next_fn(context):
                yield event
            return
        label = model_label(context.model)
        spec = StepSpec(
            key=run.next_key(f"{prefix}model"),
            kind="model",
            name=label,
            fp=canonical_fp("model", request_shape(context)),
            usage=usage_extractor(label),
        )
        out: list[Any] = []
        async for event in stream_step(
            run.step, spec, _model_body(run, spec.key, context, next_fn), out
        ):
            yield event
        if "overflow" in out[0]:
            raise ContextWindowOverflowException(out[0]["overflow"])
        if is_interrupt(out[0]):
            # A middleware after ours asked a human before the model answered: the same
            # stop on replay, and Strands re-enters this call once it has the answer.
            raise InterruptException(load_interrupts(out[0])[0])
        yield load_stop(out[0])

    return durable_model


def _model_body(
    run: DurableScope, key: str, context: InvokeModelContext, next_fn: ModelNext
) -> Any:
    async def body(forward: Callable[[Any], None]) -> dict[str, Any]:
        stop: ModelStopReason | None = None
        try:
            async with contextlib.aclosing(next_fn(context)) as events:
                async for event in events:
                    if isinstance(event, ModelStopReason):
                        stop = event  # the last one wins, as in Strands' own chain
                        continue
                    text = delta_text(event) if STREAM.get() is not False else None
                    if text is not None:
                        # Live only: a replayed response does not emit its deltas again.
                        await run.ctx.emit("model.delta", {"text": text}, step=key)
                    forward(event)
        except InterruptException as exc:
            return dump_interrupts([exc.interrupt], raised=True)
        except ContextWindowOverflowException as exc:
            # The model's answer to this conversation, not a failure to retry: journaled,
            # and raised to Strands, whose conversation manager trims the history and
            # calls again (the next step), live and on replay alike.
            return {"overflow": str(exc)}
        if stop is None:
            raise RuntimeError(f"step {key!r}: the model stream ended without a ModelStopReason")
        return dump_stop(stop)

    return body
