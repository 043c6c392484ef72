"""Which durable run (and which nested scope of it) a framework callback belongs to.

The SDK calls our model and tool wrappers from its own tasks, with no handle on the Stalwart
run. A context variable carries it: set by the runner around ``Runner.run``, and by an
agent-as-tool wrapper around the nested run (asyncio tasks copy the context when they are
created, so the nested run's tasks see the nested scope and siblings keep theirs).
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart.actors import current_step

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stalwart.actors import RunContext, StepSpec

T = TypeVar("T")

# How long a cancelled caller waits for its step to settle (the body is cancelled at once;
# what remains is at most a journal write).
_SETTLE = 5.0


@dataclass(eq=False)
class Scope:
    """One run scope: the top-level run (prefix ``""``) or a nested agent-as-tool run."""

    ctx: RunContext
    prefix: str = ""
    _counts: dict[str, int] = field(default_factory=dict)

    def key(self, base: str) -> str:
        """``<prefix><base>``: for steps identified by something stable (a tool call id)."""
        return f"{self.prefix}{base}"

    def next_key(self, base: str) -> str:
        """``<prefix><base>:<n>``, the n-th such step in this scope (model calls, handoffs).

        Only for calls that are sequential within a scope: the counter follows call order.
        """
        n = self._counts.get(base, 0) + 1
        self._counts[base] = n
        return f"{self.prefix}{base}:{n}"

    def next_named(self, name: str) -> str:
        """``<prefix><name>``, then ``<name>#2``...: for named calls such as guardrails."""
        n = self._counts.get(name, 0) + 1
        self._counts[name] = n
        return f"{self.prefix}{name}" if n == 1 else f"{self.prefix}{name}#{n}"

    def child(self, prefix: str) -> Scope:
        """A nested scope whose keys live under ``<prefix>`` (it ends with ``/``)."""
        return Scope(self.ctx, f"{self.prefix}{prefix}")


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "stalwart_openai_agents_scope", default=None
)


def active_scope() -> Scope | None:
    """The scope a framework call should be journaled in, or None to call straight through.

    None outside a durable run, and inside the body of a step that is already being
    journaled (a guardrail, or a tool that runs an agent itself): that step's journaled
    result covers whatever it calls, and a step nested in a replayed step would never be
    asked for again.
    """
    scope = _scope.get()
    if scope is None or current_step() is not None:
        return None
    return scope


def enter(scope: Scope) -> contextvars.Token[Scope | None]:
    """Make ``scope`` current for this task and the tasks it creates."""
    return _scope.set(scope)


def leave(token: contextvars.Token[Scope | None]) -> None:
    """Undo :func:`enter`."""
    _scope.reset(token)


async def call_step(ctx: RunContext, spec: StepSpec, body: Callable[[], Awaitable[T]]) -> T:
    """``ctx.call(spec, body)``, where cancelling the caller stops the body, not a journal write.

    The SDK cancels model and tool tasks on its own (a tripped guardrail, a failing sibling
    tool, a tool timeout). A cancellation that lands while the step's result is being
    appended could leave the run's journal position behind an entry already written, and
    the run unable to finish; so the step runs in a task of its own, a cancellation cancels
    only the body, and the caller waits (briefly) for the step to settle before it re-raises.
    """
    bodies: list[asyncio.Future[Any]] = []

    async def run() -> T:
        task = asyncio.ensure_future(body())  # copies the context: current_step() included
        bodies.append(task)
        return await task

    step = asyncio.ensure_future(ctx.call(spec, run))
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
