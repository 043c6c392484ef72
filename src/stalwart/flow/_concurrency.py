"""Concurrency keys: at most N runs of one key execute at once, across all workers.

A :class:`ConcurrencyLimit` is a run-level rule: it is applied when a worker places a run
(its first placement and every resume), not around steps. A run "executes" while a worker
hosts it: from the placement until it finishes, passivates (a durable wait for a signal or
a timer), is handed over by a draining worker or loses its lease. A passivated run holds no
slot; its resume takes one again, or waits for one like a new run.

A run whose key is full is parked in Redis (per key, ordered by priority then arrival) and
its request is acknowledged only once it is parked, so no worker slot is held and nothing
spins. A worker that releases a slot hands it on in the same script: the next waiting run is
given the slot (a reservation) and its request published again. Slot holders expire two
lease TTLs after their worker last renewed them, so a SIGKILLed worker's slots come free
after its leases (its runs, re-placed before that, take their own slots back). The key computation here is pure; the Redis side is :mod:`._cc_store`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart.errors import ConfigurationError
from stalwart.flow._rules import ADMIT, FlowRule

if TYPE_CHECKING:
    from stalwart.flow._rules import FlowCall, Hold, Outcome
    from stalwart.flow._store import FlowStore

__all__ = ["MAX_PRIORITY", "ConcurrencyLimit", "key_tag", "priority_of"]

MAX_PRIORITY = 1000
"""Priorities run from ``-MAX_PRIORITY`` to ``MAX_PRIORITY`` (higher goes first)."""

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.@:\-]{1,100}$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")

KeyFn = Callable[[Any], Any]


def priority_of(value: object, what: str = "priority") -> int:
    """``value`` as a priority, or :class:`ConfigurationError` saying why not."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{what} must be an integer, not {value!r}")
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise ConfigurationError(
            f"{what} must be between {-MAX_PRIORITY} and {MAX_PRIORITY}, not {value}"
        )
    return value


def key_tag(key: str) -> str:
    """The form of a key value used in Redis key names: itself when it is short and plain,
    else ``#`` and a digest (a tenant id may hold braces, which would break the hash tag)."""
    if _SAFE_KEY.match(key):
        return key
    return "#" + hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=12).hexdigest()


def _lookup(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif not isinstance(value, Mapping) and hasattr(value, part):
            value = getattr(value, part)
        else:
            raise LookupError(f"the input has no field {path!r} (no {part!r})")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencyLimit(FlowRule):
    """At most ``limit`` runs with the same key execute at once, across all workers.

    ``key`` is ``"agent"`` (one key per agent), a field path into the run's input
    (``"tenant"``, ``"customer.id"``: mapping keys or attributes), or a callable taking the
    input and returning the key (converted with ``str``). ``agents`` are glob patterns
    naming the agents the rule applies to (default all). ``total`` (0: none) also caps the
    runs of all keys of this rule together; freed total slots go round-robin to the keys with
    waiting runs, so one key's burst delays another key's run by at most one slot release
    per key that has waiting runs. ``priority`` is added to a request's own priority
    (``Client.submit(..., priority=)``): a higher priority goes first within a key, and
    between keys the key whose next run has the higher priority is served first (equal
    priorities take turns).

    A run whose key cannot be computed (the field is missing, the callable raised) is not
    held back by this rule; the worker logs ``concurrency.key_failed`` once per placement.
    """

    resources: str | tuple[str, ...] = ""
    """Not for runs: concurrency limits apply to whole runs, at placement."""
    key: str | KeyFn = "agent"
    limit: int = 1
    agents: str | tuple[str, ...] = "*"
    total: int = 0
    priority: int = 0

    def __post_init__(self) -> None:
        if self.resources:
            raise ConfigurationError(
                f"concurrency limit {self.name!r}: limits per step resource are not supported "
                "yet; a ConcurrencyLimit applies to whole runs (leave resources out)"
            )
        FlowRule(name=self.name)  # checks the name (the base checks resources too)
        for what, n, low in (("limit", self.limit, 1), ("total", self.total, 0)):
            if isinstance(n, bool) or not isinstance(n, int) or n < low:
                raise ConfigurationError(
                    f"concurrency limit {self.name!r}: {what} must be an integer >= {low}, "
                    f"not {n!r}"
                )
        if not callable(self.key) and not (
            isinstance(self.key, str) and (self.key == "agent" or _PATH.match(self.key))
        ):
            raise ConfigurationError(
                f"concurrency limit {self.name!r}: key must be 'agent', a field path such as "
                f"'tenant' or 'customer.id', or a callable on the input, not {self.key!r}"
            )
        pats = self.agent_patterns
        if not pats or not all(isinstance(p, str) and p for p in pats):
            raise ConfigurationError(
                f"concurrency limit {self.name!r}: agents must be a glob or a tuple of globs, "
                f"not {self.agents!r}"
            )
        priority_of(self.priority, f"concurrency limit {self.name!r}: priority")

    @property
    def agent_patterns(self) -> tuple[str, ...]:
        """The agent glob patterns, always as a tuple."""
        a = self.agents
        return (a,) if isinstance(a, str) else tuple(a)

    def applies_to(self, agent: str) -> bool:
        """Whether runs of ``agent`` are limited by this rule."""
        return any(fnmatch.fnmatchcase(agent, p) for p in self.agent_patterns)

    @property
    def patterns(self) -> tuple[str, ...]:
        """No step resources (see :meth:`matches`)."""
        return ()

    def matches(self, resource: str) -> bool:
        """No step resource: the limit is applied when a run is placed, not around steps."""
        return False

    def bind(self, store: FlowStore) -> _NoStep:
        """A handle the step gate never asks (see :meth:`matches`)."""
        return _NoStep(self)

    @property
    def needs_input(self) -> bool:
        """Whether the key is computed from the run's input (not just its agent)."""
        return self.key != "agent"

    def key_of(self, agent: str, input: Any) -> str:
        """The run's key under this rule. Raises (anything) when it cannot be computed."""
        if self.key == "agent":
            return agent
        raw = self.key(input) if callable(self.key) else _lookup(input, self.key)
        if raw is None:
            raise LookupError("the key is None")
        text = raw if isinstance(raw, str) else str(raw)
        if not text:
            raise LookupError("the key is empty")
        return text[:1000]

    def describe(self) -> str:
        """For people: ``"2 per tenant"``."""
        what = "agent" if self.key == "agent" else getattr(self.key, "__name__", str(self.key))
        total = f", {self.total} in all" if self.total else ""
        return f"{self.limit} per {what}{total}"


class _NoStep:
    """The step-gate handle of a run-level rule: admits everything (never asked)."""

    def __init__(self, rule: ConcurrencyLimit) -> None:
        self.rule = rule

    async def acquire(self, call: FlowCall) -> Hold | Any:
        return ADMIT

    async def release(self, call: FlowCall, outcome: Outcome) -> None:
        return None


def concurrency_rules(rules: Any, agent: str) -> tuple[ConcurrencyLimit, ...]:
    """The concurrency limits among ``rules`` (an app's flow rules) that apply to ``agent``."""
    return tuple(r for r in rules if isinstance(r, ConcurrencyLimit) and r.applies_to(agent))
