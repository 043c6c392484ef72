"""Failure handling of a run: retry policies, step options, run limits, circuit breakers.

The public home of these types (``from stalwart.policies import RetryPolicy, NO_RETRY``);
the most used ones are re-exported from :mod:`stalwart` too. Pure decisions over plain data;
the actor does the waiting and the I/O. The errors these rules raise live in
:mod:`stalwart.errors`.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

from stalwart import _pricing
from stalwart._pricing import DEFAULT_PRICES
from stalwart.errors import BudgetExceeded, NonRetryableError, ToolOutcomeUnknown

__all__ = [
    "DEFAULT_PRICES",
    "DEFAULT_RETRY",
    "NO_RETRY",
    "Breakers",
    "CircuitBreaker",
    "Limits",
    "OnUnknown",
    "Policies",
    "RetryPolicy",
    "RunUsage",
    "StepOptions",
    "classify",
    "durable",
    "options_of",
]


# -- retry ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failing step is retried. Delays: ``initial * backoff**(n-1)``, capped, jittered."""

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    jitter: float = 0.1
    """Fraction of the delay added or removed at random, so retries of many runs spread out."""
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    non_retryable: tuple[type[BaseException], ...] = ()

    def delay(
        self, attempt: int, retry_after: float | None = None, rand: float | None = None
    ) -> float:
        """Seconds to wait after failed ``attempt`` (1-based).

        A ``retry_after`` the server sent is used as given, shorter or longer than the
        backoff: the server knows when it will take the request again.
        """
        base = min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval)
        r = random.random() if rand is None else rand
        jittered = base * (1 + self.jitter * (2 * r - 1))
        if retry_after is not None:
            return max(retry_after, 0.0)
        return max(jittered, 0.0)


NO_RETRY = RetryPolicy(max_attempts=1)

_RETRYABLE_STATUS = frozenset({408, 409, 429})


def _status_and_headers(exc: BaseException) -> tuple[int | None, Mapping[str, str]]:
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None) or getattr(response, "status", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None) or {}
    return (status if isinstance(status, int) else None), headers


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def classify(exc: BaseException, policy: RetryPolicy) -> tuple[bool, float | None]:
    """Whether ``exc`` may be retried under ``policy``, and the delay it asks for.

    HTTP-shaped errors (an ``status_code`` on the error or its ``response``) follow what
    APIs mean: 408, 409, 429 and 5xx retry and honour ``retry-after``; other 4xx do not.
    """
    if isinstance(exc, NonRetryableError | ToolOutcomeUnknown | BudgetExceeded):
        return False, None
    if policy.non_retryable and isinstance(exc, policy.non_retryable):
        return False, None
    retry_after = getattr(exc, "retry_after", None)
    status, headers = _status_and_headers(exc)
    if status is not None:
        if status in _RETRYABLE_STATUS or 500 <= status < 600:
            header = None
            if hasattr(headers, "get"):
                header = headers.get("retry-after") or headers.get("Retry-After")
            return True, _parse_retry_after(header) if header else None
        if 400 <= status < 500:
            return False, None
    if isinstance(retry_after, int | float):
        return True, float(retry_after)
    return isinstance(exc, policy.retry_on), None


# -- step options -----------------------------------------------------------------------------

OnUnknown = Literal["fail", "reconcile", "signal"]


@dataclass(frozen=True, slots=True)
class StepOptions:
    """Per-step settings, attached to a function with :func:`durable`."""

    retry: RetryPolicy | None = None
    timeout: float | None = None
    """Start-to-close timeout of one attempt, in seconds."""
    at_most_once: bool = False
    """Never run again after a crash mid-call: the outcome is unknown, see ``on_unknown``."""
    on_unknown: OnUnknown = "fail"
    reconcile: Callable[..., Any] | None = None
    """Called as ``reconcile(idempotency_key, *args, **kwargs)`` to learn what happened."""


