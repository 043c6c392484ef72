"""The saver's operations as plans: generators that yield Redis commands and receive their
replies, with no I/O of their own (``_driver`` runs them on a sync or an async client).

Storage per thread (see ``_codec.Keys``): a record per checkpoint (the checkpoint without
its values, its metadata and its parent's id), one blob per channel version, written only
when the channel changed, a list channel stored as the elements added since its previous
version, and one hash of pending writes per checkpoint. A durable run's writes go under the
run's epoch fence (:class:`stalwart.checkpoints.Fence`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)

from stalwart.adapters.langgraph import _codec
from stalwart.adapters.langgraph._driver import Cmd, Plan, call, script, text
from stalwart.adapters.langgraph._sealed import SealedSerde
from stalwart.adapters.langgraph._thread import ThreadFence
from stalwart.checkpoints import Fence

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.serde.base import SerializerProtocol


@dataclass(frozen=True, slots=True)
class Out:
    """Yielded by a listing plan: an item for the caller, not a command."""

    item: CheckpointTuple


ListPlan = Generator[Cmd | Out, Any, None]


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


class Shared:
    """Mutable state, shared with the copies LangGraph makes (``with_allowlist``)."""

    def __init__(self) -> None:
        self.lists: OrderedDict[tuple[str, str, str], _codec.ListState] = OrderedDict()
        self.registered: set[str] = set()
        self.stop: Exception | None = None
        self.cancel = ""


_LIST_STATES = 1024
_NOT_STORED = "its checkpoint was not stored"


def conf(config: RunnableConfig) -> tuple[str, str, str | None]:
    conf = config["configurable"]
    return str(conf["thread_id"]), str(conf.get("checkpoint_ns") or ""), get_checkpoint_id(config)


def config_of(thread_id: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
        }
    }


class Plans:
    """The plans of one saver (a copy LangGraph makes of it shares ``shared``)."""

    def __init__(
        self,
        namespace: str,
        fence_epoch: int | None,
        serde: SerializerProtocol,
        shared: Shared,
        task_name: Callable[[str, str], str | None] | None,
        run_id: str | None = None,
        task_models: Callable[[str], list[tuple[str, int, int]]] | None = None,
    ) -> None:
        self.namespace = namespace
        self.fence_epoch = fence_epoch
        self.run_id = run_id
        self.task_models = task_models
        # Records, metadata and pending writes are sealed whole (payload encryption); channel
        # values are sealed by the blob encoding, after the delta is cut (see _codec).
        self.serde = SealedSerde(serde)
        self.values = serde
        self.shared = shared
        self.task_name = task_name

    def fence(self, thread_id: str) -> Fence | ThreadFence:
        # On its own thread (the default) a durable run's writes are fenced by its run
        # record; on a thread of the user's, by the claim it holds on that thread.
        if self.run_id is not None and self.fence_epoch is not None and thread_id != self.run_id:
            return ThreadFence(self.namespace, thread_id, self.run_id, self.fence_epoch)
        return Fence.of(self.namespace, thread_id, self.fence_epoch)

    def tasks_key(self, keys: _codec.Keys) -> str:
        return keys.tasks_of(self.run_id) if self.run_id is not None else keys.tasks

    def remember(self, key: tuple[str, str, str], state: _codec.ListState | None) -> None:
        lists = self.shared.lists
        if state is None:
            lists.pop(key, None)
            return
        lists[key] = state
        lists.move_to_end(key)
        while len(lists) > _LIST_STATES:
            lists.popitem(last=False)

    def get_plan(self, config: RunnableConfig, *, warm: bool) -> Plan[CheckpointTuple | None]:
        thread_id, ns, checkpoint_id = conf(config)
        keys = _codec.Keys(self.namespace, thread_id)
        found = yield script("get", [keys.ids(ns), keys.checkpoints(ns)], [checkpoint_id or ""])
        if not found:
            return None
        return (yield from self.load_plan(keys, thread_id, ns, text(found[0]), found[1], warm))

    def load_plan(
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
                self.remember((thread_id, ns, channel), state)
            if typed is not None:
                values[channel] = self.values.loads_typed(typed)
        writes = [
            (task_id, channel, self.serde.loads_typed(typed))
            for task_id, _, channel, typed, _ in _codec.decode_writes(list(reply[-1]))
        ]
        return CheckpointTuple(
            config=config_of(thread_id, ns, cid),
            checkpoint=cast("Checkpoint", {**checkpoint, "channel_values": values}),
            metadata=self.serde.loads_typed(mtyped),
            parent_config=config_of(thread_id, ns, parent) if parent else None,
            pending_writes=writes,
        )

    def put_plan(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Plan[RunnableConfig]:
        thread_id, ns, parent = conf(config)
        keys = _codec.Keys(self.namespace, thread_id)
        stored = cast("dict[str, Any]", checkpoint.copy())
        values: dict[str, Any] = stored.pop("channel_values")
        fence = self.fence(thread_id)
        record = _codec.encode_record(
            self.serde.dumps_typed(stored),
            self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)),
            parent or "",
        )
        args: list[str | bytes] = fence.args(ns, checkpoint["id"], record)
        states: dict[str, _codec.ListState | None] = {}
        for channel, version in new_versions.items():
            typed = self.values.dumps_typed(values[channel]) if channel in values else None
            previous = self.shared.lists.get((thread_id, ns, channel))
            blob, states[channel] = _codec.encode_blob(typed, previous, str(version))
            args += [_codec.blob_field(channel, version), blob]
        reply = yield script(
            "put",
            fence.keys(keys.ids(ns), keys.checkpoints(ns), keys.blobs(ns), keys.namespaces),
            args,
        )
        fence.check(reply, lost=_NOT_STORED)
        if self.fence_epoch is not None and reply[1]:
            self.shared.cancel = text(reply[1])
        for channel, state in states.items():
            self.remember((thread_id, ns, channel), state)
        if thread_id not in self.shared.registered:
            yield call("sadd", _codec.threads_key(self.namespace), thread_id)
            self.shared.registered.add(thread_id)
        return config_of(thread_id, ns, checkpoint["id"])

    def put_writes_plan(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> Plan[TaskWritten | None]:
        thread_id, ns, checkpoint_id = conf(config)
        if checkpoint_id is None:
            raise ValueError("put_writes needs a checkpoint_id in the config")
        keys = _codec.Keys(self.namespace, thread_id)
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        name = None
        if not special and self.task_name is not None:
            name = self.task_name(task_id, task_path)
        models = self.task_models(task_id) if name and self.task_models is not None else None
        entry = _codec.encode_task(task_id, name, ns, models) if name else b""
        fence = self.fence(thread_id)
        args: list[str | bytes] = fence.args("1" if special else "0", checkpoint_id, ns, entry)
        for idx, (channel, value) in enumerate(writes):
            args += [
                _codec.write_field(task_id, WRITES_IDX_MAP.get(channel, idx)),
                _codec.encode_write(channel, self.serde.dumps_typed(value), task_path),
            ]
        reply = yield script(
            "put_writes",
            fence.keys(
                keys.writes(ns, checkpoint_id),
                keys.ids(ns),
                keys.orphans,
                keys.namespaces,
                self.tasks_key(keys),
            ),
            args,
        )
        fence.check(reply, lost=_NOT_STORED)
        if not name or not int(reply[1]):
            return None
        channels = tuple(channel for channel, _ in writes if channel not in WRITES_IDX_MAP)
        return TaskWritten(thread_id, ns, checkpoint_id, task_id, task_path, name, channels)

    def tasks_plan(
        self, thread_id: str
    ) -> Plan[list[tuple[str, str, str, list[tuple[str, int, int]]]]]:
        raw = yield call("lrange", self.tasks_key(_codec.Keys(self.namespace, thread_id)), 0, -1)
        return [_codec.decode_task(r) for r in raw]

    def list_plan(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> ListPlan:
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
                remaining = yield from self.list_ns_plan(
                    keys, thread_id, ns, only_id, before_id, filter, remaining
                )
                if remaining == 0:
                    return

    def list_ns_plan(
        self,
        keys: _codec.Keys,
        thread_id: str,
        ns: str,
        only_id: str | None,
        before_id: str | None,
        filter: dict[str, Any] | None,
        remaining: int | None,
    ) -> Generator[Cmd | Out, Any, int | None]:
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
                item = yield from self.load_plan(keys, thread_id, ns, cid, raw_record, warm=False)
                yield Out(item)
        return remaining
