"""``DurableGraphRunner``: a compiled LangGraph graph as a durable Stalwart run.

LangGraph already knows how to resume: given a checkpointer and ``durability="sync"``, it
stores every finished task's writes and every superstep's checkpoint before going on, and
on the next invocation of the thread it skips the tasks whose writes are stored. The runner
binds a :class:`StalwartSaver` to the run (thread id = run id, writes fenced by the run's
epoch) and invokes the graph; after a crash the next owner invokes it again with no input
and LangGraph continues from the last stored task.

Each task's first stored writes are also mirrored into the run's journal as a small step
(kind ``node``), which gives the run its ``step.completed`` events and the step boundaries
where a cancel, a drain or a lost lease stops the graph. The checkpoint of each superstep
is where it stops: it is stored first, so the next owner continues from it.

``interrupt()``: LangGraph stores the interrupt and returns it from the invocation. With an
``on_interrupt`` handler, its answer is journaled as a step (kind ``interrupt``, keyed by
the interrupt ids) and the graph is invoked again with ``Command(resume=answer)``; after a
crash the journaled answer is replayed, never asked twice. Without a handler (the default,
``interrupts="signal"``) each interrupt waits for the durable signal ``interrupt:<id>``:
a ``graph.interrupted`` event names it, the run passivates while nobody answers (status
``waiting``, lease released), a client answers with ``handle.signal(f"interrupt:{id}",
value)``, and the run resumes on any worker. With ``interrupts="fail"`` the run fails with
:class:`GraphInterrupted` and keeps its checkpoints.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.types import Command, Interrupt

from stalwart.actors import StepSpec
from stalwart.adapters._base import DurableRunner, canonical_fp, text_digest
from stalwart.adapters.langgraph._saver import StalwartSaver, TaskWritten
from stalwart.adapters.langgraph._serde import AllowedType, declared_types, type_key
from stalwart.checkpoints import CheckpointStore, StepDone, StepError
from stalwart.errors import ConfigurationError, StalwartError

if TYPE_CHECKING:
    from uuid import UUID

    from langchain_core.runnables import RunnableConfig
    from langgraph.pregel import Pregel

    from stalwart.actors import App, RunContext
    from stalwart.client import Client
    from stalwart.policies import Policies

KIND_NODE = "node"
"""Step kind of a mirrored LangGraph task in the run's journal."""
KIND_INTERRUPT = "interrupt"
"""Step kind of an answer to a LangGraph ``interrupt()``."""

_PULL_PREFIX = "~__pregel_pull, "
_MAX_MESSAGE = 2000

