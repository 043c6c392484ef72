"""The wire's pure parts: encodings chosen by header, reply subjects, result pages."""

from __future__ import annotations

import msgspec
import pytest

from stalwart._wire import JSON, MSGPACK, WireFormatError, decode, encode_plain, encoding_of
from stalwart.api._messages import SubmitRequest, page_bounds, reply_allowed
from stalwart.messages import RunRequest


def test_the_header_names_the_encoding_and_msgpack_is_the_default() -> None:
    assert encoding_of(None) == encoding_of({}) == MSGPACK
    assert encoding_of({"Content-Type": "application/json; charset=utf-8"}) == JSON
    assert encoding_of({"Content-Type": " Application/JSON "}) == JSON
    assert encoding_of({"Content-Type": "application/x-msgpack"}) == MSGPACK
    with pytest.raises(WireFormatError, match="unsupported Content-Type 'text/plain'"):
        encoding_of({"Content-Type": "text/plain"})


def test_a_json_body_without_the_header_is_told_to_set_it() -> None:
    body = b'{"run_id": "r", "agent": "a"}'
    with pytest.raises(WireFormatError) as err:
        decode(body, RunRequest, MSGPACK, what="run request", max_nesting=64)
    assert "set header Content-Type: application/json" in str(err.value)
    assert "Expected `object`, got `int`" in str(err.value)  # msgpack's own words stay
    req = decode(body, RunRequest, JSON, what="run request", max_nesting=64)
    assert (req.run_id, req.agent, req.kind) == ("r", "a", "start")
    # Real garbage is not mistaken for JSON.
    with pytest.raises(WireFormatError) as err:
        decode(b"\xc1", RunRequest, MSGPACK, what="run request", max_nesting=64)
    assert "Content-Type" not in str(err.value)


def test_values_nested_past_max_nesting_are_refused_in_both_encodings() -> None:
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    for encoding in (JSON, MSGPACK):
        data = encode_plain({"agent": "a", "input": deep}, encoding)
        with pytest.raises(WireFormatError, match="max_nesting"):
            decode(data, SubmitRequest, encoding, what="submit request", max_nesting=5)
        assert decode(data, SubmitRequest, encoding, what="x", max_nesting=20).input == deep
        # Exactly max_nesting levels pass, as the Python client lets them.
        assert decode(data, SubmitRequest, encoding, what="x", max_nesting=10).input == deep
        with pytest.raises(WireFormatError, match="max_nesting"):
            decode(data, SubmitRequest, encoding, what="x", max_nesting=9)
    very_deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(WireFormatError, match="malformed"):
        decode(very_deep, SubmitRequest, JSON, what="submit request", max_nesting=64)


def test_json_writes_non_finite_floats_as_strings() -> None:
    assert msgspec.json.decode(encode_plain({"x": float("nan")}, JSON)) == {"x": "NaN"}


@pytest.mark.parametrize(
    ("reply", "ok"),
    [
        ("_INBOX.abc.1", True),
        ("_INBOX_acme.abc", True),
        ("_INBOX.", False),
        ("_INBOX_other.abc", False),
        ("acme.runs.agent", False),
        ("$KV.ACME_LEASES.run.x", False),
        ("$JS.API.STREAM.DELETE.ACME_RUNS", False),
        ("_INBOX.>", False),
        ("_INBOX.a b", False),
        ("x_INBOX.abc", False),
    ],
)
def test_replies_go_only_to_inboxes(reply: str, ok: bool) -> None:
    assert reply_allowed(reply, "_INBOX_acme") is ok


def test_pages_cover_the_result_and_the_end_is_an_empty_page() -> None:
    assert page_bounds(10, 0, 4) == (0, 4)
    assert page_bounds(10, 8, 4) == (8, 10)
    assert page_bounds(10, 10, 4) == (10, 10)
    assert page_bounds(0, 0, 4) == (0, 0)
    with pytest.raises(ValueError, match="past the end"):
        page_bounds(10, 11, 4)
