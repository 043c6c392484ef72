"""The pure failure-handling rules of stalwart.policies: classification, backoff, breakers,
budgets."""

from __future__ import annotations

import pytest

from stalwart.errors import BudgetExceeded, NonRetryableError
from stalwart.policies import CircuitBreaker, Limits, RetryPolicy, RunUsage, classify


class HTTPError(Exception):
    def __init__(self, status: int, retry_after: str | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.response = type(
            "R", (), {"headers": {"retry-after": retry_after} if retry_after else {}}
        )()


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (503, True),
        (400, False),
        (401, False),
        (404, False),
        (422, False),
    ],
)
def test_http_errors_are_classified_like_apis_mean_them(status: int, retryable: bool) -> None:
    assert classify(HTTPError(status), RetryPolicy())[0] is retryable


def test_retry_after_is_honoured_and_backoff_grows_to_its_cap() -> None:
    ok, after = classify(HTTPError(429, "7"), RetryPolicy())
    assert ok and after == 7.0
    policy = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=5.0, jitter=0.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert policy.delay(1, retry_after=7.0) == 7.0
    jittered = RetryPolicy(initial_interval=10.0, jitter=0.2)
    assert jittered.delay(1, rand=0.0) == 8.0 and jittered.delay(1, rand=1.0) == 12.0
    assert classify(NonRetryableError("no"), RetryPolicy())[0] is False
    assert classify(KeyError("x"), RetryPolicy(non_retryable=(KeyError,)))[0] is False


def test_circuit_breaker_opens_fails_fast_and_recovers_after_cooldown() -> None:
    b = CircuitBreaker(threshold=3, cooldown=10.0)
    for _ in range(3):
        assert b.before_call(now=0.0) is None
        b.record(False, now=0.0)
    assert b.state(now=1.0) == "open"
    assert b.before_call(now=1.0) == pytest.approx(9.0)  # fails fast
    assert b.state(now=10.5) == "half_open"
    assert b.before_call(now=10.5) is None  # one trial
    assert b.before_call(now=10.6) is not None  # others still fail fast
    b.record(False, now=10.7)
    assert b.state(now=11.0) == "open"  # the trial failed: open again
    assert b.before_call(now=21.0) is None
    b.record(True, now=21.0)
    assert b.state(now=21.0) == "closed"


def test_run_usage_budgets() -> None:
    limits = Limits(max_iterations=2, max_tokens=1000, max_repeated_tool_calls=3)
    usage = RunUsage()
    usage.before_model(limits)
    usage.add_model(limits, "gpt-4o-2024-08-06", 1_000_000, 0)
    assert usage.cost_usd == pytest.approx(2.5)  # dated model names find their price
    with pytest.raises(
        BudgetExceeded, match="max_tokens budget exceeded: limit 1000, reached 1e\\+06"
    ):
        usage.before_model(limits)
    usage.add_tool(limits, "search", "a")
    usage.add_tool(limits, "search", "b")
    usage.add_tool(limits, "search", "b")
    with pytest.raises(BudgetExceeded, match="max_repeated_tool_calls"):
        usage.add_tool(limits, "search", "b")
