"""The per-step telemetry scope: the step key of log lines, set and restored cheaply."""

from __future__ import annotations

from typing import Any

import structlog

from stalwart.telemetry._hooks import StepScope
from stalwart.telemetry._records import StepStarted


def _merged() -> dict[str, Any]:
    return structlog.contextvars.merge_contextvars(None, "info", {})


def _scope(key: str, asked: list[str]) -> StepScope:
    def describe() -> StepStarted:
        asked.append(key)
        return StepStarted("run-1", "w-1", 1, key, "step", key)

    return StepScope(key, describe)


def test_log_lines_carry_the_step_key_inside_the_scope_only() -> None:
    asked: list[str] = []
    assert "step" not in _merged()
    with _scope("step:outer", asked):
        assert _merged()["step"] == "step:outer"
        with _scope("step:inner", asked):
            assert _merged()["step"] == "step:inner"
        assert _merged()["step"] == "step:outer"  # the outer key is back
    assert "step" not in _merged()
    assert asked == []  # tracing off: no span, so the step is never described


def test_the_key_is_structlogs_own_variable() -> None:
    # A bind by user code and the scope share one variable: the scope restores the user's.
    tokens = structlog.contextvars.bind_contextvars(step="user-value")
    try:
        with _scope("step:s", []):
            assert _merged()["step"] == "step:s"
        assert _merged()["step"] == "user-value"
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
    assert "step" not in _merged()


def test_the_key_is_restored_when_the_step_raises() -> None:
    try:
        with _scope("step:boom", []):
            raise ValueError("boom")
    except ValueError:
        pass
    assert "step" not in _merged()
