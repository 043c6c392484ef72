"""``StalwartSaver``: a LangGraph checkpointer in Redis, optionally fenced by a run's epoch.

The methods share one implementation: each operation is a generator that yields Redis
commands and receives their replies (no I/O of its own), driven either by a synchronous or
by an asynchronous client. Storage per thread (see ``_codec.Keys``): a record per checkpoint
(the checkpoint without its values, its metadata and its parent's id), one blob per channel
version, written only when the channel changed, a list channel stored as the elements added
since its previous version, and one hash of pending writes per checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.asyncio as aioredis
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)

from stalwart.adapters.langgraph import _codec, _maintenance
from stalwart.adapters.langgraph._driver import Cmd, Driver, Plan, call, script, text
from stalwart.adapters.langgraph._serde import AllowedType, SafeSerializer
from stalwart.errors import ConfigurationError, LeaseLost, RunCancelled

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.serde.base import SerializerProtocol


@dataclass(frozen=True, slots=True)
class _Out:
    """Yielded by a listing plan: an item for the caller, not a command."""

    item: CheckpointTuple


_ListPlan = Generator[Cmd | _Out, Any, None]


@dataclass(frozen=True, slots=True)
class TaskWritten:
    """A task's writes were stored for the first time: the hook durable runs journal."""

    thread_id: str
    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    task_path: str
    name: str
    """The node (or ``@task``) name ``task_name`` gave the task."""
    channels: tuple[str, ...]


class _Shared:
    """Mutable state, shared with the copies LangGraph makes (``with_allowlist``)."""

    def __init__(self) -> None:
        self.lists: OrderedDict[tuple[str, str, str], _codec.ListState] = OrderedDict()
        self.registered: set[str] = set()
        self.stop: Exception | None = None
        self.cancel = ""


_LIST_STATES = 1024


def _conf(config: RunnableConfig) -> tuple[str, str, str | None]:
    conf = config["configurable"]
    return str(conf["thread_id"]), str(conf.get("checkpoint_ns") or ""), get_checkpoint_id(config)


