"""Pure encoding for the LangGraph saver: Redis key names, blob deltas, records and writes.

No I/O here. The saver stores each channel value once per ``(channel, version)``; a list
value that extends the list stored at the channel's previous version (the ``messages``
channel of every chat agent) is stored as the appended elements only, with a reference to
that previous version. Reading walks the chain back and concatenates the element bytes, so
the stored size of a run is the size of what is new at each step, not of the whole state.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from typing import Any

import msgspec

from stalwart.checkpoints import open_bytes, seal_bytes

# Blob values: one tag byte, then the payload.
#   F<msgpack [type, data]>          the whole value, serialised by the saver's serde
#   E                                the channel has a version but no value
#   D<base>\0<count>\0<elements>     a msgpack list: the list stored at version <base> of
#                                    the same channel (none when <base> is empty) followed
#                                    by <count> more elements, <elements> their msgpack bytes
TAG_FULL = b"F"
TAG_EMPTY = b"E"
TAG_DELTA = b"D"

_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(tuple[str, bytes, str, bytes, str])
_write_decoder = msgspec.msgpack.Decoder(tuple[str, str, bytes, str])
_full_decoder = msgspec.msgpack.Decoder(tuple[str, bytes])
_task_decoder = msgspec.msgpack.Decoder(list[Any])


class Keys:
    """Redis keys of one thread. The thread id is the hash tag, so on a cluster every key of
    a thread (and, for a durable run whose thread is the run id, the run record that fences
    the writes) lives in one slot and the Lua scripts stay atomic."""

    def __init__(self, namespace: str, thread_id: str) -> None:
        self.thread_id = thread_id
        self.prefix = f"{namespace}:{{{thread_id}}}:lg"
        self.record = f"{namespace}:{{{thread_id}}}:run"
        """The Stalwart run record: its ``epoch`` field fences the writes of a durable run."""
        self.namespaces = f"{self.prefix}:nss"
        """Set of the checkpoint namespaces the thread used ('' is the root graph)."""
        self.orphans = f"{self.prefix}:orphans"
        """Writes keys of checkpoints never stored (kept so delete_thread finds them)."""
        self.tasks = f"{self.prefix}:tasks"
        """List of the tasks a durable run stored, in order (see ``encode_task``)."""
        self.owner = f"{self.prefix}:owner"
        """Hash: the durable run that holds a thread of the user's, and its fence token."""

    def tasks_of(self, run_id: str) -> str:
        """The task list of durable run ``run_id`` on this thread (``tasks`` on its own)."""
        return self.tasks if run_id == self.thread_id else f"{self.tasks}:{run_id}"

    def ids(self, ns: str) -> str:
        """Sorted set (all scores 0, ordered by member) of the namespace's checkpoint ids."""
        return f"{self.prefix}:ids:{ns}"

    def checkpoints(self, ns: str) -> str:
        """Hash: checkpoint id -> record (checkpoint without values, metadata, parent id)."""
        return f"{self.prefix}:ck:{ns}"

    def blobs(self, ns: str) -> str:
        """Hash: ``<channel>\\0<version>`` -> blob value."""
        return f"{self.prefix}:bl:{ns}"

    def writes(self, ns: str, checkpoint_id: str) -> str:
        """Hash of one checkpoint's pending writes: ``<task_id>\\0<idx>`` -> write."""
        return f"{self.prefix}:wr:{ns}:{checkpoint_id}"


def threads_key(namespace: str) -> str:
    """Set of every thread id the saver wrote (for ``list(None)``); not in any thread's slot."""
    return f"{namespace}:lg:threads"


def blob_field(channel: str, version: str | int | float) -> str:
    """Field of a channel version in the blobs hash."""
    return f"{channel}\0{version}"


def next_version(current: str | int | float | None) -> str:
    """A channel version: a zero-padded counter (ordered as a string) and a random suffix.

    The suffix keeps two branches of one thread (a fork, ``update_state`` from an old
    checkpoint) from producing the same version for different values: blobs are keyed by
    version and never overwritten with other content.
    """
    if current is None:
        n = 0
    elif isinstance(current, str):
        n = int(current.split(".", 1)[0])
    else:
        n = int(current)
    return f"{n + 1:012d}.{random.getrandbits(32):08x}"


# -- msgpack arrays ----------------------------------------------------------------------


def split_array(data: bytes) -> tuple[int, bytes] | None:
    """``(count, element bytes)`` of a msgpack array, or None if ``data`` is not one."""
    if not data:
        return None
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, data[1:]
    if first == 0xDC and len(data) >= 3:
        return struct.unpack(">H", data[1:3])[0], data[3:]
    if first == 0xDD and len(data) >= 5:
        return struct.unpack(">I", data[1:5])[0], data[5:]
    return None


def join_array(count: int, body: bytes) -> bytes:
    """The msgpack array of ``count`` elements whose concatenated encodings are ``body``."""
    if count < 16:
        return bytes([0x90 | count]) + body
    if count < 0x10000:
        return b"\xdc" + struct.pack(">H", count) + body
    return b"\xdd" + struct.pack(">I", count) + body


# -- blobs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListState:
    """What the saver remembers of a list channel's last stored version, to store deltas."""

    version: str
    count: int
    body: bytes


