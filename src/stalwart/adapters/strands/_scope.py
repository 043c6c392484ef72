"""Which durable run a Strands callback belongs to, and running one step from a middleware.

Strands calls our middleware from its own tasks (the event loop, the concurrent tool
executor's tasks, a graph's node tasks), with no handle on the Stalwart run. A context
variable carries it: the runner sets it around the agent's invocation, and every task Strands
creates from there copies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart.actors import current_step
from stalwart.errors import StepFailed

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable, Callable

    from stalwart.actors import RunContext, StepSpec

T = TypeVar("T")

# How long a cancelled caller waits for its step to settle (the body is cancelled at once;
# what remains is at most a journal write).
_SETTLE = 5.0


@dataclass(eq=False)
class RunScope:
    """One durable run of a runner: its context, per-scope counters, and a fatal error."""

    ctx: RunContext
    counts: dict[str, int] = field(default_factory=dict)
    fatal: BaseException | None = None
    """A run-level stop (lease lost, drain, cancellation, non-determinism) raised by a step.

    Strands turns exceptions in tools into error results, and a swarm turns a failing node
    into a failed result; the runner re-raises this after the framework returns, so a run
    that must stop does stop."""

    def model_key(self, prefix: str) -> str:
        """``<prefix>model:<n>``: the n-th model call of the agent whose keys live under prefix.

        An agent's model calls are sequential, so the counter follows call order.
        """
        base = f"{prefix}model"
        n = self.counts.get(base, 0) + 1
        self.counts[base] = n
        return f"{base}:{n}"

    def tool_key(self, prefix: str, tool_use_id: str) -> str:
        """``<prefix>tool:<toolUseId>``, then ``#2``... when the same call runs again.

        The id comes from the journaled model response, so it is the same on replay whatever
        order parallel calls arrive in. A hook that retries a call (``AfterToolCallEvent.retry``)
        runs the same id again; each retry gets its own key, in order.
        """
        base = f"{prefix}tool:{tool_use_id}"
        n = self.counts.get(base, 0) + 1
        self.counts[base] = n
        return base if n == 1 else f"{base}#{n}"


_scope: contextvars.ContextVar[RunScope | None] = contextvars.ContextVar(
    "stalwart_strands_run", default=None
)


def active() -> RunScope | None:
    """The run a framework call should be journaled in, or None to call straight through.

    None outside a durable run, and inside the body of a step that is already journaled (an
    agent used as a tool calls its own model inside the tool's step): that step's result
    covers everything it calls, and a step nested in a replayed step would never be asked
    for again.
    """
    run = _scope.get()
    if run is None or current_step() is not None:
        return None
    return run


def enter(run: RunScope) -> contextvars.Token[RunScope | None]:
    """Make ``run`` current for this task and the tasks it creates."""
    return _scope.set(run)


def leave(token: contextvars.Token[RunScope | None]) -> None:
    """Undo :func:`enter`."""
    _scope.reset(token)


async def call_step(run: RunScope, spec: StepSpec, body: Callable[[], Awaitable[T]]) -> T:
    """``ctx.call(spec, body)``, where cancelling the caller stops the body, not a journal write.

    Strands cancels tasks of its own (a graph cancels sibling nodes when one fails, a swarm
    node times out). A cancellation landing while the step's result is being appended could
    leave the run's journal position behind an entry already written; so the step runs in a
    task of its own, a cancellation cancels only the body, and the caller waits (briefly) for
    the step to settle before re-raising. Anything but :class:`StepFailed` is a run-level stop
    and is remembered in ``run.fatal``.
    """
    if run.fatal is not None:
        # The run must stop; Strands carried on after swallowing the error (a tool error
        # result, a failed swarm node). Nothing more may run, live or replayed.
        raise run.fatal
    bodies: list[asyncio.Future[Any]] = []

    async def guarded() -> T:
        task = asyncio.ensure_future(body())  # copies the context: current_step() included
        bodies.append(task)
        return await task

    step = asyncio.ensure_future(run.ctx.call(spec, guarded))
    try:
        return await asyncio.shield(step)
    except asyncio.CancelledError:
        for task in bodies:
            task.cancel()
        done, _ = await asyncio.wait({step}, timeout=_SETTLE)
        if not done:
            step.cancel()
        elif not step.cancelled():
            step.exception()  # retrieved: the caller is cancelled, nobody else will look
        raise
    except StepFailed as exc:
        if exc.error_type == "ToolOutcomeUnknown":
            # An at-most-once tool died mid-call. As an error result the model could simply
            # call it again (a second payment): the run stops instead.
            run.fatal = run.fatal or exc
        raise
    except Exception as exc:
        if run.fatal is None:
            run.fatal = exc
        raise


async def stream_step(
    run: RunScope,
    spec: StepSpec,
    body: Callable[[Callable[[Any], None]], Awaitable[Any]],
    out: list[Any],
) -> AsyncGenerator[Any, None]:
    """Run the step ``spec`` and yield the events its body forwards while it runs.

    ``body(forward)`` runs live only; it passes the framework's intermediate events (text
    deltas, tool progress) to ``forward`` so they reach Strands as they happen. The step's
    outcome is appended to ``out`` (a generator cannot return a value); a replayed step
    forwards nothing.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.ensure_future(call_step(run, spec, lambda: body(queue.put_nowait)))
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
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
