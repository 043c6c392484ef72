"""The console's Flow page: every flow rule's usage and waiting runs, and its two actions.

Reads are the snapshots ``stalwart flow`` prints (:mod:`stalwart.flow`), read from Redis
alone, so the console needs no app code. The actions are the CLI's ``stalwart flow
set-limit`` and ``stalwart flow resume``, over the same primitives (the operator's limit
in :class:`~stalwart.flow.FlowStore`, the ``flow.resume`` signal, a wake request for
passivated runs); ``_app`` puts them behind the same auth, read-only and CSRF checks as
the run actions, and logs them.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import NoPermissionError

from stalwart._ids import check_run_id
from stalwart.errors import ConfigurationError, InvalidRequestError
from stalwart.flow import (
    RESUME_SIGNAL,
    BreakerStatus,
    ConcurrencyUsage,
    FlowStore,
    LimitSnapshot,
    RetryBudgetStatus,
    breaker_snapshot,
    concurrency_snapshot,
    flow_snapshot,
    retry_budget_snapshot,
)
from stalwart.flow._rules import _NAME as _RULE

if TYPE_CHECKING:
    from stalwart.client import Client

__all__ = ["FlowActions", "FlowBody", "FlowView", "check_rule_name", "decode_flow_body"]

MAX_RUNS = 1000
"""Run ids one resume request may name."""


class FlowView(msgspec.Struct, kw_only=True):
    """What ``GET /api/flow`` answers: the rules, then breakers, budgets and slots."""

    at: float
    """When it was read (this host's clock)."""
    limits: list[LimitSnapshot]
    breakers: list[BreakerStatus]
    budgets: list[RetryBudgetStatus]
    concurrency: list[ConcurrencyUsage]


class FlowBody(msgspec.Struct, forbid_unknown_fields=True):
    """What a flow action accepts: ``set-limit`` reads ``usd`` or ``clear``, ``resume``
    ``runs`` (empty: every run waiting on the rule)."""

    usd: float | None = None
    clear: bool = False
    runs: list[str] = msgspec.field(default_factory=list)


def check_rule_name(name: str) -> str:
    """``name`` if it can be a flow rule's name, else :class:`InvalidRequestError`."""
    if not _RULE.match(name):
        raise InvalidRequestError(f"invalid flow rule name {name[:40]!r}")
    return name


def decode_flow_body(raw: bytes) -> FlowBody:
    """A flow action's JSON body ({} when empty), or :class:`InvalidRequestError`."""
    if not raw.strip():
        return FlowBody()
    try:
        body = msgspec.json.decode(raw, type=FlowBody)
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"bad request body: {exc}") from None
    if len(body.runs) > MAX_RUNS:
        raise InvalidRequestError(f"resume names at most {MAX_RUNS} runs at once")
    for r in body.runs:
        check_run_id(r)
    return body


async def flow_view(client: Client) -> FlowView:
    """Every published rule now, with shared breakers, retry budgets and concurrency keys."""
    return FlowView(
        at=time.time(),
        limits=await flow_snapshot(client),
        breakers=await breaker_snapshot(client),
        budgets=await retry_budget_snapshot(client),
        concurrency=await concurrency_snapshot(client),
    )


class FlowActions:
    """The flow routes that change something: ``name(rule, body)`` -> a small answer."""

    NAMES = ("set-limit", "resume")

    def __init__(self, client: Client) -> None:
        self.client = client

    async def _rule(self, name: str) -> LimitSnapshot:
        snaps = {s.name: s for s in await flow_snapshot(self.client)}
        rule = snaps.get(name)
        if rule is None:
            known = ", ".join(sorted(snaps)) or "none"
            raise InvalidRequestError(f"no flow rule {name!r} is published (known: {known})")
        return rule

    async def set_limit(self, name: str, body: FlowBody) -> dict[str, Any]:
        """A spend limit's USD limit for all workers (or back to the configured one with
        ``clear``); the runs waiting on it are woken to look again."""
        rule = await self._rule(name)
        if rule.kind != "SpendLimit":
            raise InvalidRequestError(f"flow rule {name!r} is a {rule.kind}, not a SpendLimit")
        if body.clear == (body.usd is not None):
            raise InvalidRequestError("give either a limit in USD ('usd') or 'clear'")
        if body.usd is not None and not (0 <= body.usd < math.inf):
            raise InvalidRequestError(f"the limit must be a non-negative number, not {body.usd}")
        store = FlowStore(self.client.store.redis, self.client.store.ns)
        try:
            await store.set_limit(name, None if body.clear else body.usd)
        except NoPermissionError:
            raise ConfigurationError(
                "the console's Redis user may not set a spend limit: an operator's limit "
                "needs the admin role's rights (docs/security.md, least-privilege roles)"
            ) from None
        woken, failed = 0, {}
        for run_id in rule.waiting:
            # A wake, not flow.resume: under the new limit the held call goes ahead or not.
            try:
                record = await self.client.store.get_run(run_id)
                if record is None or record.status != "waiting":
                    continue  # running: it asks again when its in-place wait ends
                await self.client.broker.request_resume(
                    run_id, record.agent, record.epoch, "wake", lane=record.lane
                )
                woken += 1
            except Exception as exc:  # the limit is set: report the run, wake the others
                failed[run_id] = f"{type(exc).__name__}: {str(exc)[:200]}"
        out: dict[str, Any] = {"limit": None if body.clear else body.usd, "woken": woken}
        if failed:
            out["not_woken"] = failed
        return out

    async def resume(self, name: str, body: FlowBody) -> dict[str, Any]:
        """Send ``flow.resume`` to the runs waiting on the rule (or to ``runs``): a held
        call goes ahead once. A run that ended meanwhile is reported, the others resumed."""
        rule = await self._rule(name)
        if rule.kind == "ConcurrencyLimit":
            # Its runs are not placed yet: a stored flow.resume would let a later flow hold
            # of theirs through once. A slot comes free when a running run ends.
            raise InvalidRequestError(
                f"flow rule {name!r} is a ConcurrencyLimit: its runs wait for a slot, which "
                "comes free when one of its running runs ends (or cancel one); resume is for "
                "runs held by a rate limit, spend limit or breaker"
            )
        runs = [r for r in rule.waiting if not body.runs or r in body.runs]
        runs += [r for r in body.runs if r not in rule.waiting]
        resumed: list[str] = []
        refused: dict[str, str] = {}
        for run_id in runs:
            try:
                await self.client.handle(run_id).signal(RESUME_SIGNAL)
                resumed.append(run_id)
            except Exception as exc:
                refused[run_id] = f"{type(exc).__name__}: {str(exc)[:200]}"
        return {"resumed": resumed, "refused": refused}
