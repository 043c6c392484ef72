"""Flow control across all workers: shared rate limits and spend limits (and the gate that
further rules, such as shared breakers, plug into), and concurrency limits per key
(``ConcurrencyLimit``: at most N runs of one agent, tenant or customer at once).

Configure rules on the app: ``App("shop", flow=[RateLimit(name="openai", resources="model:*",
requests=500, tokens=200_000, per=60), SpendLimit(name="daily", limit_usd=50)])``. See
``docs/flow-control.md``.
"""

from stalwart.flow._breaker_view import (
    BreakerStatus,
    RetryBudgetStatus,
    breaker_snapshot,
    retry_budget_snapshot,
)
from stalwart.flow._breakers import SharedBreaker
from stalwart.flow._budget import RetryBudget
from stalwart.flow._cc_store import ConcurrencyKeyUsage, ConcurrencyUsage, concurrency_snapshot
from stalwart.flow._concurrency import ConcurrencyLimit
from stalwart.flow._gate import EV_FLOW_RESUMED, EV_FLOW_WAITING, RESUME_SIGNAL, FlowGate
from stalwart.flow._limits import RateLimit, SpendLimit
from stalwart.flow._rules import ADMIT, FlowCall, FlowRule, Hold, Outcome, RuleHandle, check_rules
from stalwart.flow._snapshot import (
    LimitSnapshot,
    RuleInfo,
    flow_snapshot,
    publish_rules,
    rule_info,
)
from stalwart.flow._store import FlowStore

__all__ = [
    "ADMIT",
    "EV_FLOW_RESUMED",
    "EV_FLOW_WAITING",
    "RESUME_SIGNAL",
    "BreakerStatus",
    "ConcurrencyKeyUsage",
    "ConcurrencyLimit",
    "ConcurrencyUsage",
    "FlowCall",
    "FlowGate",
    "FlowRule",
    "FlowStore",
    "Hold",
    "LimitSnapshot",
    "Outcome",
    "RateLimit",
    "RetryBudget",
    "RetryBudgetStatus",
    "RuleHandle",
    "RuleInfo",
    "SharedBreaker",
    "SpendLimit",
    "breaker_snapshot",
    "check_rules",
    "concurrency_snapshot",
    "flow_snapshot",
    "publish_rules",
    "retry_budget_snapshot",
    "rule_info",
]