def durable(
    *,
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    at_most_once: bool = False,
    reconcile: Callable[..., Any] | None = None,
    on_unknown: OnUnknown | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach step options to a function used with ``ctx.step``.

    ``at_most_once=True`` journals an intent before each call; if the worker dies before
    the outcome is journaled, the call is never silently repeated. What happens instead is
    ``on_unknown``: ``"reconcile"`` (the default when a ``reconcile`` hook is given) asks
    the hook; ``"signal"`` waits, durably, for a human to send the signal
    ``outcome:<step key>`` whose payload becomes the step's result; ``"fail"`` (otherwise
    the default) raises :class:`ToolOutcomeUnknown`.
    """
    opts = StepOptions(
        retry=retry,
        timeout=timeout,
        at_most_once=at_most_once,
        on_unknown=on_unknown or ("reconcile" if reconcile is not None else "fail"),
        reconcile=reconcile,
    )

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__stalwart_options__ = opts  # type: ignore[attr-defined]
        return fn

    return mark


def options_of(fn: Any) -> StepOptions | None:
    """The options :func:`durable` attached to ``fn`` (through ``functools.partial`` too)."""
    target = getattr(fn, "func", fn)
    opts = getattr(target, "__stalwart_options__", None)
    return opts if isinstance(opts, StepOptions) else None


# -- limits -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-run guards. Exceeding one ends the run with :class:`BudgetExceeded`."""

    max_iterations: int | None = None
    """Model calls per run."""
    max_tokens: int | None = None
    """Input plus output tokens per run, as the model reported them."""
    max_cost_usd: float | None = None
    max_repeated_tool_calls: int | None = 5
    """The same tool with the same arguments this many times in a row is a loop."""
    prices: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_PRICES))

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD for one call; models missing from the table cost 0 (and say so in no error)."""
        return _pricing.cost(self.prices, model, input_tokens, output_tokens)


@dataclass(slots=True)
class RunUsage:
    """What a run has used so far (rebuilt from the journal on every resume)."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    last_tool: str = ""
    repeats: int = 0

    def before_model(self, limits: Limits) -> None:
        """Check the limits that a further model call would break."""
        if limits.max_iterations is not None and self.model_calls >= limits.max_iterations:
            raise BudgetExceeded("max_iterations", limits.max_iterations, self.model_calls + 1)
        tokens = self.input_tokens + self.output_tokens
        if limits.max_tokens is not None and tokens >= limits.max_tokens:
            raise BudgetExceeded("max_tokens", limits.max_tokens, tokens)
        if limits.max_cost_usd is not None and self.cost_usd >= limits.max_cost_usd:
            raise BudgetExceeded("max_cost_usd", limits.max_cost_usd, round(self.cost_usd, 6))

    def add_model(self, limits: Limits, model: str, input_tokens: int, output_tokens: int) -> None:
        """Count one model call's usage."""
        self.model_calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += limits.cost(model, input_tokens, output_tokens)

    def add_tool(self, limits: Limits, name: str, fp: str) -> None:
        """Count a tool call; raise when it repeats too often in a row."""
        sig = f"{name}:{fp}"
        self.repeats = self.repeats + 1 if sig == self.last_tool else 1
        self.last_tool = sig
        n = limits.max_repeated_tool_calls
        if n is not None and self.repeats >= n:
            raise BudgetExceeded(
                "max_repeated_tool_calls", n, self.repeats, f"tool {name!r} with the same arguments"
            )


# -- circuit breaker --------------------------------------------------------------------------


