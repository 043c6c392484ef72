"""StreamText and the reset rules of a run's stream, over plain parts and events."""

from __future__ import annotations

from stalwart import Chunk, Reset, StepDone, StreamEnd, StreamText
from stalwart.client._stream import _Parts
from stalwart.messages import RunEvent


def chunk(
    step: str, text: str, epoch: int = 1, attempt: int = 1, kind: str = "model.delta"
) -> Chunk:
    return Chunk(step, epoch, attempt, "w", kind, {"text": text}, 0)


def test_text_is_the_deltas_per_step_in_step_order() -> None:
    view = StreamText()
    for part in (chunk("a", "Hel"), chunk("b", "!"), chunk("a", "lo")):
        view.apply(part)
    assert view.steps == {"a": "Hello", "b": "!"}
    assert view.text == "Hello!"


def test_a_reset_empties_its_step_only() -> None:
    view = StreamText()
    view.apply(chunk("a", "one "))
    view.apply(chunk("b", "dead"))
    view.apply(Reset("b", 2, 1, "failover", 0))
    view.apply(chunk("b", "two", epoch=2))
    assert view.text == "one two"


def test_other_items_and_text_less_deltas_are_not_text() -> None:
    view = StreamText()
    view.apply(Chunk("a", 1, 1, "w", "stream.item", {"mode": "custom", "chunk": 1}, 0))
    view.apply(Chunk("a", 1, 1, "w", "model.delta", {"type": "tool_call"}, 0))
    view.apply(StepDone("a", "model", "m", False, "x"))
    view.apply(StreamEnd("completed", "x"))
    assert view.text == "" and view.ended == StreamEnd("completed", "x")


def test_parts_to_dict_name_their_kind() -> None:
    assert chunk("a", "x").to_dict()["part"] == "chunk"
    assert Reset("a", 1, 2, "retry", 5).to_dict() == {
        "part": "reset",
        "step": "a",
        "epoch": 1,
        "attempt": 2,
        "reason": "retry",
        "seq": 5,
    }
    assert StreamEnd("failed", None, "E: x").to_dict()["part"] == "end"


def ev(type: str, step: str, epoch: int, attempt: int, text: str = "", **data: str) -> RunEvent:
    payload = {"text": text} if type == "model.delta" else data
    return RunEvent(
        type=type, run_id="r", at=0.0, step=step, epoch=epoch, attempt=attempt, data=payload
    )


def test_chunks_of_a_void_attempt_are_dropped_after_its_reset() -> None:
    parts = _Parts()
    assert parts.event(ev("model.delta", "s", 1, 1, "a")) != []
    reset = parts.event(ev("step.reset", "s", 2, 1, reason="failover"))
    assert [type(p) for p in reset] == [Reset]
    assert parts.event(ev("model.delta", "s", 1, 1, "late")) == []  # the frozen old owner
    assert [p.data["text"] for p in parts.event(ev("model.delta", "s", 2, 1, "b"))] == ["b"]


def test_a_reset_nothing_was_shown_for_yields_nothing() -> None:
    parts = _Parts()
    assert parts.event(ev("step.reset", "s", 2, 1, reason="failover")) == []


def test_a_newer_attempt_resets_even_when_the_reset_event_was_lost() -> None:
    parts = _Parts()
    parts.event(ev("model.delta", "s", 1, 1, "a"))
    out = parts.event(ev("model.delta", "s", 1, 2, "b"))
    assert [type(p) for p in out] == [Reset, Chunk]
    assert out[0].reason == "retry"  # type: ignore[union-attr]


def test_chunks_of_an_older_owner_epoch_are_dropped() -> None:
    parts = _Parts()
    parts.event(ev("run.resumed", "", 3, 0))
    assert parts.event(ev("model.delta", "s", 2, 1, "zombie")) == []
