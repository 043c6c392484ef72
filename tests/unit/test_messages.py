"""Run requests and run events on the wire."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest


@pytest.mark.parametrize(
    ("type_", "data", "expected"),
    [
        # Stalwart's own event data: top-level numbers are looked at.
        ("step.completed", {"kind": "step", "duration": float("inf")}, {"duration": "Infinity"}),
        # A run result: at any depth.
        ("run.completed", {"result": {"x": [1.0, float("nan")]}}, {"result": {"x": [1.0, "NaN"]}}),
        # Agent-emitted events: at any depth.
        ("my.progress", {"a": {"b": [float("-inf")]}}, {"a": {"b": ["-Infinity"]}}),
    ],
)
def test_event_json_keeps_non_finite_floats(type_: str, data: Any, expected: Any) -> None:
    from stalwart.messages import RunEvent, encode_event

    encoded = encode_event(RunEvent(type=type_, run_id="r", at=1.0, data=data))
    decoded = msgspec.json.decode(encoded)["data"]
    assert {k: decoded[k] for k in expected} == expected
