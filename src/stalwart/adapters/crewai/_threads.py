"""Where a CrewAI call belongs in a durable run, and how it reaches the run's event loop.

CrewAI calls models and tools synchronously from its own threads: the crew's thread, the
threads of its agent-executor flows, ``async_execution`` tasks and parallel native tool calls.
``RunContext.call`` is a coroutine of the worker's event loop. :meth:`CrewRun.call` bridges
the two: it submits the step to the loop and waits; when the step runs live, the loop hands
the body back to the calling thread, which runs it there (with its own context variables:
CrewAI's, and the frame below) and reports the outcome. The loop never blocks, so leases keep
being renewed while a crew thinks.

A :class:`Frame` names the keys of the calls made in one place: a crew task (``task:<i>/``),
the body of a tool step (``<tool key>/``: a delegated coworker's model and tool calls), or the
root (``Agent.kickoff``). Model calls of one frame are sequential, so ``model:<n>`` is stable;
tool calls are keyed by the call id of the journaled model response, whatever thread or order
they run in.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread
from crewai.context import get_current_task_id
from crewai.tools.tool_failure import ToolFailure

from stalwart.actors import current_step
from stalwart.adapters.crewai._codec import decode
from stalwart.errors import DisallowedTypeError, StepFailed
from stalwart.kit import (
    ApprovalDecision,
    ApprovalPolicy,
    DurableScope,
    ScopeVar,
    allow_map,
    await_approval,
    in_step,
    text_digest,
)

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence

    from stalwart.actors import RunContext, StepInfo, StepSpec


@dataclass(eq=False)
class Frame:
    """A place calls are made in: its ``path`` prefixes their step keys."""

    path: str
    opaque: bool = False
    """Inside a model step's body: nested calls are part of that step, not steps."""
    owner: object | None = None
    """The tool whose step body this frame is (its own ``super()._run`` is not a new step)."""
    parent: Frame | None = None
    """The frame the tool step of this frame was made in."""
    usage: list[tuple[int, dict[str, int]]] | None = None
    """A tool step's frame: the tokens the model calls inside it used, by LLM slot."""
    answer: str = ""
    """The last text a model answered in this frame (what a human is asked to review)."""
    _counts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, base: str) -> int:
        """How many times ``base`` has been asked for in this frame, this one included."""
        with self._lock:
            n = self._counts.get(base, 0) + 1
            self._counts[base] = n
            return n

    def key(self, base: str) -> str:
        """``<path><base>``, then ``<path><base>#2``, ``#3``... for repeats."""
        n = self.next(base)
        return f"{self.path}{base}" if n == 1 else f"{self.path}{base}#{n}"

    def note_usage(self, slot: int, delta: dict[str, int]) -> None:
        """Count a model call's tokens in this frame and every enclosing tool step's frame.

        A tool step journals what the calls inside it used: when it replays whole, nothing
        inside it runs, and its tokens are counted again from there (see ``_tools``).
        """
        frame: Frame | None = self
        while frame is not None:
            if frame.usage is not None:
                with frame._lock:
                    frame.usage.append((slot, delta))
            frame = frame.parent


OPAQUE = Frame("", opaque=True)

RUN: ScopeVar[CrewRun] = ScopeVar("stalwart_crewai_run")
_frame: ContextVar[Frame | None] = ContextVar("stalwart_crewai_frame", default=None)
_native_call: ContextVar[tuple[str, str] | None] = ContextVar(
    "stalwart_crewai_native_call", default=None
)
"""``(call id, tool name)`` while CrewAI's executor runs one native tool call."""


def current_run() -> CrewRun | None:
    """The durable run this thread works for, or None outside one."""
    return RUN.get()


MARK = "__stalwart_crewai__"
"""Set on every wrapper the adapter puts on CrewAI's classes (so nothing is wrapped twice)."""


def marked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, marked as one of the adapter's wrappers."""
    setattr(fn, MARK, True)
    return fn


def arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    """Argument ``name`` of a wrapped call, given by position ``index`` or by keyword."""
    return args[index] if len(args) > index else kwargs.get(name)


