"""What agent code sees: ``RunContext`` and its durable ``step``."""

from __future__ import annotations

import contextvars
import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread
import msgspec

from stalwart.actors._fingerprint import fingerprint
from stalwart.actors._patches import (
    DEPRECATED_SUFFIX,
    PATCH_KIND,
    check_change_id,
    patch_fp,
    patch_key,
    went_past,
)
from stalwart.actors._rules import Diverged, divergence_error
from stalwart.checkpoints import RunStore
from stalwart.policies import StepOptions, options_of

if TYPE_CHECKING:
    from stalwart.actors._conversation import Conversation
    from stalwart.actors._ports import RunHost

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a model call used, as its provider reported them (for budgets and traces)."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0


class StepSpec(msgspec.Struct, frozen=True):
    """How a step is journaled: the hook adapters use to turn framework calls into steps.

    ``key`` must be stable across replays (``model:3``, ``tool:<call id>``); ``fp`` is a
    fingerprint of the request, compared on replay; ``name`` is what a human reads in the
    history and in a :class:`~stalwart.errors.NonDeterminismError`.
    """

    key: str
    kind: str
    name: str
    fp: str
    result_type: Any = Any
    usage: Callable[[Any], Usage | None] | None = None
    """For model steps: extracts token usage from the step's result (live and replayed)."""
    options: StepOptions | None = None
    """Retry policy, timeout and at-most-once marking for this step (see ``durable``)."""
    reconcile: Callable[[], Awaitable[Any]] | None = None
    """For at-most-once steps: asked for the outcome after a crash mid-call."""
    tokens_hint: int = 0
    """For model steps: the tokens the call is expected to use (its request's size plus the
    output it may produce), which token rate limits reserve before it; 0: unknown."""


class StepInfo(msgspec.Struct, frozen=True):
    """The step being executed, readable from inside its body via :func:`current_step`."""

    run_id: str
    key: str
    attempt: int

    @property
    def idempotency_key(self) -> str:
        """``<run_id>:<step_key>``: the same on every attempt, for external deduplication."""
        return f"{self.run_id}:{self.key}"


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal a durable wait took: its payload and its id in the run's inbox.

    ``id`` is the inbox's Redis stream id (``<ms>-<n>``, the Redis server's clock when the
    signal was stored); it is journaled with the wait, so it is the same on every replay.
    """

    payload: Any
    id: str | None


_current: contextvars.ContextVar[StepInfo | None] = contextvars.ContextVar(
    "stalwart_step", default=None
)


def current_step() -> StepInfo | None:
    """The step whose body is running in this task or thread, or None outside steps."""
    return _current.get()


def _result_type(fn: Callable[..., Any]) -> Any:
    target = fn.func if isinstance(fn, partial) else fn
    try:
        return _result_type_cached(target)
    except TypeError:  # unhashable callable: resolve every time
        return _resolve_result_type(target)


@functools.lru_cache(maxsize=4096)
def _result_type_cached(target: Callable[..., Any]) -> Any:
    # get_type_hints costs ~13 µs per call, as much as the rest of a replayed step.
    return _resolve_result_type(target)


def _resolve_result_type(target: Callable[..., Any]) -> Any:
    try:
        hint = typing.get_type_hints(target).get("return", Any)
    except Exception:  # unresolvable annotations: decode as plain values
        return Any
    if typing.get_origin(hint) is typing.Union or hint is None:
        return hint if hint is not None else Any
    origin = typing.get_origin(hint)
    if origin in (Awaitable, typing.Coroutine) or (
        origin is not None and getattr(origin, "__name__", "") in ("Coroutine", "Awaitable")
    ):
        args = typing.get_args(hint)
        return args[-1] if args else Any
    return hint


def _is_coroutine_fn(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "func", None))


_is_coroutine_fn_cached = functools.lru_cache(maxsize=4096)(_is_coroutine_fn)
"""Per step otherwise: five Python calls into ``inspect`` for the same few functions."""


def _is_async(fn: Callable[..., Any]) -> bool:
    try:
        return _is_coroutine_fn_cached(fn)
    except TypeError:  # unhashable callable: look every time
        return _is_coroutine_fn(fn)


def body(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[], Awaitable[Any]]:
    """What runs a step's body: ``fn`` itself for a coroutine function (its coroutine is
    awaited by the executor, a coroutine level less per step), else :func:`invoke`."""
    if _is_async(fn):
        return partial(fn, *args, **kwargs)
    return partial(invoke, fn, args, kwargs)


async def invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call ``fn``: coroutine functions on the loop, plain functions in a thread.

    Blocking code on the event loop would stall lease renewal for every run in the worker,
    so synchronous step bodies run in a worker thread (the context variables go along).
    """
    if _is_async(fn):
        return await fn(*args, **kwargs)
    result = await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))
    if inspect.isawaitable(result):
        return await result
    return result


