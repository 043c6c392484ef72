"""The Redis journal: fenced appends, replay reads, run records and their codecs.

Payload encryption lives here too: :class:`PayloadCodec` (the hook for a codec of your own,
such as a KMS), :class:`AesGcmCodec` (the shipped one), :func:`set_payload_codec`, and
:func:`seal_bytes` / :func:`open_bytes` for adapters that store payloads of their own.

Also the Redis key schema (:class:`KeySchema`, :class:`RunKeys`) and the epoch fence
(:func:`fenced`, :class:`Fence`) for adapters that keep data of their own by a run, and
:class:`RunStore`, the part of the store a run's own code sees (``RunContext.store``).
"""

from stalwart.checkpoints._aesgcm import AesGcmCodec
from stalwart.checkpoints._cluster import redis_clients
from stalwart.checkpoints._codec import open_bytes, payload_codec, seal_bytes, set_payload_codec
from stalwart.checkpoints._conversations import (
    ConversationClaim,
    ConversationFenced,
    ConversationInfo,
    ConversationStore,
    OnBusy,
    check_conversation_id,
    check_on_busy,
)
from stalwart.checkpoints._entries import (
    TERMINAL_STATUSES,
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    RunRecord,
    RunStatus,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    decode_entry,
    decode_value,
    encode_entry,
    encode_value,
)
from stalwart.checkpoints._envelope import (
    PayloadCodec,
    envelope_header,
    envelope_key_id,
    read_envelope_header,
)
from stalwart.checkpoints._fence import Fence, fenced
from stalwart.checkpoints._keys import KeySchema, RunKeys
from stalwart.checkpoints._runs import CancelOutcome, Claim
from stalwart.checkpoints._scoped import RunStore
from stalwart.checkpoints._store import CheckpointStore
from stalwart.checkpoints._writer import JournalConflict, JournalGap

__all__ = [
    "TERMINAL_STATUSES",
    "AesGcmCodec",
    "CancelOutcome",
    "CheckpointStore",
    "Claim",
    "ConversationClaim",
    "ConversationFenced",
    "ConversationInfo",
    "ConversationStore",
    "Entry",
    "ErrorInfo",
    "Fence",
    "Finished",
    "JournalConflict",
    "JournalEntry",
    "JournalGap",
    "KeySchema",
    "OnBusy",
    "PayloadCodec",
    "RunKeys",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "Started",
    "StepAttempt",
    "StepDone",
    "StepError",
    "StepIntent",
    "WaitStarted",
    "check_conversation_id",
    "check_on_busy",
    "decode_entry",
    "decode_value",
    "encode_entry",
    "encode_value",
    "envelope_header",
    "envelope_key_id",
    "fenced",
    "open_bytes",
    "payload_codec",
    "read_envelope_header",
    "redis_clients",
    "seal_bytes",
    "set_payload_codec",
]
