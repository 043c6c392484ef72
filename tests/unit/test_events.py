"""The event of each journal entry (``entry_event``), the wire data of the events Stalwart
builds elsewhere, and the typed data of every event type."""

from __future__ import annotations

import typing
from typing import Any

import msgspec
import pytest

from stalwart._journal_events import MAX_EVENT_RESULT, entry_event, step_started_data
from stalwart.checkpoints import (
    Entry,
    ErrorInfo,
    Finished,
    JournalEntry,
    Started,
    StepAttempt,
    StepDone,
    StepError,
    StepIntent,
    WaitStarted,
    encode_value,
)
from stalwart.messages import (
    EVENT_DATA,
    TERMINAL_EVENTS,
    ConcurrencyWaitingData,
    ErrorData,
    EventData,
    EventType,
    OutcomeUnknownData,
    ReasonData,
    RequestRejectedData,
    RunAcceptedData,
    RunEndedData,
    RunEvent,
    RunPassivatedData,
    RunStuckData,
    SignalReceivedData,
    StepEndedData,
    StepResetData,
    StepRetryingData,
    StepStartedData,
    data_dict,
    decode_event,
    encode_event,
    event_data,
)

W = {"epoch": 4, "worker": "w1"}
BOOM = ErrorInfo(type="ValueError", message="boom")
STEP = {"key": "step:s1", "kind": "tool", "name": "search", "fp": "fp", **W}

# (entry, event type, step, at, data): the event each journal entry announces.
CASES: list[tuple[str, Entry, str, str, float, Any]] = [
    ("first start", Started(at=10.0, **W), "run.started", "", 10.0, None),
    (
        "resume",
        Started(at=10.0, resumed=True, **W),
        "run.resumed",
        "",
        10.0,
        {"journaled_steps": 3},
    ),
    (
        "step done",
        StepDone(result=encode_value(1), at=10.0, duration=0.5, **STEP),
        "step.completed",
        "step:s1",
        10.5,
        {"kind": "tool", "name": "search", "duration": 0.5},
    ),
    (
        "step error",
        StepError(error=BOOM, at=10.0, duration=0.5, **STEP),
        "step.failed",
        "step:s1",
        10.5,
        {
            "kind": "tool",
            "name": "search",
            "duration": 0.5,
            "error": {"type": "ValueError", "message": "boom"},
        },
    ),
    (
        "failed attempt",
        StepAttempt(attempt=2, error=BOOM, delay=1.5, at=10.0, duration=0.5, **STEP),
        "step.retrying",
        "step:s1",
        10.0,
        {"attempt": 2, "delay": 1.5, "error": {"type": "ValueError", "message": "boom"}},
    ),
    (
        "at-most-once intent",
        StepIntent(attempt=1, at=10.0, **STEP),
        "step.intent",
        "step:s1",
        10.0,
        {"attempt": 1, "name": "search"},
    ),
    (
        "durable wait",
        WaitStarted(key="wait:1", until=99.0, signal="go", at=10.0, **W),
        "wait.started",
        "wait:1",
        10.0,
        {"until": 99.0, "signal": "go"},
    ),
    (
        "completed",
        Finished(status="completed", result=msgspec.Raw(encode_value({"a": [1]})), at=11.0, **W),
        "run.completed",
        "",
        11.0,
        {"result": {"a": [1]}},
    ),
    (
        "completed with None",
        Finished(status="completed", result=msgspec.Raw(encode_value(None)), at=11.0, **W),
        "run.completed",
        "",
        11.0,
        {"result": None},
    ),
    (
        "completed, result too big for an event",
        Finished(
            status="completed",
            result=msgspec.Raw(encode_value("x" * MAX_EVENT_RESULT)),
            at=11.0,
            **W,
        ),
        "run.completed",
        "",
        11.0,
        {"result_bytes": len(encode_value("x" * MAX_EVENT_RESULT))},
    ),
    (
        "failed",
        Finished(status="failed", error=BOOM, at=11.0, **W),
        "run.failed",
        "",
        11.0,
        {"error": {"type": "ValueError", "message": "boom"}},
    ),
    (
        "cancelled",
        Finished(
            status="cancelled", error=ErrorInfo(type="RunCancelled", message="bye"), at=11.0, **W
        ),
        "run.cancelled",
        "",
        11.0,
        {"error": {"type": "RunCancelled", "message": "bye"}},
    ),
]