@dataclass(slots=True)
class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open after ``cooldown``."""

    threshold: int = 5
    cooldown: float = 30.0
    failures: int = 0
    opened_at: float | None = None
    trial_running: bool = False

    def state(self, now: float | None = None) -> str:
        """``closed``, ``open`` or ``half_open``."""
        if self.opened_at is None:
            return "closed"
        now = time.monotonic() if now is None else now
        return "half_open" if now - self.opened_at >= self.cooldown else "open"

    def before_call(self, now: float | None = None) -> float | None:
        """None to go ahead, else seconds until a call may be tried again."""
        now = time.monotonic() if now is None else now
        st = self.state(now)
        if st == "closed":
            return None
        if st == "half_open" and not self.trial_running:
            self.trial_running = True  # one trial call; the others keep failing fast
            return None
        assert self.opened_at is not None
        return max(self.cooldown - (now - self.opened_at), 0.1)

    def abandon(self) -> None:
        """A call ended without a verdict on the endpoint (interrupted, or a business error)."""
        self.trial_running = False

    def record(self, ok: bool, now: float | None = None) -> None:
        """Count a call's outcome."""
        self.trial_running = False
        if ok:
            self.failures = 0
            self.opened_at = None
            return
        self.failures += 1
        if self.failures >= self.threshold or self.opened_at is not None:
            self.opened_at = time.monotonic() if now is None else now


class Breakers:
    """The circuit breakers of one worker, shared by all its runs, by ``kind:name``."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._by_name: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        """The breaker for ``name`` (created closed)."""
        b = self._by_name.get(name)
        if b is None:
            b = self._by_name[name] = CircuitBreaker(self.threshold, self.cooldown)
        return b

    def states(self) -> dict[str, str]:
        """Every breaker that is not closed, for the worker heartbeat."""
        return {n: b.state() for n, b in self._by_name.items() if b.state() != "closed"}


DEFAULT_RETRY: Mapping[str, RetryPolicy] = {
    "model": RetryPolicy(max_attempts=5, initial_interval=1.0, max_interval=30.0),
    # A tool's error goes back to the framework, which does what it does without Stalwart
    # (shows it to the model, or raises): retrying a tool is the user's choice, per tool
    # (``retry_by_name``, ``@durable(retry=...)``) or for every tool (``retry={"tool": ...}``).
    "tool": RetryPolicy(max_attempts=1, initial_interval=1.0),
    "step": RetryPolicy(max_attempts=3, initial_interval=1.0),
}


@dataclass(frozen=True, slots=True)
class Policies:
    """An agent's failure handling: retries by step kind and by name, timeouts, limits."""

    retry: Mapping[str, RetryPolicy] = field(default_factory=lambda: dict(DEFAULT_RETRY))
    """Policy per step kind (``model``, ``tool``, ``step``, or any kind adapters use); kinds
    left out keep their default from ``DEFAULT_RETRY``."""
    retry_by_name: Mapping[str, RetryPolicy] = field(default_factory=dict)
    """Overrides by step/tool name (e.g. ``{"charge_card": NO_RETRY}``)."""
    step_timeout: Mapping[str, float] = field(default_factory=dict)
    """Default start-to-close timeout per step kind, in seconds."""
    run_timeout: float | None = None
    """Deadline of a whole run from its submission, in seconds; holds across resumes."""
    limits: Limits = field(default_factory=Limits)
    at_most_once: frozenset[str] = frozenset()
    """Step/tool names that are at-most-once (besides those marked with :func:`durable`)."""

    def retry_for(
        self, kind: str, name: str, opts: StepOptions | None, *, at_most_once: bool = False
    ) -> RetryPolicy:
        """The policy that applies to one step.

        At-most-once steps are not retried unless a policy is given for them explicitly: an
        exception does not prove the effect did not happen.
        """
        if opts is not None and opts.retry is not None:
            return opts.retry
        if name in self.retry_by_name:
            return self.retry_by_name[name]
        if at_most_once:
            return NO_RETRY
        return self.retry.get(kind) or DEFAULT_RETRY.get(kind) or RetryPolicy()

    def timeout_for(self, kind: str, opts: StepOptions | None) -> float | None:
        """The start-to-close timeout of one attempt, if any."""
        if opts is not None and opts.timeout is not None:
            return opts.timeout
        return self.step_timeout.get(kind)
