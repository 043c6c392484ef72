"""Whole-thread operations of the saver, as plans (generators of Redis commands, no I/O):
delete, copy, prune to the newest checkpoint, delete the checkpoints of LangGraph runs."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from stalwart.adapters.langgraph import _codec
from stalwart.adapters.langgraph._driver import Cmd, call, script, text

if TYPE_CHECKING:
    from langgraph.checkpoint.serde.base import SerializerProtocol

Plan = Generator[Cmd, Any, None]

_CHUNK = 500


def thread_keys(namespace: str, thread_id: str) -> Generator[Cmd, Any, list[str]]:
    """Every key that holds part of the thread."""
    keys = _codec.Keys(namespace, thread_id)
    found = [keys.namespaces, keys.orphans, keys.tasks]
    found += [text(m) for m in (yield call("smembers", keys.orphans))]
    for ns in sorted(text(n) for n in (yield call("smembers", keys.namespaces))):
        ids = yield call("zrange", keys.ids(ns), 0, -1)
        found += [keys.ids(ns), keys.checkpoints(ns), keys.blobs(ns)]
        found += [keys.writes(ns, text(i)) for i in ids]
    return found


def delete_thread(namespace: str, thread_id: str) -> Plan:
    """Delete the thread's keys and forget the thread."""
    doomed = yield from thread_keys(namespace, thread_id)
    for start in range(0, len(doomed), _CHUNK):
        yield call("delete", *doomed[start : start + _CHUNK])
    yield call("srem", _codec.threads_key(namespace), thread_id)


def copy_thread(namespace: str, source: str, target: str) -> Plan:
    """Copy every key of ``source`` to the same key of ``target`` (``DUMP``/``RESTORE``:
    the two threads live in different cluster slots, so no script can do it)."""
    src, dst = _codec.Keys(namespace, source), _codec.Keys(namespace, target)
    keys = yield from thread_keys(namespace, source)
    copied = False
    for key in keys:
        dumped = yield call("dump", key)
        if dumped is None:
            continue
        new = dst.prefix + key[len(src.prefix) :]
        if key == src.orphans:  # a set of key names: rename its members too
            members = [
                dst.prefix + text(m)[len(src.prefix) :] for m in (yield call("smembers", key))
            ]
            yield call("delete", new)
            if members:
                yield call("sadd", new, *members)
        else:
            yield call("restore", new, 0, dumped, True)
        copied = True
    if copied:
        yield call("sadd", _codec.threads_key(namespace), target)


def prune_to_latest(namespace: str, thread_id: str, serde: SerializerProtocol) -> Plan:
    """Keep the newest checkpoint of each namespace, its writes and its channel values.

    Its list values are rewritten whole (the delta chains they extended go away), so the
    pruned thread holds one copy of its state. Not aware of LangGraph's ``DeltaChannel``,
    whose state lives in the writes of older checkpoints: such threads are refused.
    """
    keys = _codec.Keys(namespace, thread_id)
    kept_writes: set[str] = set()
    for ns in sorted(text(n) for n in (yield call("smembers", keys.namespaces))):
        ids = [text(i) for i in (yield call("zrange", keys.ids(ns), 0, -1))]
        if not ids:
            continue
        latest, older = ids[-1], ids[:-1]
        kept_writes.add(keys.writes(ns, latest))
        raw = yield call("hget", keys.checkpoints(ns), latest)
        ctyped, mtyped, _ = _codec.decode_record(raw)
        if "counters_since_delta_snapshot" in serde.loads_typed(mtyped):
            raise ValueError(
                f"thread {thread_id!r} uses LangGraph's DeltaChannel, whose state is in the "
                "writes of older checkpoints; it cannot be pruned to its latest checkpoint"
            )
        versions: dict[str, Any] = serde.loads_typed(ctyped)["channel_versions"]
        fields = [_codec.blob_field(ch, v) for ch, v in versions.items()]
        reply = yield script("load", [keys.blobs(ns), keys.writes(ns, latest)], fields)
        keep: dict[str, bytes | None] = {}
        for field, (_, version), chain in zip(fields, versions.items(), reply, strict=False):
            if not chain:
                continue
            keep[field] = None
            if len(chain) > 1:  # a delta chain: store the whole list under its head
                typed, _state = _codec.decode_chain(list(chain), str(version))
                assert typed is not None
                keep[field] = _codec.encode_blob(typed, None, str(version))[0]
        stored = [text(f) for f in (yield call("hkeys", keys.blobs(ns)))]
        yield from _hdel(keys.blobs(ns), [f for f in stored if f not in keep])
        for field, blob in keep.items():
            if blob is not None:
                yield call("hset", keys.blobs(ns), field, blob)
        yield from _hdel(keys.checkpoints(ns), older)
        for start in range(0, len(older), _CHUNK):
            chunk = older[start : start + _CHUNK]
            yield call("zrem", keys.ids(ns), *chunk)
            yield call("delete", *[keys.writes(ns, cid) for cid in chunk])
    orphans = [text(m) for m in (yield call("smembers", keys.orphans))]
    doomed = [key for key in orphans if key not in kept_writes]
    if doomed:
        yield call("delete", *doomed)
        yield call("srem", keys.orphans, *doomed)


def delete_for_runs(namespace: str, run_ids: Sequence[str], serde: SerializerProtocol) -> Plan:
    """Delete the checkpoints (and their writes) whose metadata ``run_id`` is in ``run_ids``.

    Scans every thread; blobs stay, as other checkpoints may share them.
    """
    wanted = set(run_ids)
    if not wanted:
        return
    threads = sorted(text(t) for t in (yield call("smembers", _codec.threads_key(namespace))))
    for thread_id in threads:
        keys = _codec.Keys(namespace, thread_id)
        for ns in sorted(text(n) for n in (yield call("smembers", keys.namespaces))):
            records = yield call("hgetall", keys.checkpoints(ns))
            doomed = [
                text(cid)
                for cid, raw in records.items()
                if serde.loads_typed(_codec.decode_record(raw)[1]).get("run_id") in wanted
            ]
            for start in range(0, len(doomed), _CHUNK):
                chunk = doomed[start : start + _CHUNK]
                yield call("hdel", keys.checkpoints(ns), *chunk)
                yield call("zrem", keys.ids(ns), *chunk)
                yield call("delete", *[keys.writes(ns, cid) for cid in chunk])


def _hdel(key: str, fields: list[str]) -> Plan:
    for start in range(0, len(fields), _CHUNK):
        yield call("hdel", key, *fields[start : start + _CHUNK])