@pytest.mark.parametrize(
    ("entry", "type_", "step", "at", "data"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_entry_event(entry: Entry, type_: str, step: str, at: float, data: Any) -> None:
    event = entry_event("r1", JournalEntry(seq=7, entry=entry), journaled_steps=3)
    assert event == RunEvent(
        type=type_, run_id="r1", at=at, worker="w1", epoch=4, jseq=7, step=step, data=data
    )
    # On the wire, and back as the typed data of its type.
    decoded = decode_event(encode_event(event))
    assert decoded == event
    typed = event_data(decoded)
    if data is None:
        assert typed is None
    else:
        assert msgspec.to_builtins(typed) == data


def test_entry_event_is_the_same_event_each_time() -> None:
    # A live publish and a republish after a crash build the same event, so the stream's
    # de-duplication (message id from run id and jseq) drops the second one.
    je = JournalEntry(
        seq=5, entry=StepAttempt(attempt=1, error=BOOM, delay=2.0, at=1.0, duration=0.1, **STEP)
    )
    assert encode_event(entry_event("r", je)) == encode_event(entry_event("r", je))


def test_a_result_that_cannot_be_decoded_here_is_announced_by_its_size() -> None:
    deep = b"\x91" * 2000 + b"\xc0"  # a list nested 2000 deep: more than the decoder takes
    fin = Finished(status="completed", result=msgspec.Raw(deep), at=1.0, **W)
    event = entry_event("r", JournalEntry(seq=2, entry=fin))
    assert event.data == {"result_bytes": len(deep)}


def test_every_event_type_has_its_data_struct() -> None:
    assert set(EVENT_DATA) == set(typing.get_args(EventType))
    assert TERMINAL_EVENTS <= set(EVENT_DATA)


@pytest.mark.parametrize(
    ("type_", "data", "expected"),
    [
        ("run.accepted", {"agent": "a"}, None),
        ("run.started", None, None),
        ("my.progress", {"anything": 1}, None),
        (
            "step.failed",
            {"kind": "k", "name": "n", "duration": 1.0, "error": {"type": "T", "message": "m"}},
            StepEndedData(kind="k", name="n", duration=1.0, error=ErrorData(type="T", message="m")),
        ),
        (
            "step.retrying",
            {"attempt": 1, "delay": 0.5, "error": {"type": "T", "message": "m"}},
            StepRetryingData(attempt=1, delay=0.5, error=ErrorData(type="T", message="m")),
        ),
        ("run.completed", {"result_bytes": 9}, RunEndedData(result_bytes=9)),
    ],
)
def test_event_data_reads_the_typed_data(type_: str, data: Any, expected: Any) -> None:
    got = event_data(RunEvent(type=type_, run_id="r", at=1.0, data=data))
    if type_ == "run.accepted":
        assert got is not None and got.agent == "a"  # type: ignore[union-attr]
    else:
        assert got == expected


def test_event_data_refuses_data_of_the_wrong_shape() -> None:
    cut = RunEvent(type="step.retrying", run_id="r", at=1.0, data={"truncated": "too large"})
    with pytest.raises(msgspec.ValidationError):
        event_data(cut)


# -- events not built from a journal entry ----------------------------------------------------
# Their call sites (broker, intake, actor, executor, supervisor) build the data as
# ``data_dict(<struct>)``. These are the exact wire shapes those structs give: a field that
# was always sent (``agent`` "", ``wake_at`` 0) stays sent; only unset ones are left out.

FAILED = ErrorData(type="DeadLettered", message="too many deliveries")

# (event type, the struct a call site builds, the data on the wire)
BUILT: list[tuple[str, EventData, dict[str, Any]]] = [
    ("run.accepted", RunAcceptedData(agent="a"), {"agent": "a"}),
    (
        "run.accepted",
        RunAcceptedData(agent="a", forked_from="r0", at="step:s5"),
        {"agent": "a", "forked_from": "r0", "at": "step:s5"},
    ),
    (
        "request.rejected",
        RequestRejectedData(reason="bad", agent=""),
        {"reason": "bad", "agent": ""},
    ),
    (
        "request.rejected",
        RequestRejectedData(reason="bad", agent="a", stream_seq=0),
        {"reason": "bad", "agent": "a", "stream_seq": 0},
    ),
    ("signal.received", SignalReceivedData(name="go", sid="s1"), {"name": "go", "sid": "s1"}),
    (
        "run.cancelled",
        RunEndedData(error=ErrorData(type="RunCancelled", message="")),
        {"error": {"type": "RunCancelled", "message": ""}},
    ),
    (
        "run.failed",
        RunEndedData(error=FAILED),
        {"error": {"type": "DeadLettered", "message": "too many deliveries"}},
    ),
    ("run.stuck", RunStuckData(idle_seconds=0.0, action=""), {"idle_seconds": 0.0, "action": ""}),
    ("run.passivated", RunPassivatedData(signal="", wake_at=0.0), {"signal": "", "wake_at": 0.0}),
    ("run.lease_lost", ReasonData(reason="fenced"), {"reason": "fenced"}),
    ("run.released", ReasonData(reason=""), {"reason": ""}),
    (
        "step.outcome_unknown",
        OutcomeUnknownData(signal="outcome:step:pay", idempotency_key="r:step:pay"),
        {"signal": "outcome:step:pay", "idempotency_key": "r:step:pay"},
    ),
    ("step.started", StepStartedData(kind="tool", attempt=1), {"kind": "tool", "attempt": 1}),
    (
        "step.reset",
        StepResetData(attempt=2, reason="failover"),
        {"attempt": 2, "reason": "failover"},
    ),
    (
        "concurrency.waiting",
        ConcurrencyWaitingData(rule="per-tenant", key="acme", limit=2, ahead=3),
        {"rule": "per-tenant", "key": "acme", "limit": 2, "ahead": 3},
    ),
]


@pytest.mark.parametrize(("type_", "struct", "wire"), BUILT, ids=[c[0] for c in BUILT])
def test_built_event_data_has_its_wire_shape(
    type_: str, struct: EventData, wire: dict[str, Any]
) -> None:
    assert isinstance(struct, EVENT_DATA[type_] or type(None))
    assert data_dict(struct) == wire
    ev = RunEvent(type=type_, run_id="r", at=1.0, data=data_dict(struct))
    back = decode_event(encode_event(ev))
    assert back.data == wire
    assert event_data(back) == struct


def test_every_event_type_not_from_a_journal_entry_is_covered() -> None:
    journaled = {case[2] for case in CASES}
    assert set(EVENT_DATA) <= journaled | {t for t, _, _ in BUILT}


@pytest.mark.parametrize(("kind", "attempt"), [("tool", 1), ("model", 3), ("", 0), ("k", 99)])
def test_step_started_data_is_its_struct_as_a_dict(kind: str, attempt: int) -> None:
    got = step_started_data(kind, attempt)
    assert got == data_dict(StepStartedData(kind=kind, attempt=attempt))
    assert list(got) == list(StepStartedData.__struct_fields__)  # same keys, same order
