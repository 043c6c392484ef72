"""Run records and journal entries: their codecs, without Redis."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from stalwart.checkpoints import (
    ErrorInfo,
    Finished,
    Started,
    StepDone,
    StepError,
    decode_entry,
    decode_value,
    encode_entry,
    encode_value,
)
from stalwart.checkpoints._entries import record_from_hash


def test_record_from_empty_hash_is_none() -> None:
    assert record_from_hash({}) is None


def test_record_from_full_hash_round_trip() -> None:
    raw = {
        b"run_id": b"run-1",
        b"agent": b"research",
        b"status": b"completed",
        b"epoch": b"12",
        b"worker": b"w-1",
        b"created_at": b"1700000000.5",
        b"updated_at": b"1700000001.25",
        b"input": bytes(encode_value({"q": "x"})),
        b"result": bytes(encode_value([1, 2, 3])),
        b"error_type": b"",
        b"error": b"",
        b"cancel": b"",
        b"trace": b'{"traceparent":"00-abc"}',
        b"finished_at": b"1700000001.25",
    }
    rec = record_from_hash(raw)
    assert rec is not None
    assert rec.run_id == "run-1"
    assert rec.agent == "research"
    assert rec.status == "completed"
    assert rec.terminal
    assert rec.epoch == 12
    assert rec.worker == "w-1"
    assert rec.created_at == 1700000000.5
    assert rec.updated_at == 1700000001.25
    assert rec.decode_input() == {"q": "x"}
    assert rec.decode_result() == [1, 2, 3]
    assert rec.trace == '{"traceparent":"00-abc"}'
    assert rec.error_type == rec.error == rec.cancel == ""


def test_record_from_minimal_hash_defaults() -> None:
    rec = record_from_hash({b"run_id": b"r", b"agent": b"a", b"status": b"running"})
    assert rec is not None
    assert rec.status == "running" and not rec.terminal
    assert rec.epoch == 0
    assert rec.input is None and rec.result is None
    assert rec.decode_result() is None


def test_record_from_hash_with_bad_status_raises() -> None:
    with pytest.raises(ValueError, match="exploded"):
        record_from_hash({b"run_id": b"r", b"agent": b"a", b"status": b"exploded"})


_RESULT = encode_value({"answer": 42, "items": ["a", "b"]})


@pytest.mark.parametrize(
    "entry",
    [
        Started(epoch=3, worker="w1", at=1.5),
        Started(epoch=4, worker="w2", at=2.5, resumed=True),
        StepDone(
            key="step:q#2",
            kind="step",
            name="q",
            fp="abc",
            result=_RESULT,
            epoch=3,
            worker="w1",
            at=1.0,
            duration=0.25,
            attempt=2,
        ),
        StepError(
            key="tool:x",
            kind="tool",
            name="x",
            fp="def",
            error=ErrorInfo("ValueError", "bad", retryable=False),
            epoch=3,
            worker="w1",
            at=1.0,
            duration=0.5,
        ),
        Finished(status="completed", epoch=3, worker="w1", at=9.0, result=_RESULT),
        Finished(
            status="failed", epoch=3, worker="w1", at=9.0, error=ErrorInfo("RuntimeError", "boom")
        ),
        Finished(status="cancelled", epoch=0, worker="", at=9.0),
    ],
    ids=lambda e: type(e).__name__,
)
def test_entry_codec_round_trip(entry: Any) -> None:
    data = encode_entry(entry)
    decoded = decode_entry(data)
    assert type(decoded) is type(entry)
    assert decoded == entry
    assert encode_entry(decoded) == data


def test_finished_result_decodes_or_is_empty() -> None:
    fin = Finished(status="completed", epoch=1, worker="w", at=1.0, result=_RESULT)
    done = decode_entry(encode_entry(fin))
    assert isinstance(done, Finished)
    assert decode_value(done.result) == {"answer": 42, "items": ["a", "b"]}
    bare = decode_entry(encode_entry(Finished(status="failed", epoch=1, worker="w", at=1.0)))
    assert isinstance(bare, Finished)
    assert len(bare.result) == 0
    assert bare.error is None


def test_step_done_result_decodes_into_a_type() -> None:
    class Out(msgspec.Struct):
        answer: int
        items: list[str]

    entry = decode_entry(
        encode_entry(
            StepDone(
                key="k",
                kind="step",
                name="n",
                fp="f",
                result=_RESULT,
                epoch=1,
                worker="w",
                at=0.0,
                duration=0.0,
            )
        )
    )
    assert isinstance(entry, StepDone)
    assert decode_value(entry.result, Out) == Out(answer=42, items=["a", "b"])


def test_an_appends_arguments_are_packed_as_pack_args_packs_them() -> None:
    # The journal append builds its RESP arguments in one format (once per step); they must
    # be byte for byte what the generic packer gives, binary data and all.
    import time

    from stalwart.checkpoints._pipe import pack_args
    from stalwart.checkpoints._store import _append_args

    for epoch, seq, data in [
        (1, 1, b""),
        (7, 12, b"\x00ab\r\n$3\r\n"),
        (2**40, 10**9, b"x" * 5000),
    ]:
        at = repr(time.time())
        assert _append_args(epoch, seq, data, at) == pack_args([epoch, f"{seq}-0", data, at])
