"""Typed journal entries and the run record, with their msgpack codecs.

A journal is a Redis stream of these entries, one per stream entry, under field ``d``.
Results are kept as raw msgpack (``msgspec.Raw``) so that reading a journal never decodes
results nobody asks for, and a replayed step decodes its result into the caller's type.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

from stalwart.builds._ids import routing_lane
from stalwart.checkpoints._codec import (
    SEALED_HEADS,
    open_bytes,
    payload_codec,
    seal_bytes,
    seal_text,
)
from stalwart.errors import CorruptRecordError

RunStatus = Literal["accepted", "running", "waiting", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


class ErrorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    """An exception as the journal keeps it: its type name and message."""

    type: str
    message: str
    retryable: bool = True


class Started(msgspec.Struct, frozen=True, tag="started", omit_defaults=True):
    """A worker took ownership of the run with ``epoch`` (a fencing token)."""

    epoch: int
    worker: str
    at: float
    resumed: bool = False


class StepDone(msgspec.Struct, frozen=True, tag="step", omit_defaults=True):
    """A step completed; ``result`` is its msgpack-encoded return value."""

    key: str
    kind: str
    name: str
    fp: str
    result: msgspec.Raw
    epoch: int
    worker: str
    at: float
    duration: float
    attempt: int = 1
    model: str = ""
    """For model steps: the model that answered, and the tokens it reported."""
    input_tokens: int = 0
    output_tokens: int = 0


class StepAttempt(msgspec.Struct, frozen=True, tag="attempt", omit_defaults=True):
    """A failed attempt that will be retried after ``delay`` seconds.

    A resume counts these, so it continues the retry sequence instead of restarting it.
    """

    key: str
    kind: str
    name: str
    fp: str
    attempt: int
    error: ErrorInfo
    delay: float
    epoch: int
    worker: str
    at: float
    duration: float


class StepIntent(msgspec.Struct, frozen=True, tag="intent", omit_defaults=True):
    """An at-most-once step is about to be called. Without a later outcome: unknown."""

    key: str
    kind: str
    name: str
    fp: str
    attempt: int
    epoch: int
    worker: str
    at: float


class WaitStarted(msgspec.Struct, frozen=True, tag="wait", omit_defaults=True):
    """A durable wait (sleep or signal) began; ``until`` is its absolute deadline (or 0)."""

    key: str
    until: float
    signal: str
    epoch: int
    worker: str
    at: float


class StepError(msgspec.Struct, frozen=True, tag="step_error", omit_defaults=True):
    """A step raised; a replay raises the same :class:`~stalwart.errors.StepFailed`."""

    key: str
    kind: str
    name: str
    fp: str
    error: ErrorInfo
    epoch: int
    worker: str
    at: float
    duration: float
    attempt: int = 1


class Finished(msgspec.Struct, frozen=True, tag="finished", omit_defaults=True):
    """The run ended. ``result`` is set when completed, ``error`` when failed or cancelled."""

    status: RunStatus
    epoch: int
    worker: str
    at: float
    result: msgspec.Raw = msgspec.Raw()
    """Encoded result; empty unless completed (msgspec cannot put Raw in a union)."""
    error: ErrorInfo | None = None


Entry = Started | StepDone | StepError | StepAttempt | StepIntent | WaitStarted | Finished


class JournalEntry(msgspec.Struct, frozen=True):
    """A journal entry with its position (``seq``: the stream id ``<seq>-0``)."""

    seq: int
    entry: Entry


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The run's summary hash in Redis: who owns it, in which epoch, and how it ended."""

    run_id: str
    agent: str
    status: RunStatus
    epoch: int = 0
    worker: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    input: msgspec.Raw | None = None
    result: msgspec.Raw | None = None
    error_type: str = ""
    error: str = ""
    cancel: str = ""
    trace: str = ""
    deadline: float = 0.0
    """Absolute time (epoch seconds) after which the run fails; 0 for none."""
    wake_at: float = 0.0
    """For a passivated (``waiting``) run: when its timer fires; 0 for none."""
    waiting_for: str = ""
    """For a passivated run: the signal name it waits for."""
    lane: str = ""
    """The lane the run was submitted to ("": the default lane); its resume requests go
    there too."""
    queued_for: str = ""
    """What a run waiting to be placed waits for (``concurrency <rule> key <key>``)."""
    build: str = ""
    """The build that first placed the run ("": not placed yet, or placed before builds)."""
    conversation: str = ""
    """The conversation the run is a turn of ("": none; see docs/conversations.md)."""
    wait_signal: str = ""
    """The signal the durable wait the run is in waits for ("": none, or a sleep), whether
    the run is hosted or passivated. Empty once the run has ended."""
    wait_deadline: float = 0.0
    """When the durable wait the run is in gives up (a sleep: ends); 0 for no wait or no
    timeout. Unlike ``wake_at`` it is the wait's own deadline, set while hosted too."""

    @property
    def route_lane(self) -> str:
        """The lane the run's resume requests go to: its lane, for its build's workers
        (:func:`stalwart.builds.routing_lane`)."""
        return routing_lane(self.lane, self.build)

    @property
    def terminal(self) -> bool:
        """Whether the run has ended (completed, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    def decode_input(self) -> Any:
        """The run's input as plain Python values."""
        return decode_value(self.input) if self.input is not None else None

    def decode_result(self, type: Any = Any) -> Any:
        """The run's result, converted to ``type``."""
        return decode_value(self.result, type) if self.result is not None else None


