"""The Redis journal: fenced appends, replay reads, run records and their codecs."""

from stalwart.checkpoints._entries import (
    TERMINAL_STATUSES,
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    RunRecord,
    RunStatus,
    Started,
    StepDone,
    StepError,
    decode_entry,
    decode_value,
    encode_entry,
    encode_value,
)
from stalwart.checkpoints._store import CancelOutcome, CheckpointStore, Claim, JournalConflict

__all__ = [
    "TERMINAL_STATUSES",
    "CancelOutcome",
    "CheckpointStore",
    "Claim",
    "Entry",
    "ErrorInfo",
    "Finished",
    "JournalConflict",
    "JournalEntry",
    "RunRecord",
    "RunStatus",
    "Started",
    "StepDone",
    "StepError",
    "decode_entry",
    "decode_value",
    "encode_entry",
    "encode_value",
]
