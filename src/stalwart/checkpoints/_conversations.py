"""Conversations in Redis: who holds one, its queue of waiting runs, and its item list.

A conversation outlives its runs: each run of it is a *turn*. Its items (messages, in
whatever plain data an adapter keeps) are stored once here, never copied into each run's
journal; a run journals only how many it read. Keys (hash tag ``{conv.<id>}``, one cluster
slot per conversation): ``<ns>:{conv.<id>}:meta`` (hash), ``:items`` (list of encoded,
sealed items), ``:queue`` (sorted set of waiting runs), ``:applied`` (the current holder's
appends by step key, so an append retried after a lost reply is not written twice).

Fencing: only the holder appends, and only with the fence token its claim returned (it
grows every time the hold changes hands) and its current epoch (a frozen older owner of the
same run cannot write either). See ``_conv_scripts`` for the scripts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from stalwart.checkpoints import _conv_scripts
from stalwart.checkpoints._codec import seal_bytes
from stalwart.checkpoints._entries import decode_value, encode_value
from stalwart.errors import InvalidRequestError, NonRetryableError, PayloadTooLargeError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "APPEND_MAX_BYTES",
    "ConversationClaim",
    "ConversationFenced",
    "ConversationInfo",
    "ConversationStore",
    "OnBusy",
    "check_conversation_id",
    "check_on_busy",
]

OnBusy = Literal["queue", "reject", "interrupt"]
"""What a new run of a conversation does while another run of it is going."""

ON_BUSY: tuple[str, ...] = ("queue", "reject", "interrupt")

APPEND_MAX_BYTES = 8 * 1024 * 1024
"""Encoded size one ``append`` may add (its items together): a Redis script argument list
far past this stalls the server for every run. Large data belongs in a store of its own."""

_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def check_conversation_id(conversation: object) -> str:
    """``conversation`` if it is a usable conversation id ("" for none), else
    :class:`InvalidRequestError`: 1-128 characters from A-Z a-z 0-9 _ - (as run ids)."""
    if conversation == "":
        return ""
    if (
        not isinstance(conversation, str)
        or len(conversation) > 128
        or not set(conversation) <= _ALPHABET
    ):
        raise InvalidRequestError(
            f"invalid conversation id {conversation!r}: use 1-128 characters from A-Z a-z 0-9 _ -"
        )
    return conversation


def check_on_busy(on_busy: object) -> OnBusy:
    """``on_busy`` if it is a policy name, else :class:`InvalidRequestError`."""
    if on_busy not in ON_BUSY:
        raise InvalidRequestError(
            f"invalid on_busy {on_busy!r}: use 'queue', 'reject' or 'interrupt'"
        )
    return cast("OnBusy", on_busy)


class ConversationFenced(NonRetryableError):
    """An append by a run that no longer holds the conversation (or an older owner of it)."""


@dataclass(frozen=True, slots=True)
class ConversationClaim:
    """What a claim found: ``held`` (the run holds it now), ``queued`` (it waits behind
    ``blocker``), ``busy`` (reject policy: refused) or ``stale`` (an older owner)."""

    outcome: str
    blocker: str
    """The run in the way: the holder, or the head of the queue while nobody holds it."""
    holder: str
    """The run holding the conversation ("" when free)."""
    fence: int
    turns: int
    committed: int


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """A conversation as an operator sees it."""

    id: str
    holder: str
    fence: int
    turns: int
    items: int
    committed: int
    updated_at: float
    queue: list[str]
    """Runs waiting for their turn, next first."""


@dataclass(frozen=True, slots=True)
class _Keys:
    meta: str
    items: str
    queue: str
    applied: str


class ConversationStore:
    """The conversations of one namespace, in the checkpoint store's Redis."""

    def __init__(self, client: aioredis.Redis, namespace: str = "stalwart") -> None:
        self.redis = client
        self.ns = namespace
        self._claim = client.register_script(_conv_scripts.CLAIM)
        self._enqueue = client.register_script(_conv_scripts.ENQUEUE)
        self._append = client.register_script(_conv_scripts.APPEND)
        self._release = client.register_script(_conv_scripts.RELEASE)

    def keys(self, conversation: str) -> _Keys:
        """The conversation's keys, all in one hash slot."""
        tag = f"{self.ns}:{{conv.{conversation}}}"
        return _Keys(f"{tag}:meta", f"{tag}:items", f"{tag}:queue", f"{tag}:applied")

    async def claim(
        self, conversation: str, run_id: str, *, on_busy: str, submitted_at: float, epoch: int
    ) -> ConversationClaim:
        """Take the conversation for ``run_id`` if it is free and the run is next in line
        (or it holds it already: a resumed run keeps it); else queue it (``queue``,
        ``interrupt``: at the head) or refuse it (``reject``)."""
        k = self.keys(conversation)
        score = -submitted_at if on_busy == "interrupt" else submitted_at
        reply = await self._claim(
            keys=[k.meta, k.queue],
            args=[run_id, on_busy, repr(score), repr(time.time()), epoch],
        )
        return ConversationClaim(
            outcome=reply[0].decode(),
            blocker=reply[1].decode(),
            holder=reply[5].decode(),
            fence=int(reply[2]),
            turns=int(reply[3]),
            committed=int(reply[4]),
        )

    async def enqueue(
        self, conversation: str, run_id: str, *, on_busy: str, submitted_at: float
    ) -> tuple[str, str]:
        """At submit: ``reject`` looks (``busy`` and the run in the way, or ``free``);
        ``queue`` takes a place in line by submit time (``queued``). ``interrupt`` queues at
        claim time, where the running turn is cancelled."""
        k = self.keys(conversation)
        reply = await self._enqueue(
            keys=[k.meta, k.queue], args=[run_id, on_busy, repr(submitted_at)]
        )
        return reply[0].decode(), reply[1].decode()

    async def append(
        self,
        conversation: str,
        run_id: str,
        *,
        fence: int,
        epoch: int,
        key: str,
        items: list[Any],
    ) -> int:
        """Append ``items`` (plain data, encoded and sealed like journal payloads) if
        ``run_id`` holds the conversation with ``fence`` in ``epoch``; returns the item
        count after it. Raises :class:`ConversationFenced` otherwise, and
        :class:`PayloadTooLargeError` past :data:`APPEND_MAX_BYTES`. The same ``key`` again
        (a retried append) returns the first answer and adds nothing."""
        encoded: list[bytes] = []
        for i, item in enumerate(items):
            try:
                encoded.append(seal_bytes(bytes(encode_value(item))))
            except Exception as exc:
                raise InvalidRequestError(
                    f"conversation {conversation!r}: item {i} of type {type(item).__name__} "
                    f"cannot be stored ({exc}); append plain data"
                ) from None
        size = sum(len(e) for e in encoded)
        if size > APPEND_MAX_BYTES:
            raise PayloadTooLargeError(
                f"conversation {conversation!r}: an append of {size} bytes is over the "
                f"{APPEND_MAX_BYTES}-byte limit"
            )
        k = self.keys(conversation)
        reply = await self._append(
            keys=[k.meta, k.items, k.applied],
            args=[run_id, fence, epoch, key, repr(time.time()), *encoded],
        )
        if reply[0] != b"ok":
            raise ConversationFenced(
                f"run {run_id!r} (fence {fence}, epoch {epoch}) no longer holds conversation "
                f"{conversation!r} (held by {reply[1].decode()!r}, fence {reply[2].decode()}); "
                "its append was refused"
            )
        return int(reply[1])

    async def count(self, conversation: str) -> int:
        """Items stored now (the holder's uncommitted ones included)."""
        return int(await self.redis.llen(self.keys(conversation).items))

    async def items(self, conversation: str, count: int) -> list[Any]:
        """The first ``count`` items, decoded (opened if sealed)."""
        if count <= 0:
            return []
        rows = cast(
            "list[bytes]", await self.redis.lrange(self.keys(conversation).items, 0, count - 1)
        )
        return [decode_value(r) for r in rows]

    async def release(
        self, conversation: str, run_id: str, *, fence: int | None, completed: bool
    ) -> tuple[str, str]:
        """``run_id`` ended: give the hold up (``fence`` None: whatever its fence) and hand
        it to the next queued run. Returns ``(outcome, run)``: ``handed`` and the run that
        holds it now, ``free``, or ``not_holder`` (the run was only taken out of the queue)."""
        k = self.keys(conversation)
        reply = await self._release(
            keys=[k.meta, k.items, k.queue, k.applied],
            args=[
                run_id,
                "" if fence is None else str(fence),
                "1" if completed else "0",
                repr(time.time()),
            ],
        )
        return reply[0].decode(), reply[1].decode()

    async def drop_queued(self, conversation: str, run_id: str) -> None:
        """Take a run that will never run out of the queue."""
        await self.redis.zrem(self.keys(conversation).queue, run_id)

    async def info(self, conversation: str) -> ConversationInfo | None:
        """The conversation's state, or None when it has never been used."""
        k = self.keys(conversation)
        raw = cast("dict[bytes, bytes]", await self.redis.hgetall(k.meta))
        queue = cast("list[bytes]", await self.redis.zrange(k.queue, 0, -1))
        if not raw and not queue:
            return None

        def num(name: str) -> float:
            value = raw.get(name.encode(), b"")
            return float(value) if value else 0.0

        return ConversationInfo(
            id=conversation,
            holder=raw.get(b"holder", b"").decode(),
            fence=int(num("fence")),
            turns=int(num("turns")),
            items=int(await self.redis.llen(k.items)),
            committed=int(num("committed")),
            updated_at=num("updated_at"),
            queue=[q.decode() for q in queue],
        )
