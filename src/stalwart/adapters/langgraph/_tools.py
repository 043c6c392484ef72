"""LangGraph's tasks as durable steps: every task LangGraph stores is mirrored into the journal.

LangGraph runs nodes, model calls and tool calls (``create_react_agent`` makes each tool call
its own task) as tasks, and resumes by skipping the tasks whose writes are stored. So the
adapter does not wrap model or tool calls; the saver reports each task's first stored writes
and :class:`TaskJournal` journals it as a small step ``lg:<node>:<task id>`` (kind ``node``),
which gives the run its ``step.completed`` events and the step boundaries where a cancel, a
drain or a lost lease stops the graph. Answers to ``interrupt()`` are steps
``lg:resume:<digest>`` (kind ``interrupt``), or durable waits for ``interrupt:<id>`` signals.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from langchain_core.callbacks import BaseCallbackHandler
from langgraph.types import Interrupt

from stalwart.actors import StepSpec
from stalwart.adapters.langgraph._model import KIND_MODEL, ModelCall, ModelCalls, model_spec
from stalwart.checkpoints import StepDone, StepError
from stalwart.errors import StalwartError
from stalwart.kit import canonical_fp, text_digest

if TYPE_CHECKING:
    from uuid import UUID

    from stalwart.actors import RunContext
    from stalwart.adapters.langgraph._live import LiveTasks
    from stalwart.adapters.langgraph._saver import StalwartSaver, TaskWritten
    from stalwart.checkpoints import RunStore

KIND_NODE = "node"
"""Step kind of a mirrored LangGraph task in the run's journal."""
KIND_INTERRUPT = "interrupt"
"""Step kind of an answer to a LangGraph ``interrupt()``."""

_PULL_PREFIX = "~__pregel_pull, "
_SIGNAL_PREFIX = "signal:interrupt:"
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


def to_builtins(value: Any, *, strict: bool = False) -> Any:
    """Graph state as msgpack-encodable plain data (messages and other pydantic models as
    their ``model_dump(mode="json")``, dataclasses as dicts).

    Anything else is shown by its ``repr``, or, with ``strict``, refused with a
    ``TypeError`` (for what must travel to a worker as it is: a run's input).
    """
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_builtins(v, strict=strict) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_builtins(v, strict=strict) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_builtins(dump(mode="json"), strict=strict)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return to_builtins(fields, strict=strict)
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        if strict:
            raise TypeError(
                f"a {type(value).__name__} cannot travel to the worker that runs the graph: "
                "give plain data, pydantic models, dataclasses or LangChain messages (build "
                "other objects on the worker, with the runner's input_fn=)"
            ) from None
        return repr(value)


class TaskNames(BaseCallbackHandler):
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