class _Stop(BaseException):
    """Carries an error that must end the run (lease lost, drained, cancelled, divergence).

    A ``BaseException``, so CrewAI's broad ``except Exception`` handlers (tool errors fed
    back to the model, agent retries, delegation errors returned as text) let it through.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _settle(done: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if done.done():  # the step stopped waiting (timeout, cancellation)
        return
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)


class CrewRun:
    """One durable run of a crew or agent: its context, its loop, its frames."""

    def __init__(
        self,
        ctx: RunContext,
        loop: asyncio.AbstractEventLoop,
        tasks: Sequence[Any] = (),
        allowed_types: Iterable[type] = (),
        llms: Callable[[], Sequence[Any]] = tuple,
        approvals: ApprovalPolicy | None = None,
        streaming: bool = False,
    ):
        self.ctx = ctx
        self.streaming = streaming
        """Publish the models' stream chunks live (see ``_stream``)."""
        self.approvals = approvals
        """Bind tool-hook approvals to their call (None: free-text answers, as CrewAI's)."""
        self._llms = llms
        self.loop = loop
        # CrewAI's own result type for a tool that reports a failure without raising.
        self.allowed = allow_map([*allowed_types, ToolFailure])
        """Classes journaled values may be rebuilt as, besides the expected one."""
        self.root = Frame("")
        self.scope = DurableScope(ctx)
        """Holds the error that ends the run (shared by every thread of the run)."""
        self._task_index = {str(task.id): i for i, task in enumerate(tasks)}
        self._task_frames: dict[str, Frame] = {}
        self._aliases: dict[int, str] = {}
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    # -- frames -------------------------------------------------------------------------

    def frame(self, task: Any = None) -> Frame:
        """The frame of a call made now in this thread, for ``task`` (CrewAI's ``from_task``)."""
        inner = _frame.get()
        if inner is not None:
            return inner
        task_id = get_current_task_id() if task is None else str(task.id)
        if task_id is None:
            return self.root
        with self._lock:
            frame = self._task_frames.get(task_id)
            if frame is not None:
                return frame
            index = self._task_index.get(task_id)
            if index is not None:
                frame = Frame(f"task:{index}/")
            elif task is not None:
                # Not one of the crew's tasks (a planner's, a guardrail's): named by its text.
                frame = Frame(f"{self.root.key('task:' + text_digest(task.description))}/")
            else:
                return self.root
            self._task_frames[task_id] = frame
            return frame

    def alias(self, tool_call: object, stable: str) -> None:
        """Remember a stable id for a tool call whose own id is its memory address."""
        with self._lock:
            self._aliases[id(tool_call)] = stable

    def alias_of(self, tool_call: object) -> str | None:
        """The stable id :meth:`alias` recorded for ``tool_call``."""
        with self._lock:
            return self._aliases.get(id(tool_call))

    def llm_slot(self, llm: object) -> int | None:
        """Where ``llm`` sits among the crew's models (those CrewAI counts usage of), or None."""
        return next((i for i, m in enumerate(self._llms()) if m is llm), None)

    def llm_at(self, slot: int) -> Any:
        """The crew's model at ``slot`` (:meth:`llm_slot`), or None."""
        llms = self._llms()
        return llms[slot] if 0 <= slot < len(llms) else None

    # -- the bridge ---------------------------------------------------------------------

    def wait_for_signal(self, name: str, event: dict[str, Any]) -> Any:
        """Publish ``event`` (``crew.human_input``) and wait durably for signal ``name``.

        From a CrewAI thread. A journaled answer is returned at once on replay; a wait that
        passivates the run, times out or is cancelled ends the run (past CrewAI's handlers).
        """

        async def wait() -> Any:
            await self.ctx.emit("crew.human_input", event, step=f"signal:{name}")
            return await self.ctx.wait_for_signal(name)

        return self._on_loop(wait())

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` (a durable wait) on the run's loop from a CrewAI thread."""
        if self.fatal is not None:
            coro.close()
            raise _Stop(self.fatal)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        with self._lock:
            self._inflight.add(future)
        try:
            return future.result()
        except BaseException as exc:
            future.cancel()
            if isinstance(exc, _Stop):
                raise
            raise _Stop(self.fail(exc)) from None
        finally:
            with self._lock:
                self._inflight.discard(future)

    def approve(self, event: dict[str, Any], **request: Any) -> ApprovalDecision:
        """Publish ``event`` and ask for an approval bound to one tool call, from a CrewAI
        thread (``request``: :func:`~stalwart.kit.await_approval`'s keywords)."""
        policy = self.approvals
        assert policy is not None

        async def ask() -> ApprovalDecision:
            await self.ctx.emit("crew.human_input", event, step=f"signal:{request['signal']}")
            return await await_approval(self.ctx, policy=policy, **request)

        return cast("ApprovalDecision", self._on_loop(ask()))

    def call(self, spec: StepSpec, body: Callable[[], Any]) -> Any:
        """Run ``body`` as the durable step ``spec``, from a CrewAI thread; return its result.

        The step's journaled outcome on replay; otherwise ``body`` runs here, in the calling
        thread, with ``current_step()`` set, and its outcome is journaled. Raises
        :class:`StepFailed` for a failed step; anything else that ends the run is remembered
        and raised as :class:`_Stop`.
        """
        if self.fatal is not None:
            raise _Stop(self.fatal)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError(
                "a CrewAI model or tool call ran on the worker's event loop; CrewAI must run "
                "in a thread (DurableCrewRunner does this)"
            )
        requests: queue.SimpleQueue[tuple[StepInfo | None, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )

        async def run_here() -> Any:
            done: asyncio.Future[Any] = self.loop.create_future()
            requests.put((current_step(), done))
            return await done

        future = asyncio.run_coroutine_threadsafe(self.ctx.call(spec, run_here), self.loop)
        future.add_done_callback(lambda _: requests.put(None))
        with self._lock:
            self._inflight.add(future)
        try:
            while (request := requests.get()) is not None:
                info, done = request
                with in_step(info):
                    try:
                        value = body()
                    except Exception as exc:
                        self.loop.call_soon_threadsafe(_settle, done, False, exc)
                    else:
                        self.loop.call_soon_threadsafe(_settle, done, True, value)
            return future.result()
        except StepFailed:
            raise
        except BaseException as exc:
            future.cancel()  # a step left waiting for its body would never end
            if isinstance(exc, _Stop):
                raise
            raise _Stop(self.fail(exc)) from None
        finally:
            with self._lock:
                self._inflight.discard(future)

    async def acall(self, spec: StepSpec, body: Callable[[], Awaitable[Any]]) -> Any:
        """:meth:`call` for coroutines on an event loop of CrewAI's own (not the worker's)."""
        if self.fatal is not None:
            raise _Stop(self.fatal)
        here = asyncio.get_running_loop()
        if here is self.loop:
            raise RuntimeError(
                "a CrewAI model call ran on the worker's event loop; CrewAI must run in a "
                "thread (DurableCrewRunner does this)"
            )
        requests: asyncio.Queue[tuple[StepInfo | None, asyncio.Future[Any]] | None] = (
            asyncio.Queue()
        )

        def post(item: tuple[StepInfo | None, asyncio.Future[Any]] | None) -> None:
            with contextlib.suppress(RuntimeError):  # CrewAI's loop is gone: nobody waits
                here.call_soon_threadsafe(requests.put_nowait, item)

        async def run_there() -> Any:
            done: asyncio.Future[Any] = self.loop.create_future()
            post((current_step(), done))
            return await done

        future = asyncio.run_coroutine_threadsafe(self.ctx.call(spec, run_there), self.loop)
        future.add_done_callback(lambda _: post(None))
        with self._lock:
            self._inflight.add(future)
        try:
            while (request := await requests.get()) is not None:
                info, done = request
                with in_step(info):
                    try:
                        value = await body()
                    except Exception as exc:
                        self.loop.call_soon_threadsafe(_settle, done, False, exc)
                    else:
                        self.loop.call_soon_threadsafe(_settle, done, True, value)
            return await asyncio.wrap_future(future)
        except (StepFailed, asyncio.CancelledError):
            future.cancel()  # CrewAI gave up on this call (a timeout): so does the step
            raise
        except BaseException as exc:
            future.cancel()
            if isinstance(exc, _Stop):
                raise
            raise _Stop(self.fail(exc)) from None
        finally:
            with self._lock:
                self._inflight.discard(future)

    def decode(self, data: Any, hint: Any = None) -> Any:
        """A journaled value (:func:`_codec.decode`); a refused type ends the run."""
        try:
            return decode(data, hint, self.allowed)
        except DisallowedTypeError as exc:
            # Not an error CrewAI may feed back to the model or retry: the journal is suspect.
            raise _Stop(self.fail(exc)) from None

    def emit(self, type: str, data: Any, step: str) -> None:
        """Publish a live-only event from a CrewAI thread, without waiting for it."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: events are best effort
            asyncio.run_coroutine_threadsafe(self.ctx.emit(type, data, step=step), self.loop)

    def stream(self, type: str, data: Any, step: str) -> None:
        """Publish a model's stream chunk from the thread running its step body.

        Waits until the event is queued for publishing (not sent): chunks keep their order,
        and every chunk of a call is out before the call's result is journaled. The step
        attempt it is stamped with is this thread's (``current_step()``), which
        ``run_coroutine_threadsafe`` hands to the emitting task with the thread's context.
        """
        if self.fatal is not None:
            return
        try:
            future = asyncio.run_coroutine_threadsafe(
                self.ctx.emit(type, data, step=step), self.loop
            )
            future.result(timeout=10)
        except Exception:  # a live chunk is best effort; the journal is the truth
            pass

    @property
    def fatal(self) -> BaseException | None:
        """The first error that ends the run, once one was raised."""
        return self.scope.fatal

    def fail(self, exc: BaseException) -> BaseException:
        """Remember the first error that ends the run; return it."""
        return self.scope.fail(exc)

    async def drive(self, fn: Callable[[], Any]) -> Any:
        """Run blocking ``fn`` (a kickoff) in a thread of its own, inside this run."""
        token = RUN.enter(self)
        try:
            # A limiter of its own: the kickoff holds its thread for the whole run and must
            # neither wait for nor starve the shared pool that step bodies use.
            result = await anyio.to_thread.run_sync(
                fn, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1)
            )
        except _Stop as stop:
            raise self.fatal or stop.error from None
        except BaseException as exc:
            if self.fatal is not None and not isinstance(exc, asyncio.CancelledError):
                raise self.fatal from None
            # Cancelled: the abandoned thread stops at its next call.
            self.fail(exc)
            self._cancel_inflight()
            raise
        finally:
            RUN.leave(token)
        if self.fatal is not None:  # swallowed by the framework on the way out
            raise self.fatal
        return result

    def _cancel_inflight(self) -> None:
        with self._lock:
            inflight = list(self._inflight)
        for future in inflight:
            future.cancel()
