"""Unit tests of the bounds on untrusted values: error rendering, text cuts, event sizes."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from stalwart import ConfigurationError, Settings, StepFailed
from stalwart._text import (
    ERROR_TEXT_LIMIT,
    clip,
    exception_text,
    msgpack_may_nest_deeper,
    nesting_depth_exceeds,
    type_name,
)
from stalwart.actors._execute import error_info
from stalwart.broker._events import bounded_event
from stalwart.messages import RunEvent, decode_request, encode_event, read_event
from tests.hostile_apps import Unprintable


class _StrNotText(Exception):
    def __str__(self) -> Any:
        return 42


class _Sub(str):
    pass


class _StrSubclass(Exception):
    def __str__(self) -> str:
        return _Sub("sub text")


class _BadClass(Exception):
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("no class for you")


@pytest.mark.parametrize(
    ("make", "type_", "message"),
    [
        (Unprintable, "Unprintable", "<Unprintable: <unprintable exception>>"),
        (lambda: _StrNotText("x"), "_StrNotText", "_StrNotText('x')"),
        (_StrSubclass, "_StrSubclass", "sub text"),
        (lambda: _BadClass("boom"), "_BadClass", "boom"),
        (ValueError, "ValueError", "ValueError()"),
        (lambda: StepFailed("step:a", "KeyError", "gone"), "KeyError", "gone"),
    ],
    ids=["unprintable", "str-not-text", "str-subclass", "bad-class", "empty", "step-failed"],
)
def test_error_info_never_raises(make: Any, type_: str, message: str) -> None:
    info = error_info(make(), False)
    assert (info.type, info.message, info.retryable) == (type_, message, False)
    assert type(info.message) is str and type(info.type) is str


def test_error_info_bounds_huge_messages() -> None:
    info = error_info(ValueError("m" * (ERROR_TEXT_LIMIT + 10)))
    assert len(info.message) == ERROR_TEXT_LIMIT and info.message.endswith("more characters]")
    weird = StepFailed("k", "T", "x")
    weird.message = object()  # type: ignore[assignment]
    assert error_info(weird).message.startswith("<object object")


def test_type_name_and_exception_text_survive_hostile_classes() -> None:
    assert type_name(Unprintable()) == "Unprintable"
    assert exception_text(Unprintable()) == "<Unprintable: <unprintable exception>>"


@pytest.mark.parametrize("limit", [1, 5, 20, 40, 100])
def test_clip_never_exceeds_its_limit(limit: int) -> None:
    for n in (0, limit - 1, limit, limit + 1, 10 * limit):
        text = "a" * max(n, 0)
        cut = clip(text, limit)
        assert len(cut) <= limit
        assert cut == text if len(text) <= limit else "more" in cut or len(cut) == limit


def test_nesting_depth_is_checked_without_recursion() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    assert nesting_depth_exceeds(value, 100)
    shallow: Any = {"a": [1, {"b": (2, 3)}]}
    assert not nesting_depth_exceeds(shallow, 4)  # dict > list > dict > tuple
    assert nesting_depth_exceeds(shallow, 3)
    assert not nesting_depth_exceeds("flat", 1)


def _event(**kw: Any) -> RunEvent:
    base: dict[str, Any] = {"type": "run.failed", "run_id": "r1", "at": time.time(), "jseq": 7}
    return RunEvent(**{**base, **kw})


def test_small_events_are_encoded_unchanged() -> None:
    ev = _event(data={"error": {"type": "ValueError", "message": "short"}})
    assert bounded_event(ev, 4096, 1_000_000) == encode_event(ev)


@pytest.mark.parametrize("size", [4095, 4096, 4097, 1_000_000, 3_000_000])
def test_long_texts_are_cut_to_the_limit(size: int) -> None:
    ev = _event(
        step="s" * size,
        worker="w" * size,
        data={"error": {"type": "E", "message": "m" * size}, "k" * size: 1},
    )
    out = msgspec.json.decode(bounded_event(ev, 4096, 1_000_000), type=RunEvent)
    assert (out.type, out.run_id, out.jseq) == ("run.failed", "r1", 7)
    assert len(out.step) <= 4096 and len(out.worker) <= 4096
    assert len(out.data["error"]["message"]) <= 4096
    assert all(len(k) <= 4096 for k in out.data)


def test_a_result_that_does_not_fit_is_omitted_and_the_rest_kept() -> None:
    ev = _event(type="run.completed", data={"result": "x" * 50_000})
    out = msgspec.json.decode(bounded_event(ev, 4096, 20_000), type=RunEvent)
    assert out.data == {"result_omitted": True}
    kept = msgspec.json.decode(bounded_event(ev, 4096, 100_000), type=RunEvent)
    assert kept.data == {"result": "x" * 50_000}  # results are never cut, only omitted


def test_unencodable_or_deep_data_becomes_a_marker_that_fits() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    for data in ({"x": object()}, deep, {"error": deep}):
        raw = bounded_event(_event(data=data), 4096, 2000)
        out = msgspec.json.decode(raw, type=RunEvent)
        assert len(raw) <= 2000 and out.type == "run.failed" and out.jseq == 7
    tiny = bounded_event(_event(data={"m": "x" * 10_000}, step="s" * 10_000), 4096, 1024)
    assert len(tiny) <= 1024


def test_read_event_skips_garbage() -> None:
    for garbage in (b"", b"\xff", b"[]", b'{"type": 5}', b'{"type":"x","run_id":"r","at":"x"}'):
        assert read_event(garbage) is None
    ev = _event()
    assert read_event(encode_event(ev)) == ev


def test_requests_with_a_negative_epoch_do_not_decode() -> None:
    data = msgspec.msgpack.encode({"run_id": "r1", "agent": "a", "kind": "resume", "epoch": -1})
    with pytest.raises(msgspec.ValidationError):
        decode_request(data)


def test_new_limits_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STALWART_MAX_PLACEMENTS", "7")
    monkeypatch.setenv("STALWART_MAX_NESTING", "12")
    monkeypatch.setenv("STALWART_EVENT_TEXT_LIMIT", "1000")
    s = Settings.from_env()
    assert (s.max_placements, s.max_nesting, s.event_text_limit) == (7, 12, 1000)
    d = Settings()
    assert (d.max_placements, d.max_nesting, d.event_text_limit) == (20, 100, 4096)
    for bad in ({"max_nesting": 0}, {"event_text_limit": 10}, {"max_placements": -1}):
        with pytest.raises(ConfigurationError):
            Settings(**bad)


def test_a_short_count_of_container_bytes_rules_deep_nesting_out() -> None:
    value: Any = 1
    for _ in range(150):
        value = [value]
    assert msgpack_may_nest_deeper(msgspec.msgpack.encode(value), 149)
    assert not msgpack_may_nest_deeper(msgspec.msgpack.encode(value), 150)
    flat = msgspec.msgpack.encode({"text": "x" * 100_000, "n": [1, 2, 3] * 1000})
    assert not msgpack_may_nest_deeper(flat, 100)
    # Container-like bytes inside strings only make it look: the full check decides.
    assert msgpack_may_nest_deeper(msgspec.msgpack.encode("\x90" * 200), 100)