def encode_blob(
    typed: tuple[str, bytes] | None, previous: ListState | None, version: str
) -> tuple[bytes, ListState | None]:
    """The blob for a channel value serialised as ``typed`` (None: no value).

    Returns the blob and the list state to remember for the next version (None when the
    value is not a msgpack list). A list that starts with the previous version's elements
    is stored as the new elements only.
    """
    if typed is None:
        return TAG_EMPTY, None
    type_, data = typed
    parts = split_array(data) if type_ == "msgpack" else None
    if parts is None:
        return TAG_FULL + _record_encoder.encode((type_, _seal(data))), None
    count, body = parts
    state = ListState(version, count, body)
    if (
        previous is not None
        and previous.count > 0
        and count >= previous.count
        and body.startswith(previous.body)
    ):
        tail = body[len(previous.body) :]
        header = f"{previous.version}\0{count - previous.count}\0".encode()
        return TAG_DELTA + header + _seal(tail), state
    return TAG_DELTA + f"\0{count}\0".encode() + _seal(body), state


# With payload encryption on (docs/security.md), what a blob holds of the user's values is
# sealed here, after the delta is cut from the clear bytes (sealing first would make every
# version differ and store every list whole); the headers stay clear, as the journal's do.
def _seal(data: bytes) -> bytes:
    return seal_bytes(data) if data else data


def _open(data: bytes) -> bytes:
    return open_bytes(data) if data else data


def blob_base(blob: bytes) -> str:
    """The version a delta blob extends ('' for none, or for a blob that is not a delta)."""
    if not blob.startswith(TAG_DELTA):
        return ""
    end = blob.index(b"\0", 1)
    return blob[1:end].decode()


def decode_chain(
    chain: list[bytes], version: str
) -> tuple[tuple[str, bytes] | None, ListState | None]:
    """Rebuild a value from its blob chain (the blob at ``version`` first, then its bases).

    Returns the typed serialisation to hand to the serde (None: the channel has no value),
    and the list state to remember for storing the next version as a delta.
    """
    head = chain[0]
    if head.startswith(TAG_EMPTY):
        return None, None
    if head.startswith(TAG_FULL):
        type_, data = _full_decoder.decode(head[1:])
        return (type_, _open(data)), None
    total = 0
    bodies: list[bytes] = []
    for blob in chain:
        if not blob.startswith(TAG_DELTA):
            raise ValueError(f"blob chain of version {version!r} is broken: {blob[:20]!r}")
        first = blob.index(b"\0", 1)
        second = blob.index(b"\0", first + 1)
        total += int(blob[first + 1 : second])
        bodies.append(_open(blob[second + 1 :]))
    if blob_base(chain[-1]):
        raise ValueError(f"blob chain of version {version!r} ends at a missing base version")
    body = b"".join(reversed(bodies))
    return ("msgpack", join_array(total, body)), ListState(version, total, body)


# -- checkpoint records and writes ---------------------------------------------------------


def encode_record(checkpoint: tuple[str, bytes], metadata: tuple[str, bytes], parent: str) -> bytes:
    """A checkpoint record: the checkpoint without its values, its metadata, its parent id."""
    return _record_encoder.encode((checkpoint[0], checkpoint[1], metadata[0], metadata[1], parent))


def decode_record(raw: bytes) -> tuple[tuple[str, bytes], tuple[str, bytes], str]:
    """Inverse of :func:`encode_record`."""
    ctype, cdata, mtype, mdata, parent = _record_decoder.decode(raw)
    return (ctype, cdata), (mtype, mdata), parent


def write_field(task_id: str, idx: int) -> str:
    """Field of one write in a checkpoint's writes hash."""
    return f"{task_id}\0{idx}"


def encode_write(channel: str, typed: tuple[str, bytes], task_path: str) -> bytes:
    """One pending write: its channel, serialised value and the path of the task."""
    return _record_encoder.encode((channel, typed[0], typed[1], task_path))


def decode_writes(raw: list[Any]) -> list[tuple[str, int, str, tuple[str, bytes], str]]:
    """Writes from a flat ``HGETALL`` reply, as ``(task_id, idx, channel, typed, task_path)``
    in the order live execution applies them (LangGraph's ``writes_sort_key``)."""
    out: list[tuple[str, int, str, tuple[str, bytes], str]] = []
    for i in range(0, len(raw), 2):
        field = raw[i].decode() if isinstance(raw[i], bytes) else str(raw[i])
        task_id, _, idx = field.rpartition("\0")
        channel, type_, data, task_path = _write_decoder.decode(raw[i + 1])
        out.append((task_id, int(idx), channel, (type_, data), task_path))
    out.sort(key=lambda w: (w[4], w[0], w[1]))
    return out


def encode_task(
    task_id: str, name: str, ns: str, models: list[tuple[str, int, int]] | None = None
) -> bytes:
    """An entry of a durable run's task list: the task, its node name, its namespace, and
    the usage of the model calls it made (``(model, input tokens, output tokens)`` each),
    stored with the task's writes so a later owner can journal them if its worker could not.
    """
    if not models:
        return _record_encoder.encode((task_id, name, ns))
    return _record_encoder.encode((task_id, name, ns, [list(m) for m in models]))


def decode_task(raw: bytes) -> tuple[str, str, str, list[tuple[str, int, int]]]:
    """Inverse of :func:`encode_task`: ``(task_id, name, checkpoint_ns, models)``."""
    fields = _task_decoder.decode(raw)
    models = [(str(m), int(i), int(o)) for m, i, o in (fields[3] if len(fields) > 3 else [])]
    return str(fields[0]), str(fields[1]), str(fields[2]), models