class TaskJournal:
    """Mirrors LangGraph's stored tasks into the run's journal, and replays the mirror.

    It also keeps the run's answers to ``interrupt()`` (``{interrupt id: value}``), from
    the journal and as they come: a graph invoked again after a crash gets them all back
    (``Command(resume=answers)``), so an answered interrupt is neither raised, announced
    nor asked again, whether or not LangGraph had stored the answer before the crash.
    """

    def __init__(
        self,
        ctx: RunContext,
        names: TaskNames,
        models: ModelCalls,
        on_waiting: Callable[[list[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.names = names
        self.models = models
        self.on_waiting = on_waiting
        """Told which interrupts the run waits on for a signal (``[]`` once answered)."""
        self.answers: dict[str, Any] = {}
        self.live: LiveTasks | None = None
        """A streamed run's open task steps (the task's step is then closed, not called)."""

    def handlers(self) -> list[Any]:
        """The LangChain callback handlers the run's graph gets."""
        handlers: list[Any] = [self.names, self.models]
        return handlers if self.live is None else [*handlers, self.live]

    async def replay(self, store: RunStore, saver: StalwartSaver, thread_id: str) -> None:
        """Account for the tasks earlier owners stored, before the graph runs again.

        LangGraph skips a stored task instead of running it: every mirror step journaled
        before is asked for again here (a replay, from the journal's own entries), and a
        stored task whose mirror step never made it to the journal (its worker died or was
        drained between the two writes) is journaled now. Answered interrupts are taken
        back into :attr:`answers`, their signal waits asked for here (LangGraph does not
        raise an interrupt again once its answer reached the graph).
        """
        journaled: set[str] = set()
        for je in await store.read_journal(self.ctx.run_id):
            e = je.entry
            if isinstance(e, StepDone) and e.key.startswith(_SIGNAL_PREFIX) and "#" not in e.key:
                # Asked for again here: it returns the journaled answer at once.
                interrupt_id = e.key[len(_SIGNAL_PREFIX) :]
                self.answers[interrupt_id] = await self.ctx.wait_for_signal(
                    f"interrupt:{interrupt_id}"
                )
            if isinstance(e, StepDone | StepError) and e.key.startswith("lg:"):
                journaled.add(e.key)
                spec = StepSpec(key=e.key, kind=e.kind, name=e.name, fp=e.fp)
                try:
                    value = await self.ctx.call(spec, _never)
                except StalwartError:
                    continue  # a replayed StepError re-raises; only the accounting matters
                if e.kind == KIND_MODEL and isinstance(e, StepDone):
                    self.models.count(ModelCall(e.model, e.input_tokens, e.output_tokens))
                elif e.kind == KIND_INTERRUPT and isinstance(value, dict):
                    self.answers.update(value)
        for task_id, name, ns, models in await saver.astored_tasks(thread_id):
            key = task_key(name, task_id)
            if key not in journaled:
                calls = [ModelCall(*m) for m in models]
                await self._models(key, task_id, calls, skip=journaled)
                await self._mirror(task_id, name, {"node": name, "ns": ns, "late": True})

    def task_models(self, task_id: str) -> list[tuple[str, int, int]]:
        """The saver's ``task_models``: the usage of the task's model calls, stored with its
        writes (a later owner journals it if this worker stops before it does)."""
        return [
            (c.model, c.input_tokens, c.output_tokens) for c in self.models.done.get(task_id, ())
        ]

    async def _models(
        self,
        key: str,
        task_id: str,
        calls: Sequence[ModelCall],
        skip: Collection[str] = (),
    ) -> None:
        for n, call in enumerate(calls, start=1):
            spec = model_spec(f"{key}/model:{n}", task_id, n, call)
            if spec.key in skip:
                continue  # journaled (and replayed) already

            async def usage(call: ModelCall = call) -> dict[str, Any]:
                return call.data()

            await self.ctx.call(spec, usage)
            self.models.count(call)

    def task_name(self, task_id: str, task_path: str) -> str | None:
        """The saver's ``task_name``: tasks with a name are journaled, the others are not."""
        name = self.names.name(task_id, task_path)
        if name is None or name.startswith("__"):
            return None  # graph input, a state update, or LangGraph's own __start__ node
        return name

    async def task_written(self, written: TaskWritten) -> None:
        """The saver's ``on_task_written``: journal a finished task (its data is stored),
        after one model step per chat model call the task made (their usage)."""
        started = self.names.started.pop(written.task_id, None)
        calls = self.models.done.pop(written.task_id, [])
        await self._models(task_key(written.name, written.task_id), written.task_id, calls)
        summary = {
            "node": written.name,
            "ns": written.checkpoint_ns,
            "cp": written.checkpoint_id,  # where a stream reads the task's writes back
            "writes": list(written.channels),
            "seconds": round(time.monotonic() - started, 6) if started is not None else None,
        }
        await self._mirror(written.task_id, written.name, summary)

    async def _mirror(self, task_id: str, name: str, summary: dict[str, Any]) -> None:
        if self.live is not None and await self.live.close(task_id, summary):
            return  # a streamed task's step, open since the task started
        spec = StepSpec(
            key=task_key(name, task_id),
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
    ) -> dict[str, Any]:
        """The answers to ``interrupts``, ``{id: value}``, journaled (asked of ``handler``
        the first time), plus every earlier answer of the run.

        Without a handler, each interrupt not answered yet waits for the durable signal
        ``interrupt:<id>`` (the run passivates while nobody answers), or, with
        ``mode="fail"``, the run fails with :class:`GraphInterrupted`.
        """
        pending = [i for i in interrupts if i.id not in self.answers]
        if not pending:
            return dict(self.answers)
        if handler is None and mode == "signal":
            self.answers.update(await self._wait_for_answers(pending))
            return dict(self.answers)
        if handler is None:
            raise GraphInterrupted(run_id, pending)
        ids = sorted(i.id for i in pending)
        spec = StepSpec(
            key=f"lg:resume:{text_digest(','.join(ids))}",
            kind=KIND_INTERRUPT,
            name="resume",
            fp=canonical_fp("langgraph.resume", ids),
        )

        async def answer() -> dict[str, Any]:
            reply = handler(pending)
            if inspect.isawaitable(reply):
                reply = await reply
            return {str(k): to_builtins(v) for k, v in dict(reply).items()}

        self.answers.update(await self.ctx.call(spec, answer))
        return dict(self.answers)

    async def _wait_for_answers(self, pending: Sequence[Interrupt]) -> dict[str, Any]:
        pending = sorted(pending, key=lambda i: i.id)
        if self.on_waiting is not None:
            await self.on_waiting([i.id for i in pending])
        # A run placed again because its answer arrived (after a passivation or a crash)
        # finds the answer in its inbox: that interrupt is answered, not announced again.
        sent = await self._signals_sent()
        unanswered = [i for i in pending if f"interrupt:{i.id}" not in sent]
        if unanswered:
            await self.ctx.emit(
                "graph.interrupted",
                {
                    "interrupts": [
                        {"id": i.id, "value": to_builtins(i.value), "signal": f"interrupt:{i.id}"}
                        for i in unanswered
                    ]
                },
                always=True,
            )
        answers = {i.id: await self.ctx.wait_for_signal(f"interrupt:{i.id}") for i in pending}
        if self.on_waiting is not None:
            await self.on_waiting([])
        return answers

    async def _signals_sent(self) -> set[str]:
        """Names of the signals in the run's inbox not consumed yet."""
        store = self.ctx.store
        rows = await store.redis.xrange(store.keys.signals)
        return {_text((fields or {}).get(b"name", b"")) for _, fields in rows or ()}


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def task_key(name: str, task_id: str) -> str:
    """The journal key of a mirrored task."""
    return f"lg:{name}:{task_id}"


async def _never() -> Any:
    raise AssertionError("a journaled LangGraph step was asked to run again")
