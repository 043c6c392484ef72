"""``DurableGraphRunner``: a compiled LangGraph graph as a durable Stalwart run.

LangGraph already knows how to resume: given a checkpointer and ``durability="sync"``, it
stores every finished task's writes and every superstep's checkpoint before going on, and
on the next invocation of the thread it skips the tasks whose writes are stored. The runner
binds a :class:`StalwartSaver` to the run and invokes the graph on the run's thread (its run
id, or the ``thread_id`` of the caller's per-run ``config``: see ``_thread``), writes fenced
by the run's epoch; after a crash the next owner invokes it again without the input and
LangGraph continues from the last stored task.

Each task's first stored writes are also mirrored into the run's journal as a small step
(kind ``node``), after one step of kind ``model`` per chat model call the task made (its
usage, for the run's budgets), which gives the run its ``step.completed`` events and the
step boundaries where a cancel, a drain or a lost lease stops the graph. The checkpoint of
each superstep is where it stops: it is stored first, so the next owner continues from it.

``interrupt()``: LangGraph stores the interrupt and returns it from the invocation. With
``interrupts="return"`` the run ends there and returns the state with ``__interrupt__``, as
``graph.invoke`` does; the next run on the thread resumes it with ``Command(resume=...)``.
With an ``on_interrupt`` handler, its answer is journaled as a step (kind ``interrupt``,
keyed by the interrupt ids) and the graph is invoked again with ``Command(resume=...)``.
Without a handler (the default, ``interrupts="signal"``) each interrupt waits for the
durable signal ``interrupt:<id>``: a ``graph.interrupted`` event names it, the run
passivates while nobody answers (status ``waiting``, lease released), a client answers with
``handle.signal(f"interrupt:{id}", value)``, and the run resumes on any worker. After a
crash the run's answers are given back to the graph (never asked or announced twice). With
``interrupts="fail"`` the run fails with :class:`GraphInterrupted` and keeps its checkpoints.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Literal, cast

from langgraph._internal._constants import CONFIG_KEY_RUNTIME, CONFIG_KEY_STREAM
from langgraph.pregel import Pregel
from langgraph.pregel.protocol import StreamProtocol
from langgraph.runtime import DEFAULT_RUNTIME
from langgraph.types import Command

from stalwart.adapters.langgraph import _codec, _request, _stream
from stalwart.adapters.langgraph._live import LiveTasks
from stalwart.adapters.langgraph._model import ModelCalls
from stalwart.adapters.langgraph._saver import StalwartSaver
from stalwart.adapters.langgraph._serde import AllowedType, declared_types, type_key
from stalwart.adapters.langgraph._thread import ThreadFence, waiting_run
from stalwart.adapters.langgraph._tools import TaskJournal, TaskNames, to_builtins
from stalwart.checkpoints import RunStore
from stalwart.errors import ConfigurationError, NonDeterminismError
from stalwart.kit import DurableRunner, build, check_max_iterations, check_source

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

    from langchain_core.runnables import RunnableConfig
    from langgraph.types import StateSnapshot

    from stalwart import Policies
    from stalwart.actors import App, RunContext
    from stalwart.adapters.langgraph._tools import InterruptHandler
    from stalwart.client import Client, RunHandle


_RUN_KEY = "stalwart_run_id"


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
    LangGraph's default; ``recursion_limit=`` is accepted as its older name). ``stream``:
    ``None`` (the default) streams a run's tokens and custom writes live when it was started
    by :meth:`astream` (as a plain graph streams when asked to), ``True`` streams every run
    (a consumer attaching with :meth:`astream_run` gets tokens), ``False`` none (``astream``
    then gives states, updates and whole messages only). Registered as agent
    ``name`` in ``app``. A run's input is the graph's input (``input_fn`` converts it first)
    or a ``Command``, with LangGraph's per-run ``config`` (``runner.run(input,
    config={"configurable": {"thread_id": "t1"}})``; see :meth:`request`). Its result is
    the final state (``output_fn`` picks something else from the state first), which
    :meth:`run` returns as ``graph.invoke`` would (:meth:`decode_result`); :meth:`astream`
    is ``graph.astream(...)`` with its stream modes and :meth:`aget_state` is
    ``graph.aget_state(config)`` for durable runs. ``conversation=`` on ``run``/``submit``/
    ``astream`` is the LangGraph thread the run continues (see :meth:`submit`).

    Every task's writes and every superstep's checkpoint go to Redis before the graph goes
    on (``durability="sync"``), fenced by the run's epoch. When the worker dies, another one
    resumes the graph from its last stored task: a finished node, model call or tool call
    (in ``create_react_agent``, each tool call is its own task) does not run again.

    ``interrupt()``: by default (``interrupts="signal"``) the run waits durably for the
    signal ``interrupt:<id>``; with ``interrupts="return"`` it ends and returns the state
    with ``__interrupt__`` (resume with ``runner.run(Command(resume=...), config=...)`` on
    the same thread); with ``on_interrupt`` the handler's answer is journaled; with
    ``interrupts="fail"`` the run fails with :class:`GraphInterrupted`.

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
        interrupts: Literal["signal", "return", "fail"] = "signal",
        allowed_types: Iterable[AllowedType] = (),
    ) -> None:
        check_source(graph, Pregel, "compiled LangGraph graph")
        if max_iterations is not None and recursion_limit is not None:
            raise ConfigurationError(
                "give max_iterations or recursion_limit (its older name), not both"
            )
        self.graph = graph
        self.stream = stream
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

    def request(
        self,
        input: Any,
        *,
        config: RunnableConfig | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """The run's wire input: the graph's input or a ``Command``, and per-run ``config``.

        ``config`` is LangGraph's own per-invocation config, as plain data:
        ``{"configurable": {"thread_id": ..., <your keys>}, "recursion_limit": ...,
        "tags": [...], "metadata": {...}, "run_name": ...}``. With a ``thread_id`` the run
        continues that thread's state (a thread of its own otherwise). ``input`` may be a
        ``Command(resume=..., update=..., goto=...)``, as with ``graph.invoke``. Callbacks
        and other live objects cannot travel to the worker: the error says to put them on
        the runner's own ``config=``.
        """
        if options:
            raise TypeError(
                f"DurableGraphRunner takes config= per run, not {', '.join(sorted(options))}: "
                "LangGraph's per-run options go in the config (configurable, recursion_limit...)"
            )
        return _request.encode(input, config)

    async def submit(
        self,
        input: Any,
        *,
        run_id: str | None = None,
        config: RunnableConfig | Mapping[str, Any] | None = None,
        conversation: str = "",
        on_busy: str = "queue",
        **options: Any,
    ) -> RunHandle:
        """Start a run (see :meth:`request`) and return its handle at once.

        ``conversation``: the LangGraph thread the run continues (its ``thread_id``; a
        ``config`` naming another thread is refused). The thread's checkpoints are the
        conversation's history, stored once in Redis: the next run of the conversation
        starts from the state the previous one ended with. ``on_busy`` says what happens
        when a run of the conversation is still going (``"queue"``, ``"reject"``,
        ``"interrupt"``, Stalwart's conversation policies).

        ``Command(resume=...)`` with the ``config`` of a thread whose run waits on
        interrupts (``interrupts="signal"``) answers that run instead: each interrupt's
        signal ``interrupt:<id>`` gets its value (``resume`` maps interrupt ids to values,
        or is the value of the one interrupt waiting) and the waiting run's handle is
        returned, so ``runner.run(Command(resume=...), config=config)`` returns the state
        the graph ends with, as in LangGraph's own loop.
        """
        return await self._submit(
            input, run_id, config, conversation, on_busy, stream=False, options=options
        )

    async def _submit(
        self,
        input: Any,
        run_id: str | None,
        config: RunnableConfig | Mapping[str, Any] | None,
        conversation: str,
        on_busy: str,
        *,
        stream: bool,
        options: Mapping[str, Any],
    ) -> RunHandle:
        config = _request.with_thread(config, conversation)
        if options:
            self.request(input, config=config, **options)  # raises: says what to do instead
        payload = _request.encode(input, config, stream=stream)
        client = await self.client()
        thread_id = _request.decode(payload).thread_id
        if isinstance(input, Command) and input.resume is not None and thread_id is not None:
            found = await waiting_run(client.store.redis, client.store.ns, thread_id)
            if found is not None:
                handle = client.handle(found[0], self.name)
                for interrupt_id, value in _request.answers_for(input.resume, found[1]).items():
                    await handle.signal(f"interrupt:{interrupt_id}", to_builtins(value))
                return handle
        return await client.submit(
            self.name, payload, run_id=run_id, conversation=conversation, on_busy=on_busy
        )

    def decode_result(self, data: Any) -> Any:
        """What ``graph.invoke`` returns: the final state, LangChain messages as message
        objects and, when the graph stopped at an interrupt, ``__interrupt__`` as
        ``Interrupt`` objects (``output_fn``'s result is returned as it is)."""
        return data if self.output_fn is not None else _request.rebuild(data)

    async def aget_state(
        self, config: RunnableConfig | Mapping[str, Any], *, subgraphs: bool = False
    ) -> StateSnapshot:
        """``graph.aget_state(config)`` on the durable thread ``config`` names, from Redis.

        The tutorial's ``snapshot = graph.get_state(config)`` (``snapshot.next``,
        ``snapshot.values``, ``snapshot.interrupts``) for a thread that runs of this runner
        wrote; read-only, from any process with the runner's client.
        """
        client = await self.client()
        source = build(self.graph, Pregel, "compiled LangGraph graph")
        saver = StalwartSaver(
            client.store.redis,
            namespace=client.store.ns,
            allowed_types=self.allowed_types | declared_types(source),
        )
        graph = source.copy(update={"checkpointer": saver})
        return await graph.aget_state(cast("RunnableConfig", config), subgraphs=subgraphs)

    async def astream(
        self,
        input: Any,
        *,
        config: RunnableConfig | Mapping[str, Any] | None = None,
        stream_mode: str | Sequence[str] = "values",
        subgraphs: bool = False,
        run_id: str | None = None,
        conversation: str = "",
        on_busy: str = "queue",
        **options: Any,
    ) -> AsyncIterator[Any]:
        """``graph.astream(input, config, stream_mode=..., subgraphs=...)`` as a durable run.

        Submits the run (as :meth:`submit`) and yields what LangGraph's own stream yields:
        ``"values"`` the state after each superstep the run stores (then the state with
        ``__interrupt__`` when the graph stops at one), ``"updates"`` ``{node: update}`` per
        finished task, ``"messages"`` ``(AIMessageChunk, metadata)`` per model token (the
        model streams inside the run, as it does under ``stream_mode="messages"``) and the
        other messages nodes wrote, ``"custom"`` what nodes wrote with
        ``get_stream_writer()``. One mode yields items, a list of modes ``(mode, item)``,
        ``subgraphs=True`` ``(namespace, ...)``.

        When a task's attempt dies (its worker is lost, it is retried) the stream yields a
        :class:`~stalwart.adapters.StreamReset` before that task streams again (for a list
        of modes as ``("stalwart.reset", reset)``): drop what you showed of the task
        (``reset.step``). States, updates and whole messages come from stored checkpoints,
        so they are never void.
        """
        modes, single = _stream.check_modes(stream_mode)
        live = self.stream is not False and bool({"messages", "custom"} & set(modes))
        config = _request.with_thread(config, conversation)
        handle = await self._submit(
            input, run_id, config, conversation, on_busy, stream=live, options=options
        )
        thread_id = _request.decode(_request.encode(None, config)).thread_id
        view = await self._view(
            thread_id or handle.run_id,
            handle.run_id,
            modes,
            single=single,
            subgraphs=subgraphs,
            resumes=isinstance(input, Command),
        )
        async for item in _stream.stream(handle, self.stream_handle(handle), view):
            yield item

    async def astream_run(
        self,
        run: RunHandle | str,
        *,
        stream_mode: str | Sequence[str] = "values",
        subgraphs: bool = False,
        config: RunnableConfig | Mapping[str, Any] | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`astream` for a run already submitted (a handle or a run id), from any
        process, at any time: what the run stored before is yielded first (whole messages
        for the model calls that completed), then the live items of the task in flight.
        ``config`` names the run's thread when it was given one."""
        modes, single = _stream.check_modes(stream_mode)
        client = await self.client()
        handle = run if not isinstance(run, str) else client.handle(run, self.name)
        thread_id = _request.decode(_request.encode(None, config)).thread_id
        view = await self._view(
            thread_id or handle.run_id,
            handle.run_id,
            modes,
            single=single,
            subgraphs=subgraphs,
            resumes=False,
        )
        async for item in _stream.stream(handle, self.stream_handle(handle), view):
            yield item

    async def _view(
        self,
        thread_id: str,
        run_id: str,
        modes: list[str],
        *,
        single: bool,
        subgraphs: bool,
        resumes: bool,
    ) -> _stream.GraphStream:
        client = await self.client()
        source = build(self.graph, Pregel, "compiled LangGraph graph")
        saver = StalwartSaver(
            client.store.redis,
            namespace=client.store.ns,
            allowed_types=self.allowed_types | declared_types(source),
        )
        channels = source.output_channels
        return _stream.GraphStream(
            _stream.Checkpoints(saver, thread_id, _RUN_KEY, run_id),
            modes=modes,
            single=single,
            subgraphs=subgraphs,
            keys=[channels] if isinstance(channels, str) else list(channels),
            resumes=resumes,
        )

    def _run_config(
        self,
        run_id: str,
        handlers: list[Any] | None,
        thread_id: str | None = None,
        req: _request.Request | None = None,
    ) -> RunnableConfig:
        """The graph's config: the runner's, the run's own (``req``), the handlers that
        journal tasks and model calls, and the thread (the run id unless ``thread_id``)."""
        req = req if req is not None else _request.Request()
        thread_id = thread_id or run_id
        handlers = handlers or []
        base: dict[str, Any] = dict(self.config or {})
        for key, value in req.config.items():
            if key == "configurable":
                continue
            if key in ("tags", "metadata") and base.get(key):
                value = [*base[key], *value] if key == "tags" else {**base[key], **value}
            base[key] = value
        callbacks = base.get("callbacks")
        if callbacks is None:
            callbacks = handlers
        elif isinstance(callbacks, list):
            callbacks = [*handlers, *callbacks]
        else:  # a callback manager
            callbacks = callbacks.copy()
            for handler in handlers:
                callbacks.add_handler(handler, inherit=True)
        base["callbacks"] = callbacks
        base["configurable"] = {
            **base.get("configurable", {}),
            **req.config.get("configurable", {}),
            "thread_id": thread_id,
            # In every checkpoint's metadata: tells a resumed run its own checkpoints from
            # an earlier run's on the same thread.
            _RUN_KEY: run_id,
        }
        if self.max_iterations is not None and "recursion_limit" not in req.config:
            base["recursion_limit"] = self.max_iterations
        return base  # type: ignore[return-value]

    async def execute(self, ctx: RunContext, input: Any) -> Any:
        """Invoke the graph on the run's thread; resume it when this run already started."""
        store = _store_of(ctx)
        req = _request.decode(input)
        thread_id = req.thread_id or ctx.run_id
        source = build(self.graph, Pregel, "compiled LangGraph graph")
        allowed = self.allowed_types
        if source is not self.graph:  # built by the factory: allow what this graph declares
            allowed = allowed | declared_types(source)
        fence = None
        if thread_id != ctx.run_id:
            fence = ThreadFence(store.ns, thread_id, ctx.run_id, ctx.epoch)
            await fence.claim(store.redis)
        names = TaskNames()
        models = ModelCalls(self.app.get(self.name).policies.limits)
        on_waiting = partial(fence.waiting, store.redis) if fence is not None else None
        journal = TaskJournal(ctx, names, models, on_waiting)
        if self.stream is True or (req.stream and self.stream is None):
            journal.live = LiveTasks(ctx, names)
        saver = StalwartSaver(
            store.redis,
            namespace=store.ns,
            fence_epoch=ctx.epoch,
            task_name=journal.task_name,
            task_models=journal.task_models,
            on_task_written=journal.task_written,
            retry_for=store.retry_for,
            allowed_types=allowed,
            run_id=ctx.run_id,
        )
        result = await self._invoke(ctx, req, source, saver, journal, thread_id)
        if fence is not None:
            # The claim stays: the next run takes the thread once this run's record says it
            # ended (given back here, a crash before the run's end is journaled would let
            # another run in before this one resumes). Its task list is no longer needed.
            await store.redis.delete(_codec.Keys(store.ns, thread_id).tasks_of(ctx.run_id))
        return result

    async def _invoke(
        self,
        ctx: RunContext,
        req: _request.Request,
        source: Pregel[Any, Any, Any, Any],
        saver: StalwartSaver,
        journal: TaskJournal,
        thread_id: str,
    ) -> Any:
        await journal.replay(_store_of(ctx), saver, thread_id)
        graph = source.copy(update={"checkpointer": saver})
        live = journal.live
        config = _relay(self._run_config(ctx.run_id, journal.handlers(), thread_id, req), live)
        resume = req.command.resume if req.command is not None else None
        if isinstance(resume, dict) and _request.is_resume_map(resume):
            journal.answers.update(resume)
        payload: Any
        if await self._started(saver, config, ctx.run_id, thread_id):
            # Invoked again after a crash: continue from the stored tasks, with every answer
            # the run has given, so answered interrupts are not raised again.
            payload = Command(resume=dict(journal.answers)) if journal.answers else None
        elif req.command is not None:
            payload = req.command
        else:
            payload = self.input_fn(req.input) if self.input_fn is not None else req.input
        try:
            while True:
                out = await _ainvoke(graph, payload, config, live)
                if saver.stop_reason is not None:
                    raise saver.stop_reason
                if not out.interrupts or self.interrupts == "return":
                    break
                if all(i.id in journal.answers for i in out.interrupts) and isinstance(
                    payload, Command
                ):
                    raise NonDeterminismError(
                        f"run {ctx.run_id!r}: the graph raised interrupt(s) "
                        f"{', '.join(sorted(i.id for i in out.interrupts))} again after "
                        "they were answered; the graph changed since the run started"
                    )
                answers = await journal.resume(
                    ctx.run_id, out.interrupts, self.on_interrupt, self.interrupts
                )
                payload = Command(resume=answers)
        except Exception as exc:
            # A lost lease, a cancel or a drain seen by a write LangGraph ran in the
            # background explains whatever the graph raised after it.
            stop = saver.stop_reason
            if stop is not None and stop is not exc:
                raise stop from exc
            raise
        value = out.value
        if out.interrupts and isinstance(value, dict):
            value = {**value, "__interrupt__": list(out.interrupts)}  # as graph.invoke shows it
        if self.output_fn is not None:
            value = self.output_fn(value)
        return to_builtins(value)

    async def _started(
        self, saver: StalwartSaver, config: RunnableConfig, run_id: str, thread_id: str
    ) -> bool:
        """Whether this run already handed its input to the graph (an earlier owner did)."""
        head = await saver.aget_tuple(config)
        if head is None:
            return False
        if thread_id == run_id:
            return True  # the run's own thread: any checkpoint is this run's
        return bool(head.metadata.get(_RUN_KEY) == run_id)


def _nowhere(chunk: Any) -> None:
    """LangGraph's own stream of the run's graph: nothing reads it (see ``_live``)."""


async def _ainvoke(
    graph: Pregel[Any, Any, Any, Any], payload: Any, config: RunnableConfig, live: LiveTasks | None
) -> Any:
    try:
        return await graph.ainvoke(payload, config, durability="sync", version="v2")
    finally:
        if live is not None:
            await live.give_up_all()  # the steps of tasks that did not finish


def _relay(config: RunnableConfig, live: LiveTasks | None) -> RunnableConfig:
    """For a streamed run: make ``live`` the graph's custom stream writer
    (``get_stream_writer()`` in a node).

    LangGraph hands a parent's writer down when the config carries a stream, as it does for
    a subgraph; here the parent is the run, which relays the writes from each task's step.
    """
    if live is None:
        return config
    configurable = config["configurable"]
    configurable[CONFIG_KEY_STREAM] = StreamProtocol(_nowhere, set())
    configurable[CONFIG_KEY_RUNTIME] = DEFAULT_RUNTIME.override(stream_writer=live.write)
    return config