_entry_encoder = msgspec.msgpack.Encoder()
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_value_encoder = msgspec.msgpack.Encoder()
_any_decoder = msgspec.msgpack.Decoder()


def encode_entry(entry: Entry) -> bytes:
    """Encode one journal entry."""
    return _entry_encoder.encode(entry)


def decode_entry(data: bytes) -> Entry:
    """Decode one journal entry."""
    entry: Entry = _entry_decoder.decode(data)
    return entry


def encode_value(value: Any) -> msgspec.Raw:
    """Encode a step result or run input; raises ``TypeError`` for unsupported types."""
    return msgspec.Raw(_value_encoder.encode(value))


def decode_value(raw: msgspec.Raw | bytes, type: Any = Any) -> Any:
    """Decode a value encoded by :func:`encode_value`, converted to ``type``.

    A sealed value (payload encryption) is decrypted first; one this process has no key
    for raises :class:`~stalwart.errors.PayloadKeyError` naming the key id.
    """
    data = bytes(raw)
    if data and data[0] in SEALED_HEADS:  # most values are not sealed: test the head first
        data = open_bytes(data)
    if type is Any:
        return _any_decoder.decode(data)
    return msgspec.msgpack.decode(data, type=type)


_E = TypeVar("_E", bound=Entry)


def _sealed_error(error: ErrorInfo) -> ErrorInfo:
    return ErrorInfo(error.type, seal_text(error.message), error.retryable)


def seal_entry(entry: _E) -> _E:
    """``entry`` as it is stored: with a payload codec, its payloads sealed (a step's or the
    run's result, error messages); every other field, and the entry with no codec, as it is.

    Entries that were read back sealed stay sealed (sealing is idempotent), and readers
    never need to know: :func:`decode_value` and ``open_text`` take either form.
    """
    if payload_codec() is None:
        return entry
    if isinstance(entry, StepDone):
        return msgspec.structs.replace(entry, result=msgspec.Raw(seal_bytes(bytes(entry.result))))
    if isinstance(entry, StepError | StepAttempt):
        return msgspec.structs.replace(entry, error=_sealed_error(entry.error))
    if isinstance(entry, Finished):
        result = bytes(entry.result)
        return msgspec.structs.replace(
            entry,
            result=msgspec.Raw(seal_bytes(result)) if result else entry.result,
            error=_sealed_error(entry.error) if entry.error is not None else None,
        )
    return entry


def record_from_hash(raw: dict[bytes, bytes]) -> RunRecord | None:
    """Build a :class:`RunRecord` from ``HGETALL`` output (None when the hash is empty).

    Raises :class:`CorruptRecordError` (naming the run and the field) for a hash that no
    Stalwart script wrote, never a bare ``ValueError``.
    """
    if not raw:
        return None
    try:
        return _record(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        run_id = raw.get(b"run_id", b"?").decode(errors="replace")[:200]
        raise CorruptRecordError(f"corrupt run record of run {run_id!r}: {exc}") from None


def _number(raw: dict[bytes, bytes], name: str, kind: type[int] | type[float]) -> Any:
    value = raw.get(name.encode(), b"")
    try:
        return kind(value.decode()) if value else kind()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"field {name!r} is {value[:50]!r}, not a number") from None


def _record(raw: dict[bytes, bytes]) -> RunRecord:
    def text(name: str) -> str:
        return raw.get(name.encode(), b"").decode()

    def blob(name: str) -> msgspec.Raw | None:
        value = raw.get(name.encode())
        return msgspec.Raw(value) if value else None

    status = text("status") or "accepted"
    if status not in ("accepted", "running", "waiting", "completed", "failed", "cancelled"):
        raise ValueError(f"status {status!r} is not a run status")
    return RunRecord(
        run_id=text("run_id"),
        agent=text("agent"),
        status=status,  # type: ignore[arg-type]  # checked just above
        epoch=_number(raw, "epoch", int),
        worker=text("worker"),
        created_at=_number(raw, "created_at", float),
        updated_at=_number(raw, "updated_at", float),
        input=blob("input"),
        result=blob("result"),
        error_type=text("error_type"),
        error=text("error"),
        cancel=text("cancel"),
        trace=text("trace"),
        deadline=_number(raw, "deadline", float),
        wake_at=_number(raw, "wake_at", float),
        waiting_for=text("waiting_for"),
        lane=text("lane"),
        queued_for=text("queued_for"),
        build=text("build"),
        conversation=text("conversation"),
        # Noted when a wait starts and cleared when it ends: a run that ended in a wait
        # (cancelled, failed) waits for nothing any more.
        wait_signal="" if status in TERMINAL_STATUSES else text("wait_signal"),
        wait_deadline=0.0 if status in TERMINAL_STATUSES else _number(raw, "wait_deadline", float),
    )
