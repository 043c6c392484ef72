"""Model requests as durable steps: the model operation of the Stalwart backend.

The step ``model:<n>`` (the n-th model request of an agent run) journals the response with
the request's shape (model, tools, output type, instructions) through
:func:`stalwart.kit.model_step`: a changed agent fails with a
:class:`~stalwart.errors.NonDeterminismError` that says what changed. The
``model.response`` event is published from inside the live step only.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from pydantic_ai.durable_exec import durable_unit_scope

from stalwart.adapters.pydantic_ai._codec import response_summary
from stalwart.adapters.pydantic_ai._scope import journaled
from stalwart.kit import model_step

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic_ai.durable_exec import DurableOperation

    from stalwart.actors import StepSpec
    from stalwart.adapters.pydantic_ai._scope import Frame


async def model_call(
    frame: Frame,
    spec: StepSpec,
    shape: Mapping[str, Any],
    op: DurableOperation[Any, Any, Any],
    params: Any,
) -> Any:
    """Run a bound model operation as the step ``spec``; return its decoded response."""

    async def body() -> Any:
        with durable_unit_scope():
            response = await op.handler(params)
        payload = op.result_codec.dump(response)
        await frame.ctx.emit("model.response", response_summary(payload), step=spec.key)
        return payload

    payload = await model_step(frame.ctx, spec, shape, body, call=partial(journaled, frame))
    return op.result_codec.load(payload)
