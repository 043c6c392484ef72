"""Flow-control metrics: what each flow rule admitted, held and counted, per process.

Counters as the gate reports; gauges over the last usage each rule's acquire saw in this
process (a worker reports what its own acquires saw; the CLI's ``stalwart flow`` reads Redis
for the whole picture) and over the steps waiting in place here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from stalwart._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["flow_admitted", "flow_held", "flow_spent", "flow_usage", "flow_waiting"]

_meter = metrics.get_meter("stalwart", __version__)

_admitted = _meter.create_counter(
    "stalwart.flow.admitted", unit="{attempt}", description="Attempts a flow rule admitted, by rule"
)
_held = _meter.create_counter(
    "stalwart.flow.held",
    unit="{wait}",
    description="Waits a flow rule imposed, by rule and passivated (true: the run gave up its slot)",
)
_spent = _meter.create_counter(
    "stalwart.flow.spend", unit="USD", description="Model spend counted by spend limits, by rule"
)

_usage: dict[tuple[str, str], tuple[float, float]] = {}
"""(rule, unit) -> (used, limit), as this process's last acquire saw it."""
_waiting: dict[str, int] = {}
"""Rule -> steps of this process waiting in place for it now."""


def flow_admitted(rule: str) -> None:
    """A rule admitted an attempt."""
    _admitted.add(1, {"rule": rule})


def flow_held(rule: str, passivated: bool) -> None:
    """A rule held an attempt (in place, or passivating its run)."""
    _held.add(1, {"rule": rule, "passivated": "true" if passivated else "false"})


def flow_spent(rule: str, usd: float) -> None:
    """A spend limit counted ``usd``."""
    if usd > 0:
        _spent.add(usd, {"rule": rule})


def flow_usage(rule: str, unit: str, used: float, limit: float) -> None:
    """The usage of ``rule`` in ``unit`` (requests, tokens, usd) as last seen."""
    if len(_usage) < 1000 or (rule, unit) in _usage:
        _usage[(rule, unit)] = (used, limit)


def flow_waiting(rule: str, delta: int) -> None:
    """One more (+1) or one fewer (-1) step waiting in place for ``rule``."""
    _waiting[rule] = max(_waiting.get(rule, 0) + delta, 0)


def _usage_obs(_: CallbackOptions) -> Iterable[Observation]:
    for (rule, unit), (used, _limit) in list(_usage.items()):
        yield Observation(used, {"rule": rule, "unit": unit})


def _limit_obs(_: CallbackOptions) -> Iterable[Observation]:
    for (rule, unit), (_used, limit) in list(_usage.items()):
        yield Observation(limit, {"rule": rule, "unit": unit})


def _waiting_obs(_: CallbackOptions) -> Iterable[Observation]:
    for rule, n in list(_waiting.items()):
        yield Observation(n, {"rule": rule})


_meter.create_observable_gauge(
    "stalwart.flow.usage",
    callbacks=[_usage_obs],
    description="A flow rule's usage in its window or period (requests, tokens, usd), as this "
    "process's last acquire saw it",
)
_meter.create_observable_gauge(
    "stalwart.flow.limit",
    callbacks=[_limit_obs],
    description="A flow rule's limit (requests, tokens, usd)",
)
_meter.create_observable_gauge(
    "stalwart.flow.waiting",
    callbacks=[_waiting_obs],
    unit="{step}",
    description="Steps of this process waiting in place for a flow rule",
)
