"""The Redis journal: fenced appends, replay reads, run records and their codecs.

Also the Redis key schema (:class:`KeySchema`, :class:`RunKeys`) and the epoch fence
(:func:`fenced`, :class:`Fence`) for adapters that keep data of their own by a run, and
:class:`RunStore`, the part of the store a run's own code sees (``RunContext.store``).
"""

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
from stalwart.checkpoints._fence import Fence, fenced
from stalwart.checkpoints._keys import KeySchema, RunKeys
from stalwart.checkpoints._runs import CancelOutcome, Claim
from stalwart.checkpoints._scoped import RunStore
from stalwart.checkpoints._store import CheckpointStore
from stalwart.checkpoints._writer import JournalConflict

__all__ = [
    "TERMINAL_STATUSES",
    "CancelOutcome",
    "CheckpointStore",
    "Claim",
    "Entry",
    "ErrorInfo",
    "Fence",
    "Finished",
    "JournalConflict",
    "JournalEntry",
    "KeySchema",
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
    "decode_entry",
    "decode_value",
    "encode_entry",
    "encode_value",
    "fenced",
]
