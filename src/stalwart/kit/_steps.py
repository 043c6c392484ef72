"""Running a step from a framework's task: cancellation-safe, and streaming its events."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from stalwart.actors import RunContext, StepSpec

T = TypeVar("T")

StepCall: TypeAlias = Callable[["StepSpec", Callable[[], Awaitable[Any]]], Awaitable[Any]]
"""How a step is executed: ``ctx.call``, ``partial(call_step, ctx)``, ``scope.step``..."""

# How long a cancelled caller waits for its step to settle (the body is cancelled at once;
# what remains is at most a journal write).
SETTLE_SECONDS = 5.0


async def call_step(ctx: RunContext, spec: StepSpec, body: Callable[[], Awaitable[T]]) -> T:
    """``ctx.call(spec, body)``, where cancelling the caller stops the body, not a journal write.

    Frameworks cancel model and tool tasks on their own (a tripped guardrail, a failing
    sibling tool, a graph cancelling sibling nodes, a timeout). A cancellation that lands
    while the step's result is being appended could leave the run's journal position behind
    an entry already written, and the run unable to finish; so the step runs in a task of its
    own, a cancellation cancels only the body, and the caller waits (at most
    :data:`SETTLE_SECONDS`) for the step to settle before it re-raises.
    """
    bodies: list[asyncio.Future[Any]] = []

    async def guarded() -> T:
        task = asyncio.ensure_future(body())  # copies the context: current_step() included
        bodies.append(task)
        return await task

    step = asyncio.ensure_future(ctx.call(spec, guarded))
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        for task in bodies:
            task.cancel()
        done, _ = await asyncio.wait({step}, timeout=SETTLE_SECONDS)
        if not done:
            step.cancel()
        elif not step.cancelled():
            step.exception()  # retrieved: the caller is cancelled, nobody else will look
        raise


async def stream_step(
    call: StepCall,
    spec: StepSpec,
    body: Callable[[Callable[[Any], None]], Awaitable[Any]],
    out: list[Any],
) -> AsyncGenerator[Any, None]:
    """Run the step ``spec`` through ``call`` and yield the events its body forwards.

    ``body(forward)`` runs live only; it passes the framework's intermediate events (text
    deltas, tool progress) to ``forward`` so they reach the framework as they happen. The
    step's result is appended to ``out`` (a generator cannot return a value); a replayed step
    forwards nothing. If the framework stops reading, the step is cancelled and settled.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.ensure_future(call(spec, lambda: body(queue.put_nowait)))
    try:
        while True:
            if not queue.empty():
                yield queue.get_nowait()
                continue
            if task.done():
                break
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        out.append(task.result())
    finally:
        if not task.done():  # the framework stopped reading: stop the step, let it settle
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved here, whether or not it was raised above
