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

from typing import TYPE_CHECKING, Any, Literal

from langgraph.pregel import Pregel
from langgraph.types import Command

from stalwart.adapters.langgraph._saver import StalwartSaver
from stalwart.adapters.langgraph._serde import AllowedType, declared_types, type_key
from stalwart.adapters.langgraph._tools import TaskJournal, TaskNames, to_builtins
from stalwart.checkpoints import RunStore
from stalwart.errors import ConfigurationError
from stalwart.kit import DurableRunner, build, check_max_iterations, check_source

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from langchain_core.runnables import RunnableConfig

    from stalwart import Policies
    from stalwart.actors import App, RunContext
    from stalwart.adapters.langgraph._tools import InterruptHandler
    from stalwart.client import Client


def _store_of(ctx: RunContext) -> RunStore:
    store = ctx.store
    if not isinstance(store, RunStore):
        raise ConfigurationError(
            "DurableGraphRunner needs the run's store (RunStore); run it in a Stalwart worker"
        )
    return store


class DurableGraphRunner(DurableRunner):
    """Runs a compiled LangGraph graph as a durable Stalwart run.

    ``graph`` is anything LangGraph compiles: a ``StateGraph(...).compile()``,
    ``create_react_agent(...)`` or langchain's ``create_agent(...)``, an ``@entrypoint``
    function; or a zero-argument function building one (called once per run).
    ``max_iterations`` is LangGraph's ``recursion_limit`` (supersteps per invocation; None:
    LangGraph's default; ``recursion_limit=`` is accepted as its older name). ``stream``
    must stay unset: streaming graph runs are not supported yet. Registered as agent ``name`` in ``app``; the run's input is the graph's input
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
        graph: Pregel[Any, Any, Any, Any] | Callable[[], Pregel[Any, Any, Any, Any]],
        *,
        max_iterations: int | None = None,
        stream: bool | None = None,
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
        check_source(graph, Pregel, "compiled LangGraph graph")
        if stream:
            raise ConfigurationError(
                f"runner {name!r}: stream=True is not supported for LangGraph yet; leave it unset"
            )
        if max_iterations is not None and recursion_limit is not None:
            raise ConfigurationError(
                "give max_iterations or recursion_limit (its older name), not both"
            )
        self.graph = graph
        self._extra_types = frozenset(type_key(t) for t in allowed_types)
        self.allowed_types: frozenset[tuple[str, str]] = (
            self._extra_types | declared_types(graph)
            if isinstance(graph, Pregel)
            else self._extra_types
        )
        """Types the run's checkpoints may be rebuilt as, besides LangGraph's safe types
        (with a factory, each run adds the types its graph declares)."""
        self.config = config
        self.max_iterations = check_max_iterations(
            max_iterations if max_iterations is not None else recursion_limit
        )
        self.input_fn = input_fn
        self.output_fn = output_fn
        self.on_interrupt = on_interrupt
        self.interrupts = interrupts
        super().__init__(name, app=app, client=client, policies=policies)

    @property
    def recursion_limit(self) -> int | None:
        """Deprecated name of :attr:`max_iterations` (LangGraph's ``recursion_limit``)."""
        return self.max_iterations

    def _run_config(self, run_id: str, names: TaskNames) -> RunnableConfig:
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
        if self.max_iterations is not None:
            base["recursion_limit"] = self.max_iterations
        return base  # type: ignore[return-value]

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Invoke the graph on the run's thread; resume it when a checkpoint exists."""
        store = _store_of(ctx)
        source = build(self.graph, Pregel, "compiled LangGraph graph")
        allowed = self.allowed_types
        if source is not self.graph:  # built by the factory: allow what this graph declares
            allowed = allowed | declared_types(source)
        names = TaskNames()
        journal = TaskJournal(ctx, names)
        saver = StalwartSaver(
            store.redis,
            namespace=store.ns,
            fence_epoch=ctx.epoch,
            task_name=journal.task_name,
            on_task_written=journal.task_written,
            retry_for=store.retry_for,
            allowed_types=allowed,
        )
        await journal.replay(store, saver)
        graph = source.copy(update={"checkpointer": saver})
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