async def _taken() -> bool:
    return True


class RunContext:
    """Handed to every agent function: identifies the run and makes calls durable.

    Everything that is not deterministic (model calls, tool calls, I/O, clocks, random
    numbers) belongs in a step: on resume the agent function runs again from the top and
    each completed step returns its journaled result instead of running again.
    """

    def __init__(
        self, actor: RunHost, scope: str = "", patches: dict[str, bool] | None = None
    ) -> None:
        self._actor = actor
        self._scope = scope
        self._counts: dict[str, int] = {}
        # Patch decisions of this execution, shared with scoped children: a change id
        # answers the same all through a run, even where the evidence would now differ.
        self._patches: dict[str, bool] = {} if patches is None else patches

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self._actor.run_id

    @property
    def agent(self) -> str:
        """The agent's registered name."""
        return self._actor.agent

    @property
    def epoch(self) -> int:
        """The fencing token of the current owner (grows at every failover)."""
        return self._actor.epoch

    @property
    def worker_id(self) -> str:
        """The worker executing this run now."""
        return self._actor.worker_id

    @property
    def is_replaying(self) -> bool:
        """True while journaled steps are still being replayed."""
        return self._actor.replaying

    @property
    def store(self) -> RunStore:
        """The run's part of the Redis store (its journal, its keys, its epoch fence), for
        adapters that keep their own fenced data by the run."""
        return RunStore(self._actor.store, self.run_id, self.epoch)

    @property
    def conversation(self) -> Conversation | None:
        """The conversation this run is a turn of (``submit(..., conversation=...)``), or
        None when it has none. See docs/conversations.md."""
        conv: Conversation | None = getattr(self._actor, "conversation", None)
        return conv

    def check_boundary(self) -> None:
        """Raise if the run must stop now (lease lost, cancelled, worker draining).

        For adapters whose framework does work between steps (a graph superstep): calling
        it there stops the run as promptly as a step boundary would.
        """
        self._actor.check_boundary()

    def mark_replayed(self, prefix: str) -> None:
        """Tell the run that journaled steps under ``prefix`` were skipped on purpose.

        By default a journaled step the code does not ask for again means the code
        changed (:class:`~stalwart.errors.NonDeterminismError`); an adapter whose framework
        resumes from its own checkpoint marks the steps that checkpoint already covers.
        """
        self._actor.mark_replayed(prefix)

    def scoped(self, name: str) -> RunContext:
        """A child context whose step keys live under ``<name>/`` (``<name>#2/`` the 2nd time).

        For nested agents and sub-tasks: their steps replay inside the outer run.
        """
        # Through next_key, so a second scope of the same name gets its own keys.
        return RunContext(self._actor, f"{self.next_key(name)}/", self._patches)

    def next_key(self, base: str) -> str:
        """A step key for ``base`` that is stable on replay: ``base``, ``base#2``, ``base#3``..."""
        n = self._counts.get(base, 0) + 1
        self._counts[base] = n
        return f"{self._scope}{base}" if n == 1 else f"{self._scope}{base}#{n}"

    async def step(self, name: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` as a durable step named ``name`` and return its result.

        The first time, ``fn`` runs and its result (or error) is journaled before this
        returns; on a resume the journaled result is returned without calling ``fn``. The
        result is decoded into ``fn``'s return annotation, so live and replayed runs see
        the same value. A step that raises raises :class:`~stalwart.errors.StepFailed` in
        both cases. Repeated names get keys ``name``, ``name#2``, ...
        """
        key = f"step:{self.next_key(name)}"
        opts = options_of(fn)
        reconcile = None
        if opts is not None and opts.reconcile is not None:
            reconcile = partial(invoke, opts.reconcile, (f"{self.run_id}:{key}", *args), kwargs)
        spec = StepSpec(
            key=key,
            kind="step",
            name=name,
            fp=fingerprint(name, args, kwargs),
            result_type=_result_type(fn),
            options=opts,
            reconcile=reconcile,
        )
        return await self._actor.execute(spec, body(fn, args, kwargs))

    async def patched(self, change_id: str) -> bool:
        """Whether this run takes the new code path of change ``change_id`` (a patch marker).

        ``if await ctx.patched("tool-search"): <new code> else: <old code>`` lets code with
        the change resume runs that started without it: a run whose journal goes past this
        point without the marker (it ran the old code here) gets False, every time; a run
        that reaches this point live journals the marker and gets True, and so do its
        replays. The answer is fixed for the rest of the run once given. See docs/deploys.md.
        """
        key = patch_key(self._scope, check_change_id(change_id))
        known = self._patches.get(key)
        if known is not None:
            return known
        view = self._actor.state.view
        taken = key in view.done or not went_past(view)
        if taken:  # replays the journaled marker (checking it), or journals it now
            await self._marker(key, change_id, change_id)
        self._patches[key] = taken
        return taken

    async def deprecate_patch(self, change_id: str) -> None:
        """Where ``ctx.patched(change_id)`` was, once no run on the old path is left.

        The new path is now the only one: runs that journaled the marker replay it, new runs
        journal a marker that code without any call for ``change_id`` may leave unasked, and
        a run that went past this point on the old path fails with
        :class:`~stalwart.errors.NonDeterminismError` (``stalwart replay`` reports it).
        """
        key = patch_key(self._scope, check_change_id(change_id))
        if self._patches.get(key) is not None:
            return
        view = self._actor.state.view
        if key not in view.done and went_past(view):
            raise divergence_error(
                self._actor.state,
                Diverged(
                    key,
                    f"run {self.run_id!r}, step {key!r}: the run went past this point on the "
                    f"old code path of change {change_id!r}, which the code no longer has "
                    "(ctx.deprecate_patch); keep ctx.patched until such runs have ended",
                ),
            )
        await self._marker(key, change_id, change_id + DEPRECATED_SUFFIX)
        self._patches[key] = True

    async def _marker(self, key: str, change_id: str, name: str) -> None:
        spec = StepSpec(key=key, kind=PATCH_KIND, name=name, fp=patch_fp(change_id))
        await self._actor.execute(spec, _taken)

    async def emit(
        self, type: str, data: Any = None, *, step: str = "", always: bool = False
    ) -> None:
        """Publish a live-only event (token deltas, progress) to the run's event stream.

        Not journaled: a subscriber sees it live, a replay does not repeat it. Skipped
        while replaying, so a resumed run does not emit its history twice, unless
        ``always`` (for state a resumed run announces again, such as "waiting for input").
        Inside a step body the event carries the step's key (unless ``step`` is given) and
        attempt, so :meth:`RunHandle.stream` can void a dead attempt's chunks; model token
        deltas are ``emit("model.delta", {"text": ...})`` (docs/streaming.md).
        """
        if always or not self._actor.replaying:
            await self._actor.emit_live(type, data, step)

    async def wait_for_signal(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait until signal ``name`` arrives and return its payload. Durable.

        Signals sent before the wait starts are kept and returned in order. The timeout
        counts from the first time the wait started, across crashes; when it passes,
        :class:`~stalwart.actors.WaitTimeout` (a ``TimeoutError``) is raised. A long wait
        frees the worker: the run is passivated and placed again when the signal arrives.
        """
        return await self._actor.wait(self.next_key(f"signal:{name}"), name, timeout)

    async def receive_signal(self, name: str, *, timeout: float | None = None) -> Signal:
        """:meth:`wait_for_signal`, returning the payload with the signal's inbox id.

        For code that must judge a signal by when it arrived (an approval that came after its
        request expired), the same way on every replay.
        """
        key = self.next_key(f"signal:{name}")
        payload = await self._actor.wait(key, name, timeout)
        return Signal(payload, self._actor.signal_id(key))

    async def sleep(self, seconds: float) -> None:
        """Sleep durably: a crash or a passivation does not restart the clock."""
        await self._actor.wait(self.next_key("sleep"), "", seconds)

    async def call(self, spec: StepSpec, run: Callable[[], Awaitable[T]]) -> T:
        """Execute ``run`` as the durable step ``spec`` (the low-level hook for adapters)."""
        return typing.cast("T", await self._actor.execute(spec, run))