def _config(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


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
        self._on_task_written = on_task_written
        self._shared = _Shared()

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "stalwart", **kwargs: Any) -> StalwartSaver:
        """A saver with both a synchronous and an asynchronous client for ``url``."""
        return cls(
            aioredis.Redis.from_url(url),
            sync_client=redis.Redis.from_url(url),
            namespace=namespace,
            **kwargs,
        )

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

    # -- plans (no I/O) ---------------------------------------------------------------------

    def _fence(self) -> str:
        return "" if self.fence_epoch is None else str(self.fence_epoch)

    def _check(self, reply: Any, thread_id: str) -> Any:
        if text(reply[0]) == "stale":
            raise LeaseLost(
                f"run {thread_id!r}: epoch {self.fence_epoch} no longer owns the run "
                f"(current epoch {text(reply[1]) or 'none'}); its checkpoint was not stored"
            )
        return reply

    def _remember(self, key: tuple[str, str, str], state: _codec.ListState | None) -> None:
        lists = self._shared.lists
        if state is None:
            lists.pop(key, None)
            return
        lists[key] = state
        lists.move_to_end(key)
        while len(lists) > _LIST_STATES:
            lists.popitem(last=False)

    def _get_plan(self, config: RunnableConfig, *, warm: bool) -> Plan[CheckpointTuple | None]:
        thread_id, ns, checkpoint_id = _conf(config)
        keys = _codec.Keys(self.namespace, thread_id)
        found = yield script("get", [keys.ids(ns), keys.checkpoints(ns)], [checkpoint_id or ""])
        if not found:
            return None
        return (yield from self._load_plan(keys, thread_id, ns, text(found[0]), found[1], warm))

    def _load_plan(
        self, keys: _codec.Keys, thread_id: str, ns: str, cid: str, raw: bytes, warm: bool
    ) -> Plan[CheckpointTuple]:
        ctyped, mtyped, parent = _codec.decode_record(raw)
        checkpoint: dict[str, Any] = self.serde.loads_typed(ctyped)
        versions: ChannelVersions = checkpoint["channel_versions"]
        fields = [_codec.blob_field(ch, v) for ch, v in versions.items()]
        reply = yield script("load", [keys.blobs(ns), keys.writes(ns, cid)], fields)
        values: dict[str, Any] = {}
        for (channel, version), chain in zip(versions.items(), reply, strict=False):
            if not chain:
                continue
            typed, state = _codec.decode_chain(list(chain), str(version))
            if warm:
                self._remember((thread_id, ns, channel), state)
            if typed is not None:
                values[channel] = self.serde.loads_typed(typed)
        writes = [
            (task_id, channel, self.serde.loads_typed(typed))
            for task_id, _, channel, typed, _ in _codec.decode_writes(list(reply[-1]))
        ]
        return CheckpointTuple(
            config=_config(thread_id, ns, cid),
            checkpoint=cast("Checkpoint", {**checkpoint, "channel_values": values}),
            metadata=self.serde.loads_typed(mtyped),
            parent_config=_config(thread_id, ns, parent) if parent else None,
            pending_writes=writes,
        )

    def _put_plan(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Plan[RunnableConfig]:
        thread_id, ns, parent = _conf(config)
        keys = _codec.Keys(self.namespace, thread_id)
        stored = cast("dict[str, Any]", checkpoint.copy())
        values: dict[str, Any] = stored.pop("channel_values")
        args: list[str | bytes] = [
            self._fence(),
            ns,
            checkpoint["id"],
            _codec.encode_record(
                self.serde.dumps_typed(stored),
                self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)),
                parent or "",
            ),
        ]
        states: dict[str, _codec.ListState | None] = {}
        for channel, version in new_versions.items():
            typed = self.serde.dumps_typed(values[channel]) if channel in values else None
            previous = self._shared.lists.get((thread_id, ns, channel))
            blob, states[channel] = _codec.encode_blob(typed, previous, str(version))
            args += [_codec.blob_field(channel, version), blob]
        reply = yield script(
            "put",
            [keys.record, keys.ids(ns), keys.checkpoints(ns), keys.blobs(ns), keys.namespaces],
            args,
        )
        self._check(reply, thread_id)
        if self.fence_epoch is not None and reply[1]:
            self._shared.cancel = text(reply[1])
        for channel, state in states.items():
            self._remember((thread_id, ns, channel), state)
        if thread_id not in self._shared.registered:
            yield call("sadd", _codec.threads_key(self.namespace), thread_id)
            self._shared.registered.add(thread_id)
        return _config(thread_id, ns, checkpoint["id"])

    def _put_writes_plan(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Plan[TaskWritten | None]:
        thread_id, ns, checkpoint_id = _conf(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs a checkpoint_id in the config")
        keys = _codec.Keys(self.namespace, thread_id)
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        name = None
        if not special and self._task_name is not None:
            name = self._task_name(task_id, task_path)
        entry = _codec.encode_task(task_id, name, ns) if name else b""
        args: list[str | bytes] = [self._fence(), "1" if special else "0", checkpoint_id, ns, entry]
        for idx, (channel, value) in enumerate(writes):
            args += [
                _codec.write_field(task_id, WRITES_IDX_MAP.get(channel, idx)),
                _codec.encode_write(channel, self.serde.dumps_typed(value), task_path),
            ]
        reply = yield script(
            "put_writes",
            [
                keys.record,
                keys.writes(ns, checkpoint_id),
                keys.ids(ns),
                keys.orphans,
                keys.namespaces,
                keys.tasks,
            ],
            args,
        )
        self._check(reply, thread_id)
        if not name or not int(reply[1]):
            return None
        channels = tuple(channel for channel, _ in writes if channel not in WRITES_IDX_MAP)
        return TaskWritten(thread_id, ns, checkpoint_id, task_id, task_path, name, channels)

    def _tasks_plan(self, thread_id: str) -> Plan[list[tuple[str, str, str]]]:
        raw = yield call("lrange", _codec.Keys(self.namespace, thread_id).tasks, 0, -1)
        return [_codec.decode_task(r) for r in raw]

    def _list_plan(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> _ListPlan:
        if config is not None:
            threads = [str(config["configurable"]["thread_id"])]
            only_ns = config["configurable"].get("checkpoint_ns")
            only_id = get_checkpoint_id(config)
        else:
            members = yield call("smembers", _codec.threads_key(self.namespace))
            threads, only_ns, only_id = sorted(text(m) for m in members), None, None
        before_id = get_checkpoint_id(before) if before else None
        remaining = limit
        for thread_id in threads:
            keys = _codec.Keys(self.namespace, thread_id)
            if only_ns is not None:
                namespaces = [str(only_ns)]
            else:
                raw = yield call("smembers", keys.namespaces)
                namespaces = sorted(text(n) for n in raw)
            for ns in namespaces:
                remaining = yield from self._list_ns_plan(
                    keys, thread_id, ns, only_id, before_id, filter, remaining
                )
                if remaining == 0:
                    return

    def _list_ns_plan(
        self,
        keys: _codec.Keys,
        thread_id: str,
        ns: str,
        only_id: str | None,
        before_id: str | None,
        filter: dict[str, Any] | None,
        remaining: int | None,
    ) -> Generator[Cmd | _Out, Any, int | None]:
        """List one namespace, newest first; returns how many items the limit still allows."""
        top = f"({before_id}" if before_id else "+"
        ids = [text(i) for i in (yield call("zrevrangebylex", keys.ids(ns), top, "-"))]
        if only_id is not None:
            ids = [i for i in ids if i == only_id]
        for start in range(0, len(ids), 100):
            page = ids[start : start + 100]
            records = yield call("hmget", keys.checkpoints(ns), page)
            for cid, raw_record in zip(page, records, strict=True):
                if raw_record is None:
                    continue
                if filter:
                    metadata = self.serde.loads_typed(_codec.decode_record(raw_record)[1])
                    if any(metadata.get(k) != v for k, v in filter.items()):
                        continue
                if remaining is not None:
                    if remaining <= 0:
                        return 0
                    remaining -= 1
                item = yield from self._load_plan(keys, thread_id, ns, cid, raw_record, warm=False)
                yield _Out(item)
        return remaining

    # -- BaseCheckpointSaver ----------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (the newest of its namespace without an id)."""
        return self._driver.run_sync(self._get_plan(config, warm=True))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Async :meth:`get_tuple`."""
        return await self._driver.run_async(self._get_plan(config, warm=True))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first, by thread (and namespace, when the config has one)."""
        plan = self._list_plan(config, filter, before, limit)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration:
                return
            if isinstance(step, _Out):
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
        plan = self._list_plan(config, filter, before, limit)
        reply: Any = None
        while True:
            try:
                step = plan.send(reply)
            except StopIteration:
                return
            if isinstance(step, _Out):
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
        return self._driver.run_sync(self._put_plan(config, checkpoint, metadata, new_versions))

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
            self._put_plan(config, checkpoint, metadata, new_versions)
        )
        if self._shared.stop is None and self._shared.cancel:
            # Cancelled: the next superstep must not start (in sync durability LangGraph
            # waits for this put before it does).
            self._shared.stop = RunCancelled(_conf(config)[0], self._shared.cancel)
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
        self._driver.run_sync(self._put_writes_plan(config, writes, task_id, task_path))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Async :meth:`put_writes`; tells ``on_task_written`` about a task's first writes."""
        written = await self._driver.run_async(
            self._put_writes_plan(config, writes, task_id, task_path)
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

    async def astored_tasks(self, thread_id: str) -> Sequence[tuple[str, str, str]]:
        """The tasks a durable run stored, in order: ``(task_id, name, checkpoint_ns)``."""
        return await self._driver.run_async(self._tasks_plan(thread_id))

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
            return _maintenance.prune_to_latest(self.namespace, thread_id, self.serde)
        raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints whose metadata ``run_id`` (LangGraph's) is in ``run_ids``."""
        self._driver.run_sync(_maintenance.delete_for_runs(self.namespace, run_ids, self.serde))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Async :meth:`delete_for_runs`."""
        await self._driver.run_async(
            _maintenance.delete_for_runs(self.namespace, run_ids, self.serde)
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
