"""A worker's flow rules: bound to its Redis store, and which of them govern a resource.

The run's side of the gate (asking the rules before an attempt, waiting, settling after it)
is ``stalwart.actors._flow``; this module knows nothing of runs, so rules stay below actors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stalwart.flow._rules import FlowRule, RuleHandle
    from stalwart.flow._store import FlowStore

__all__ = ["EV_FLOW_RESUMED", "EV_FLOW_WAITING", "RESUME_SIGNAL", "FlowGate"]

EV_FLOW_WAITING = "flow.waiting"
"""A step waits for a flow rule: ``{rule, resource, limit, until, passivate}``."""
EV_FLOW_RESUMED = "flow.resumed"
"""A step that waited goes ahead: ``{rule, waited, override}``."""
RESUME_SIGNAL = "flow.resume"
"""The signal that wakes a run waiting for a flow rule (and lets a held spend through)."""


UNGOVERNED_KINDS = frozenset({"patch"})
"""Step kinds no flow rule governs, whatever its globs say: a ``ctx.patched`` marker is a
journal entry Stalwart writes, not a call to any resource (a rule on ``"*"`` would otherwise
make a deploy's markers wait for capacity)."""


class FlowGate:
    """The flow rules of one worker, bound to its store."""

    def __init__(
        self, rules: Sequence[FlowRule], store: FlowStore, *, wait_in_place: float = 5.0
    ) -> None:
        self.rules = tuple(rules)
        self.store = store
        self.handles: tuple[RuleHandle, ...] = tuple(r.bind(store) for r in self.rules)
        self.wait_in_place = wait_in_place
        """Seconds a step waits in place, in all, before its run passivates instead."""
        self._by_resource: dict[tuple[str, str], tuple[RuleHandle, ...]] = {}
        self._shared: dict[tuple[str, str], bool] = {}

    def match(self, kind: str, name: str) -> tuple[RuleHandle, ...]:
        """The handles of the rules governing ``kind:name`` (empty: none)."""
        if kind in UNGOVERNED_KINDS:
            return ()
        key = (kind, name)
        found = self._by_resource.get(key)
        if found is None:
            resource = f"{kind}:{name}"
            found = tuple(h for h in self.handles if h.rule.matches(resource))
            if len(self._by_resource) < 10_000:  # names from hostile input must not grow it
                self._by_resource[key] = found
        return found

    def shares_breaker(self, kind: str, name: str) -> bool:
        """Whether a shared breaker rule governs ``kind:name`` (it then replaces the
        worker's own breaker for it)."""
        key = (kind, name)
        found = self._shared.get(key)
        if found is None:
            found = any(getattr(h, "replaces_local_breaker", False) for h in self.match(kind, name))
            if len(self._shared) < 10_000:
                self._shared[key] = found
        return found
