"""``StalwartSaver``: a LangGraph checkpointer in Redis, optionally fenced by a run's epoch.

The methods share one implementation: each operation is a plan (``_plans``), a generator
that yields Redis commands and receives their replies (no I/O of its own), driven either by
a synchronous or by an asynchronous client (``_driver``). ``TaskWritten`` lives in
``_plans`` and is importable from here as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

from stalwart.adapters.langgraph import _codec, _maintenance
from stalwart.adapters.langgraph._driver import Driver, Plan
from stalwart.adapters.langgraph._plans import Out, Plans, Shared, TaskWritten, conf
from stalwart.adapters.langgraph._sealed import SealedSerde
from stalwart.adapters.langgraph._serde import AllowedType, SafeSerializer
from stalwart.checkpoints import redis_clients
from stalwart.errors import ConfigurationError, RunCancelled

__all__ = ["StalwartSaver", "TaskWritten"]

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Iterator,
        Sequence,
    )

    import redis
    import redis.asyncio as aioredis
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.serde.base import SerializerProtocol


class StalwartSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer stored in Redis, linear in the length of a thread.

    Use it on its own as a Redis checkpointer (``StalwartSaver.from_url(url)``), or let
    :class:`~stalwart.adapters.langgraph.DurableGraphRunner` bind one to each durable run:
    then ``fence_epoch`` is the run's epoch and every write is refused (:class:`LeaseLost`)
    once another worker owns the run.

    Channel values are stored once per ``(channel, version)``, so a step rewrites only the
    channels it changed; a list channel that grew (``messages``) stores only the new
    elements. Pass ``sync_client`` for ``invoke``/``stream``, ``client`` for
    ``ainvoke``/``astream`` (``from_url`` makes both).

    Loading rebuilds only allow-listed types (:class:`SafeSerializer`: LangGraph's safe
    types, messages, ``Send``/``Command``/``Interrupt``, plus ``allowed_types``); a checkpoint
    naming any other type fails with :class:`~stalwart.errors.DisallowedTypeError`. A
    ``serde`` of your own replaces this check (and ``allowed_types`` is then unused).
    """

    def __init__(
        self,
        client: aioredis.Redis | None = None,
        *,
        sync_client: redis.Redis | None = None,
        namespace: str = "stalwart",
        fence_epoch: int | None = None,
        task_name: Callable[[str, str], str | None] | None = None,
        on_task_written: Callable[[TaskWritten], Awaitable[None]] | None = None,
        retry_for: float = 0.0,
        serde: SerializerProtocol | None = None,
        allowed_types: Iterable[AllowedType] = (),
        run_id: str | None = None,
        task_models: Callable[[str], list[tuple[str, int, int]]] | None = None,
    ) -> None:
        # Checkpoints come back from Redis: by default only allow-listed types are rebuilt
        # (LangGraph's default serializer would import and call whatever a checkpoint names).
        super().__init__(serde=serde if serde is not None else SafeSerializer(allowed_types))
        self.namespace = namespace
        self.fence_epoch = fence_epoch
        self._driver = Driver(client, sync_client, retry_for=retry_for)
        if on_task_written is not None:
            self._driver.sync_refused = (
                "a StalwartSaver bound to a durable run is async-only: run the graph with "
                "ainvoke/astream"
            )
        self._task_name = task_name
        self._task_models = task_models
        self.run_id = run_id
        """The durable run the saver is bound to (its writes to a thread other than the
        run's own are fenced by the run's claim on that thread)."""
        self._on_task_written = on_task_written
        self._shared = Shared()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "stalwart", **kwargs: Any) -> StalwartSaver:
        """A saver with both a synchronous and an asynchronous client for ``url``.

        A ``redis+cluster://host:port[,host:port...]`` URL gives cluster clients (every key
        of a thread shares its slot, so the saver's scripts work on a Redis Cluster).
        """
        client, sync_client = redis_clients(url)
        return cls(client, sync_client=sync_client, namespace=namespace, **kwargs)

    async def aclose(self) -> None:
        """Close the clients."""
        await self._driver.close()

    @property
    def stop_reason(self) -> Exception | None:
        """Why a durable run's graph must stop: the first exception ``on_task_written`` raised
        (a lost lease, a drain), or the cancel a stored checkpoint found; None otherwise."""
        return self._shared.stop

    def get_next_version(self, current: str | None, channel: None) -> str:
        """``<counter>.<random>``: ordered, and unique across branches of a thread."""
        return _codec.next_version(current)

    def _plans(self) -> Plans:
        # Built per operation: a copy LangGraph makes of the saver may carry another serde.
        return Plans(
            self.namespace,
            self.fence_epoch,
            self.serde,
            self._shared,
            self._task_name,
            self.run_id,
            self._task_models,
        )

    # -- BaseCheckpointSaver ----------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (the newest of its namespace without an id)."""
        return self._driver.run_sync(self._plans().get_plan(config, warm=True))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        return await self._driver.run_async(self._plans().get_plan(config, warm=True))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first, by thread (and namespace, when the config has one)."""
        plan = self._plans().list_plan(config, filter, before, limit)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration:
                return
            if isinstance(step, Out):
                reply = None
                yield step.item
            else:
                reply = self._driver.exec_sync(step)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Async :meth:`list`."""
        plan = self._plans().list_plan(config, filter, before, limit)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration:
                return
            if isinstance(step, Out):
                reply = None
                yield step.item
            else:
                reply = await self._driver.exec_async(step)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint: its changed channels and its record, atomically."""
        return self._driver.run_sync(
            self._plans().put_plan(config, checkpoint, metadata, new_versions)
        )

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Async :meth:`put`. In a durable run, stops the graph here (after storing the
        checkpoint) if the run must stop: lost lease, cancel, drain."""
        stored = await self._driver.run_async(
            self._plans().put_plan(config, checkpoint, metadata, new_versions)
        )
        if self._shared.stop is None and self._shared.cancel:
            # Cancelled: the next superstep must not start (in sync durability LangGraph
            # waits for this put before it does).
            self._shared.stop = RunCancelled(conf(config)[0], self._shared.cancel)
        if self._shared.stop is not None:
            raise self._shared.stop
        return stored

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes on the checkpoint ``config`` names."""
        self._driver.run_sync(self._plans().put_writes_plan(config, writes, task_id, task_path))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`; tells ``on_task_written`` about a task's first writes."""
        written = await self._driver.run_async(
            self._plans().put_writes_plan(config, writes, task_id, task_path)
        )
        if written is None or self._on_task_written is None:
            return
        try:
            await self._on_task_written(written)
        except Exception as exc:
            # This runs in a background task LangGraph does not await before its next
            # checkpoint: remember why, so aput stops the graph there.
            if self._shared.stop is None:
                self._shared.stop = exc
            raise

    async def astored_tasks(
        self, thread_id: str
    ) -> Sequence[tuple[str, str, str, Sequence[tuple[str, int, int]]]]:
        """The tasks the durable run stored on ``thread_id``, in order: ``(task_id, name,
        checkpoint_ns, models)``, ``models`` what ``task_models`` said of the task's model
        calls (``(model, input tokens, output tokens)`` each) when its writes were stored."""
        return await self._driver.run_async(self._plans().tasks_plan(thread_id))

    def _forget(self, thread_id: str) -> None:
        for key in [k for k in self._shared.lists if k[0] == thread_id]:
            del self._shared.lists[key]

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, blob and write of ``thread_id``."""
        self._forget(str(thread_id))
        self._shared.registered.discard(str(thread_id))
        self._driver.run_sync(_maintenance.delete_thread(self.namespace, str(thread_id)))

    async def adelete_thread(self, thread_id: str) -> None:
        """Async :meth:`delete_thread`."""
        self._forget(str(thread_id))
        self._shared.registered.discard(str(thread_id))
        await self._driver.run_async(_maintenance.delete_thread(self.namespace, str(thread_id)))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread to another (replacing its keys)."""
        self._forget(str(target_thread_id))
        plan = _maintenance.copy_thread(self.namespace, source_thread_id, target_thread_id)
        self._driver.run_sync(plan)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Async :meth:`copy_thread`."""
        self._forget(str(target_thread_id))
        plan = _maintenance.copy_thread(self.namespace, source_thread_id, target_thread_id)
        await self._driver.run_async(plan)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's newest checkpoint (its values stored whole,
        and its writes); ``delete``: delete the threads. Refuses threads that use LangGraph's
        ``DeltaChannel`` (their state lives in older checkpoints' writes)."""
        for thread_id in thread_ids:
            self._driver.run_sync(self._prune_plan(str(thread_id), strategy))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Async :meth:`prune`."""
        for thread_id in thread_ids:
            await self._driver.run_async(self._prune_plan(str(thread_id), strategy))

    def _prune_plan(self, thread_id: str, strategy: str) -> Plan[None]:
        self._forget(thread_id)  # the list states may name versions that go away
        if strategy == "delete":
            self._shared.registered.discard(thread_id)
            return _maintenance.delete_thread(self.namespace, thread_id)
        if strategy == "keep_latest":
            return _maintenance.prune_to_latest(self.namespace, thread_id, SealedSerde(self.serde))
        raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata ``run_id`` (LangGraph's) is in ``run_ids``."""
        self._driver.run_sync(
            _maintenance.delete_for_runs(self.namespace, run_ids, SealedSerde(self.serde))
        )

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await self._driver.run_async(
            _maintenance.delete_for_runs(self.namespace, run_ids, SealedSerde(self.serde))
        )

    async def thread_bytes(self, thread_id: str) -> int:
        """Memory Redis uses for the thread's keys (``MEMORY USAGE``), for size reports."""
        client = self._driver.client
        if client is None:
            raise ConfigurationError("thread_bytes needs the asyncio Redis client")
        keys = _codec.Keys(self.namespace, thread_id)
        total = 0
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in keys.prefix)
        async for key in client.scan_iter(match=f"{pattern}:*", count=1000):
            total += int(await client.memory_usage(key, samples=0) or 0)
        return total