InterruptHandler = Callable[[Sequence[Interrupt]], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
"""Answers interrupts: gets them, returns ``{interrupt id: resume value}``."""


class GraphInterrupted(StalwartError):
    """The graph called ``interrupt()`` under ``interrupts="fail"`` and no handler answers it.

    The run ends failed with this error type; its checkpoints stay in Redis.
    """

    def __init__(self, run_id: str, interrupts: Sequence[Interrupt]) -> None:
        shown = "; ".join(f"{i.id}: {to_builtins(i.value)!r}" for i in interrupts)
        if len(shown) > _MAX_MESSAGE:
            shown = shown[:_MAX_MESSAGE] + "..."
        super().__init__(
            f"run {run_id!r}: the graph is interrupted, waiting for input ({shown}). "
            "The runner was built with interrupts='fail', so the run ends here with its "
            "checkpoints kept; use on_interrupt= to answer interrupts from code, or the "
            "default interrupts='signal' to wait for a durable signal."
        )
        self.run_id = run_id
        self.interrupts = [(i.id, to_builtins(i.value)) for i in interrupts]


def to_builtins(value: Any) -> Any:
    """Graph state as msgpack-encodable plain data (messages and other pydantic models as
    their ``model_dump(mode="json")``, dataclasses as dicts)."""
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_builtins(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_builtins(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_builtins(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_builtins({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


def _store_of(ctx: RunContext) -> CheckpointStore:
    store = ctx.store
    if not isinstance(store, CheckpointStore):
        raise ConfigurationError(
            "DurableGraphRunner needs the run's CheckpointStore; run it in a Stalwart worker"
        )
    return store


class _TaskNames(BaseCallbackHandler):
    """Learns each task's node name and start time from LangGraph's run metadata, so the
    journal says ``tools`` rather than a task id (``put_writes`` only gets the id)."""

    run_inline = True

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.started: dict[str, float] = {}

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        ns = (metadata or {}).get("langgraph_checkpoint_ns")
        if not isinstance(ns, str) or not ns:
            return
        name, _, task_id = ns.rpartition("|")[2].rpartition(":")
        if task_id and task_id not in self.names:
            self.names[task_id] = name
            self.started[task_id] = time.monotonic()

    def name(self, task_id: str, task_path: str) -> str | None:
        if task_id in self.names:
            return self.names[task_id]
        if task_path.startswith(_PULL_PREFIX):
            return task_path[len(_PULL_PREFIX) :].split(", ", 1)[0]
        return None


class _Journal:
    """Mirrors LangGraph's stored tasks into the run's journal, and replays the mirror."""

    def __init__(self, ctx: RunContext, names: _TaskNames) -> None:
        self.ctx = ctx
        self.names = names

    async def replay(self, store: CheckpointStore, saver: StalwartSaver) -> None:
        """Account for the tasks earlier owners stored, before the graph runs again.

        LangGraph skips a stored task instead of running it: every mirror step journaled
        before is asked for again here (a replay, from the journal's own entries), and a
        stored task whose mirror step never made it to the journal (its worker died or was
        drained between the two writes) is journaled now.
        """
        journaled: set[str] = set()
        for je in await store.read_journal(self.ctx.run_id):
            e = je.entry
            if isinstance(e, StepDone | StepError) and e.key.startswith("lg:"):
                journaled.add(e.key)
                spec = StepSpec(key=e.key, kind=e.kind, name=e.name, fp=e.fp)
                try:
                    await self.ctx.call(spec, _never)
                except StalwartError:
                    pass  # a replayed StepError re-raises; only the accounting matters here
        for task_id, name, ns in await saver.astored_tasks(self.ctx.run_id):
            if _task_key(name, task_id) not in journaled:
                await self._mirror(task_id, name, {"node": name, "ns": ns, "late": True})

    def task_name(self, task_id: str, task_path: str) -> str | None:
        """The saver's ``task_name``: tasks with a name are journaled, the others are not."""
        name = self.names.name(task_id, task_path)
        if name is None or name.startswith("__"):
            return None  # graph input, a state update, or LangGraph's own __start__ node
        return name

    async def task_written(self, written: TaskWritten) -> None:
        """The saver's ``on_task_written``: journal a finished task (its data is stored)."""
        started = self.names.started.pop(written.task_id, None)
        summary = {
            "node": written.name,
            "ns": written.checkpoint_ns,
            "writes": list(written.channels),
            "seconds": round(time.monotonic() - started, 6) if started is not None else None,
        }
        await self._mirror(written.task_id, written.name, summary)

    async def _mirror(self, task_id: str, name: str, summary: dict[str, Any]) -> None:
        spec = StepSpec(
            key=_task_key(name, task_id),
            kind=KIND_NODE,
            name=name,
            fp=canonical_fp("langgraph.task", task_id),
        )

        async def done() -> dict[str, Any]:
            return summary

        await self.ctx.call(spec, done)

    async def resume(
        self,
        run_id: str,
        interrupts: Sequence[Interrupt],
        handler: InterruptHandler | None,
        mode: str = "signal",
    ) -> Any:
        """The journaled answer to ``interrupts`` (asked of ``handler`` the first time).

        Without a handler, each interrupt waits for the durable signal
        ``interrupt:<id>`` (the run passivates while nobody answers), or, with
        ``mode="fail"``, the run fails with :class:`GraphInterrupted`.
        """
        if handler is None and mode == "signal":
            return await self._wait_for_answers(interrupts)
        if handler is None:
            raise GraphInterrupted(run_id, interrupts)
        ids = sorted(i.id for i in interrupts)
        spec = StepSpec(
            key=f"lg:resume:{text_digest(','.join(ids))}",
            kind=KIND_INTERRUPT,
            name="resume",
            fp=canonical_fp("langgraph.resume", ids),
        )

        async def answer() -> dict[str, Any]:
            reply = handler(interrupts)
            if inspect.isawaitable(reply):
                reply = await reply
            return {str(k): to_builtins(v) for k, v in dict(reply).items()}

        return await self.ctx.call(spec, answer)

    async def _wait_for_answers(self, interrupts: Sequence[Interrupt]) -> dict[str, Any]:
        pending = sorted(interrupts, key=lambda i: i.id)
        await self.ctx.emit(
            "graph.interrupted",
            {
                "interrupts": [
                    {"id": i.id, "value": to_builtins(i.value), "signal": f"interrupt:{i.id}"}
                    for i in pending
                ]
            },
            always=True,
        )
        return {i.id: await self.ctx.wait_for_signal(f"interrupt:{i.id}") for i in pending}


def _task_key(name: str, task_id: str) -> str:
    return f"lg:{name}:{task_id}"


async def _never() -> None:
    raise AssertionError("a journaled LangGraph step was asked to run again")


class DurableGraphRunner(DurableRunner):
    """Runs a compiled LangGraph graph as a durable Stalwart run.

    ``graph`` is anything LangGraph compiles: a ``StateGraph(...).compile()``,
    ``create_react_agent(...)`` or langchain's ``create_agent(...)``, an ``@entrypoint``
    function. Registered as agent ``name`` in ``app``; the run's input is the graph's input
    (``input_fn`` converts it first) and its result is the final state as plain data
    (``output_fn`` picks something else from the state first).

    Every task's writes and every superstep's checkpoint go to Redis before the graph goes
    on (``durability="sync"``), fenced by the run's epoch. When the worker dies, another one
    resumes the graph from its last stored task: a finished node, model call or tool call
    (in ``create_react_agent``, each tool call is its own task) does not run again.

    ``interrupt()``: with ``on_interrupt``, its answer is journaled and the graph resumes
    with ``Command(resume=...)``; without it the run fails with :class:`GraphInterrupted`.

    Checkpoints are rebuilt only as allow-listed types: LangGraph's safe types (messages,
    documents, ``Send``/``Command``/``Interrupt``, datetimes...), the pydantic models,
    dataclasses and enums the graph's schemas and channels declare (subgraphs included),
    and ``allowed_types`` (classes, or ``(module, name)`` pairs) for the rest: values only
    known at run time, such as an ``interrupt()`` payload or an ``@entrypoint``'s state. A
    checkpoint naming another type fails the run with
    :class:`~stalwart.errors.DisallowedTypeError`; nothing it names is imported.
    """

    def __init__(
        self,
        name: str,
        graph: Pregel[Any, Any, Any, Any],
        *,
        app: App | None = None,
        client: Client | None = None,
        policies: Policies | None = None,
        config: RunnableConfig | None = None,
        recursion_limit: int | None = None,
        input_fn: Callable[[Any], Any] | None = None,
        output_fn: Callable[[Any], Any] | None = None,
        on_interrupt: InterruptHandler | None = None,
        interrupts: Literal["signal", "fail"] = "signal",
        allowed_types: Iterable[AllowedType] = (),
    ) -> None:
        self.graph = graph
        self.allowed_types: frozenset[tuple[str, str]] = frozenset(
            declared_types(graph) | {type_key(t) for t in allowed_types}
        )
        """Types the run's checkpoints may be rebuilt as, besides LangGraph's safe types."""
        self.config = config
        self.recursion_limit = recursion_limit
        self.input_fn = input_fn
        self.output_fn = output_fn
        self.on_interrupt = on_interrupt
        self.interrupts = interrupts
        super().__init__(name, app=app, client=client, policies=policies)

    def _run_config(self, run_id: str, names: _TaskNames) -> RunnableConfig:
        base: dict[str, Any] = dict(self.config or {})
        callbacks = base.get("callbacks")
        if callbacks is None:
            callbacks = [names]
        elif isinstance(callbacks, list):
            callbacks = [names, *callbacks]
        else:  # a callback manager
            callbacks = callbacks.copy()
            callbacks.add_handler(names, inherit=True)
        base["callbacks"] = callbacks
        base["configurable"] = {**base.get("configurable", {}), "thread_id": run_id}
        if self.recursion_limit is not None:
            base["recursion_limit"] = self.recursion_limit
        return base  # type: ignore[return-value]

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Invoke the graph on the run's thread; resume it when a checkpoint exists."""
        store = _store_of(ctx)
        names = _TaskNames()
        journal = _Journal(ctx, names)
        saver = StalwartSaver(
            store.redis,
            namespace=store.ns,
            fence_epoch=ctx.epoch,
            task_name=journal.task_name,
            on_task_written=journal.task_written,
            retry_for=store.retry_for,
            allowed_types=self.allowed_types,
        )
        await journal.replay(store, saver)
        graph = self.graph.copy(update={"checkpointer": saver})
        config = self._run_config(ctx.run_id, names)
        resuming = await saver.aget_tuple(config) is not None
        payload: Any = None
        if not resuming:
            payload = self.input_fn(input) if self.input_fn is not None else input
        try:
            while True:
                out = await graph.ainvoke(payload, config, durability="sync", version="v2")
                if saver.stop_reason is not None:
                    raise saver.stop_reason
                if not out.interrupts:
                    break
                answer = await journal.resume(
                    ctx.run_id, out.interrupts, self.on_interrupt, self.interrupts
                )
                payload = Command(resume=answer)
        except Exception as exc:
            # A lost lease, a cancel or a drain seen by a write LangGraph ran in the
            # background explains whatever the graph raised after it.
            stop = saver.stop_reason
            if stop is not None and stop is not exc:
                raise stop from exc
            raise
        value = out.value
        if self.output_fn is not None:
            value = self.output_fn(value)
        return to_builtins(value)
