"""Flow rules: what a rule is, which steps it governs, and the contract of its gate.

A step's *resource* is ``<kind>:<name>`` (``model:gpt-4o``, ``tool:search``), the name
circuit breakers key a step by. A rule governs the resources its glob patterns match
(``model:*``, ``model:gpt-4o*``, ``tool:search``); ``fnmatch`` case-sensitive rules.

Every rule goes through one gate on the step path (:class:`~stalwart.flow.FlowGate`):
before each live attempt the gate asks every matching rule's :class:`RuleHandle` to
``acquire``; each answers :data:`ADMIT` or a :class:`Hold` (wait until, or for a signal);
after the attempt it tells each admitted handle the :class:`Outcome`. Rules of other kinds
(breakers, concurrency keys) plug in by subclassing :class:`FlowRule` and returning their own
handle from :meth:`FlowRule.bind`.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from stalwart.errors import ConfigurationError

if TYPE_CHECKING:
    from stalwart.flow._store import FlowStore
    from stalwart.policies import RetryPolicy

__all__ = [
    "ADMIT",
    "FlowCall",
    "FlowRule",
    "Hold",
    "Outcome",
    "RuleHandle",
    "check_rules",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")
"""A rule name is part of Redis keys and CLI arguments: short, no braces or spaces."""


@dataclass(slots=True)
class FlowCall:
    """One live attempt of a step, as the flow rules see it.

    ``reservations`` is where a handle keeps what it took for this attempt (by rule name),
    to give it back or correct it in ``release``.
    """

    run_id: str
    agent: str
    resource: str
    spec: Any
    """The step's ``StepSpec`` (key, kind, name, fingerprint, usage extractor)."""
    attempt: int
    input: Any = None
    """The run's decoded input (for rules keyed by tenant or customer)."""
    reservations: dict[str, Any] = field(default_factory=dict)
    policy: RetryPolicy | None = None
    """The step's retry policy (shared breakers ask it whether an open circuit may wait)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A rule's answer when the attempt may not start yet.

    ``until`` is the wall-clock time at which trying again may succeed (0: unknown, wait
    for a signal); ``signal`` names a signal that also ends the wait (``flow.resume``), and
    ``overridable`` says that signal lets this one attempt through although the rule would
    still refuse (an operator's decision).
    """

    rule: str
    resource: str
    limit: str
    """What is exhausted, for people: ``"60 requests / 60s"``, ``"$5.00 per day"``."""
    until: float
    signal: str = ""
    overridable: bool = False
    spread: float = 0.0
    """Seconds of capacity one waiting run's turn takes (a rate limit's ``per / requests``):
    a run that passivates behind ``k`` waiting runs wakes ``k`` turns after ``until``."""


class _Admit:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ADMIT"


ADMIT: Any = _Admit()
"""A rule's answer when the attempt may go ahead."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an admitted attempt ended: ``ok``, or failed with ``error``, or ``abandoned``
    (interrupted, or given back because another rule held the attempt)."""

    ok: bool
    error: BaseException | None = None
    usage: Any = None
    """The model's reported ``Usage`` (model, input and output tokens), if any."""
    cost_usd: float = 0.0
    """What the call cost by the run's price table (``Limits.cost``), model steps only."""
    abandoned: bool = False


class RuleHandle(Protocol):
    """A rule bound to a worker's store: what the gate calls around each attempt."""

    @property
    def rule(self) -> FlowRule:
        """The rule this handle carries out."""
        ...

    async def acquire(self, call: FlowCall) -> Hold | Any:
        """:data:`ADMIT`, or a :class:`Hold` saying how long to wait."""
        ...

    async def release(self, call: FlowCall, outcome: Outcome) -> None:
        """The admitted attempt ended (also called for an attempt held by a later rule)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowRule:
    """Base of every flow rule: a ``name`` and the resources it governs (glob patterns)."""

    name: str
    resources: str | tuple[str, ...] = "model:*"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigurationError(
                f"flow rule name {self.name!r} must be 1-100 characters of letters, digits, "
                "'_', '.', ':' or '-' (it is part of Redis keys), starting with a letter or digit"
            )
        pats = self.patterns
        if not pats or not all(isinstance(p, str) and p for p in pats):
            raise ConfigurationError(
                f"flow rule {self.name!r}: resources must be a non-empty glob "
                f"('model:*', 'tool:search') or a tuple of them, not {self.resources!r}"
            )

    @property
    def patterns(self) -> tuple[str, ...]:
        """The glob patterns, always as a tuple."""
        r = self.resources
        return (r,) if isinstance(r, str) else tuple(r)

    def matches(self, resource: str) -> bool:
        """Whether this rule governs ``resource`` (``<kind>:<name>``)."""
        return any(fnmatch.fnmatchcase(resource, p) for p in self.patterns)

    def bind(self, store: FlowStore) -> RuleHandle:
        """This rule's handle on ``store`` (one per worker)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement bind()")


def check_rules(rules: Any) -> tuple[FlowRule, ...]:
    """``rules`` as a tuple, after checking each is a rule and names are unique."""
    if isinstance(rules, FlowRule):
        rules = (rules,)
    try:
        out = tuple(rules)
    except TypeError:
        raise ConfigurationError(
            f"flow must be a sequence of flow rules (RateLimit, SpendLimit ...), not {rules!r}"
        ) from None
    seen: set[str] = set()
    for r in out:
        if not isinstance(r, FlowRule):
            raise ConfigurationError(
                f"flow must hold flow rules (RateLimit, SpendLimit ...), not {type(r).__name__}"
            )
        if r.name in seen:
            raise ConfigurationError(f"flow rule name {r.name!r} is used twice")
        seen.add(r.name)
    return out
