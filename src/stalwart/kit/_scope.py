"""The durable scope: which run (and which part of it) a framework callback belongs to.

Frameworks call an adapter's model and tool wrappers from their own tasks and threads, with
no handle on the Stalwart run. A context variable carries it (:class:`ScopeVar`): the runner
sets it around the framework's loop, and every task the framework creates copies it. A
:class:`DurableScope` names the step keys of the calls made in it (a prefix and counters),
opens child scopes for nested agents, and remembers the first error that must end the run,
which frameworks that turn exceptions into error results would otherwise swallow.
"""

from __future__ import annotations

import contextlib
import threading
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from stalwart.actors import current_step
from stalwart.actors._context import _current
from stalwart.kit._failures import failure_outcome
from stalwart.kit._steps import call_step

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from stalwart.actors import RunContext, StepInfo, StepSpec

S = TypeVar("S")
T = TypeVar("T")


class _Run:
    """What the scopes of one run share: the error that ends it."""

    def __init__(self) -> None:
        self.fatal: BaseException | None = None
        self.lock = threading.Lock()


@dataclass(eq=False)
class DurableScope:
    """One scope of a durable run: the top level (prefix ``""``) or a nested agent's.

    Counters are per scope and thread-safe (some frameworks call from several threads);
    the fatal error is shared by a scope and all its children.
    """

    ctx: RunContext
    prefix: str = ""
    _counts: dict[str, int] = field(default_factory=dict)
    _run: _Run = field(default_factory=_Run)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self, base: str) -> int:
        with self._lock:
            n = self._counts.get(base, 0) + 1
            self._counts[base] = n
            return n

    def key(self, base: str) -> str:
        """``<prefix><base>``: for steps identified by something stable (a tool call id)."""
        return f"{self.prefix}{base}"

    def next_key(self, base: str) -> str:
        """``<prefix><base>:<n>``, the n-th such step in this scope (model calls, handoffs).

        Only for calls that are sequential within a scope: the counter follows call order.
        """
        return f"{self.prefix}{base}:{self._next(base)}"

    def next_named(self, name: str) -> str:
        """``<prefix><name>``, then ``<name>#2``, ``#3``...: for named calls that may repeat."""
        n = self._next(name)
        return f"{self.prefix}{name}" if n == 1 else f"{self.prefix}{name}#{n}"

    def child(self, name: str) -> DurableScope:
        """A nested scope whose keys live under ``<prefix><name>/``; it shares the fatal error."""
        return DurableScope(self.ctx, f"{self.prefix}{name}/", _run=self._run)

    # -- the error that ends the run ---------------------------------------------------

    @property
    def fatal(self) -> BaseException | None:
        """The first run-level stop a step raised (lease lost, drain, cancel, divergence)."""
        return self._run.fatal

    def fail(self, exc: BaseException) -> BaseException:
        """Remember ``exc`` unless an earlier stop is remembered; return the one kept."""
        with self._run.lock:
            if self._run.fatal is None:
                self._run.fatal = exc
            return self._run.fatal

    def check(self) -> None:
        """Raise the remembered stop: nothing more may run, live or replayed."""
        if self._run.fatal is not None:
            raise self._run.fatal

    def finish(self, exc: BaseException | None = None) -> None:
        """At the end of the framework's loop: raise the remembered stop if there is one.

        ``exc`` is what the loop raised, if anything: the remembered stop explains it (the
        framework wrapped or replaced it) and is raised in its place.
        """
        fatal = self._run.fatal
        if fatal is None or fatal is exc:
            return
        if exc is not None:
            raise fatal from exc
        raise fatal

    async def step(self, spec: StepSpec, body: Callable[[], Awaitable[T]]) -> T:
        """:func:`~stalwart.kit.call_step` that refuses to run after a stop and remembers one.

        For frameworks that swallow errors: a step that raises anything but a tool's own
        error (see :func:`~stalwart.kit.failure_outcome`) is remembered, and the runner
        raises it after the framework returns (:meth:`finish`).
        """
        self.check()
        try:
            return await call_step(self.ctx, spec, body)
        except Exception as exc:
            if failure_outcome(exc) == "stop":
                self.fail(exc)
            raise


class ScopeVar(Generic[S]):
    """A context variable holding an adapter's current scope (one per adapter)."""

    def __init__(self, name: str) -> None:
        self._var: ContextVar[S | None] = ContextVar(name, default=None)

    def get(self) -> S | None:
        """The scope of this task or thread, or None outside a durable run."""
        return self._var.get()

    def active(self) -> S | None:
        """The scope a framework call should be journaled in, or None to call straight through.

        None outside a durable run, and inside the body of a step that is already being
        journaled: that step's journaled result covers whatever it calls.
        """
        scope = self._var.get()
        if scope is None or current_step() is not None:
            return None
        return scope

    def enter(self, scope: S | None) -> Token[S | None]:
        """Make ``scope`` current for this task and the tasks it creates."""
        return self._var.set(scope)

    def leave(self, token: Token[S | None]) -> None:
        """Undo :meth:`enter`."""
        self._var.reset(token)

    @contextlib.contextmanager
    def using(self, scope: S | None) -> Iterator[S | None]:
        """``with var.using(scope):`` — :meth:`enter` and :meth:`leave` around a block."""
        token = self._var.set(scope)
        try:
            yield scope
        finally:
            self._var.reset(token)


@contextlib.contextmanager
def in_step(info: StepInfo | None) -> Iterator[None]:
    """Make ``info`` what :func:`stalwart.current_step` returns in this thread, for a block.

    For adapters that run a step's body in a thread of the framework's rather than in the
    task that executes the step: the body sees its step (idempotency key) as it would there.
    """
    token = _current.set(info)
    try:
        yield
    finally:
        _current.reset(token)
